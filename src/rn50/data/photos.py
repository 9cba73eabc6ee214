"""ImageNet-like JPEG files made from real photos that installed packages ship.

Decoding speed depends on what is in the picture (JPEG spends its bits on detail), so
benchmarks and tests need photographs, not noise or flat colours. scikit-image bundles a few
(an astronaut, coffee, a cat, a rocket, the Hubble deep field, a stained tissue, a retina)
and matplotlib one (Grace Hopper). Each file is a random crop of one of them, resized down
(never up, where the photo is large enough: detail kept) to about ImageNet's typical size,
500x375 or 375x500, randomly mirrored, and saved as baseline JPEG at quality 90 with 4:2:0
chroma subsampling, as most ImageNet files are. About 2 bits per pixel, 45 KB a file.
`imagenet_like_images` gives the same pictures in memory, for a caller that encodes them
itself (e.g. progressive as well as baseline).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from rn50.data.image import load_rgb

_SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
)


def source_photos() -> list[np.ndarray]:
    """The bundled RGB photos (H, W, 3) uint8: scikit-image's when installed, and matplotlib's."""
    photos = []
    try:
        import skimage.data
    except ImportError:
        pass
    else:
        for name in _SKIMAGE_PHOTOS:
            try:
                photos.append(np.asarray(getattr(skimage.data, name)()))
            except Exception:  # a scikit-image build without that file
                continue
    from matplotlib import cbook

    photos.append(np.asarray(load_rgb(cbook.get_sample_data("grace_hopper.jpg"))))
    return photos


def imagenet_like_images(
    count: int, seed: int = 0, size: tuple[int, int] = (500, 375)
) -> Iterator[Image.Image]:
    """`count` ImageNet-like RGB pictures, in memory: image i is a random crop of bundled photo
    i mod the number of photos, resized to `size` (w, h) three times in four, else to its
    portrait (h, w), and mirrored one time in two; the same pictures for the same `seed`."""
    rng = np.random.default_rng(seed)
    photos = source_photos()
    for i in range(count):
        photo = photos[i % len(photos)]
        out_w, out_h = size if rng.random() < 0.75 else size[::-1]
        height, width = photo.shape[:2]
        # The largest crop of the output's aspect ratio, then a random share of it, but not
        # below the output size when the photo allows.
        full_h = min(height, width * out_h / out_w)
        low = min(1.0, out_h / full_h)
        crop_h = int(full_h * rng.uniform(low, 1.0))
        crop_w = int(crop_h * out_w / out_h)
        top = int(rng.integers(0, height - crop_h + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        img = Image.fromarray(photo[top : top + crop_h, left : left + crop_w])
        img = img.resize((out_w, out_h), Image.LANCZOS)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        yield img


def write_imagenet_like(
    folder: str | os.PathLike[str],
    count: int,
    classes: int = 4,
    seed: int = 0,
    size: tuple[int, int] = (500, 375),
    quality: int = 90,
) -> Path:
    """Write `count` JPEGs (imagenet_like_images) as an ImageFolder tree
    `folder`/train/class_K/NNNNN.JPEG (classes round-robin); returns `folder`."""
    root = Path(folder)
    for k in range(classes):
        (root / "train" / f"class_{k}").mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(imagenet_like_images(count, seed, size)):
        img.save(root / "train" / f"class_{i % classes}" / f"{i:05d}.JPEG", quality=quality)
    return root
