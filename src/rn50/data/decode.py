"""The fast CPU data path (`data.decode: cpu`) and the crop geometry every data mode shares.

Where the time goes on an ImageNet-sized JPEG (500x375, quality 90), one core: decoding is
about 0.65 ms, torchvision's PIL crop-and-resize about 0.7 ms and ToTensor + Normalize about
0.4 ms. This path:

- reads the image size from the JPEG header (no decode) and draws the RandomResizedCrop box
  from it, so the decoder can be told how much of the image is needed;
- decodes with libjpeg-turbo through simplejpeg into a numpy array (no 4-byte RGBX image as
  PIL keeps, no extra copy), at 1/2, 1/4 or 1/8 scale (DCT scaling: the decoder skips most
  of the work) when the crop would still be at least the output size, which is the case for
  large photos and small crops;
- crops and resizes with torch's uint8 antialiased bilinear kernel (SIMD; the same filter as
  PIL's, within 1 level of 255) and flips, all on uint8: float conversion and normalization
  happen on the training device (rn50.data.batch). After a DCT-scaled decode the crop box
  is rounded to the scaled image's pixels (`scaled_box`).

CMYK and YCCK JPEGs, PNG and every other format go through PIL (rn50.data.image's
conversions), with PIL's own DCT scaling for JPEGs. Without simplejpeg everything goes through
PIL. Either way the EXIF orientation is read from the header (`file_orientation`: a scan of the
JPEG markers, Pillow only when an APP1 segment is there), the crop box is drawn on the upright
image's size, and the decoded pixels are turned upright before they are cropped: the pixels of
rn50.data.image.load_rgb, which predict and the pil mode read.

The crop box and the flip are drawn from torch's default generator with the same calls, in the
same order, as torchvision's RandomResizedCrop and RandomHorizontalFlip, so for one seed every
data mode (pil, cpu, gpu) crops the same box of the same image.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from rn50.data.augment import AutoAugmentStep
from rn50.data.image import (
    check_large,
    file_orientation,
    load_rgb,
    open_pil,
    orient_array,
    oriented_size,
    to_rgb,
)
from rn50.data.transforms import EvalTransform

try:  # wheels for every common platform; where it does not install, PIL does the work
    import simplejpeg as _simplejpeg
except ImportError:
    _simplejpeg = None

RATIO = (3.0 / 4.0, 4.0 / 3.0)
"""RandomResizedCrop's aspect-ratio range (width / height), torchvision's default."""

MAX_REDUCTION = 8  # libjpeg's DCT scaling goes down to 1/8
# Colour spaces libjpeg-turbo converts to RGB itself; CMYK and YCCK need PIL's conversion.
_DIRECT_COLORSPACES = frozenset({"YCbCr", "Gray", "RGB"})
_SOI = b"\xff\xd8"  # every JPEG file starts with this marker


Box = tuple[int, int, int, int]  # (top, left, height, width) in source pixels


def sample_crop(
    height: int, width: int, scale: tuple[float, float] = (0.08, 1.0), ratio=RATIO
) -> Box:
    """A RandomResizedCrop box (top, left, h, w) for a `height` x `width` image.

    The Inception crop: up to 10 tries of an area fraction uniform in `scale` and an aspect
    ratio log-uniform in `ratio`, placed uniformly; when no try fits, the largest centred
    crop whose aspect ratio is within `ratio`. The draws come from torch's default generator
    in torchvision's order (area, aspect, top, left), which is what keeps every data mode's
    crops equal for one seed.
    """
    area = height * width
    log_ratio = _log_ratio(tuple(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,)).item())
            left = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return top, left, h, w
    # Fallback: the whole image, trimmed to the nearest allowed aspect ratio, centred.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@functools.lru_cache(maxsize=8)
def _log_ratio(ratio: tuple[float, float]) -> torch.Tensor:
    # float32, as torchvision computes it: the bounds of the draw must match to the last bit.
    return torch.log(torch.tensor(ratio))


def sample_flip(p: float = 0.5) -> bool:
    """RandomHorizontalFlip's draw (one uniform from the default generator)."""
    return bool(torch.rand(1).item() < p)


def reduction(box_h: int, box_w: int, out_h: int, out_w: int) -> int:
    """The largest DCT scale-down (1, 2, 4 or 8) after which the box still covers the output
    size: the resize that follows then still shrinks (or keeps) the image, so no detail the
    output could show is lost."""
    s = 1
    while s < MAX_REDUCTION and box_h >= 2 * s * out_h and box_w >= 2 * s * out_w:
        s *= 2
    return s


def read_bytes(path: str) -> np.ndarray:
    """The file's bytes as a writable uint8 array (wraps into a tensor without a copy)."""
    return np.fromfile(path, dtype=np.uint8)


def probe(data) -> tuple[int, int, bool]:
    """(height, width, direct) as stored (before any EXIF orientation) from the header alone;
    `direct` means simplejpeg decodes it.

    Raises (like a decoder would) when the data is no image at all, and, as PIL does, for a
    decompression bomb (over twice Image.MAX_IMAGE_PIXELS), which would otherwise fill a
    worker's memory; warns (rn50.data.image.LargeImageWarning) above the limit itself.
    """
    if _simplejpeg is not None and bytes(data[:2]) == _SOI:
        try:
            h, w, colorspace, _ = _simplejpeg.decode_jpeg_header(data)
        except ValueError:
            pass  # a JPEG simplejpeg cannot parse: PIL may still manage (or name the error)
        else:
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and h * w > 2 * limit:
                raise Image.DecompressionBombError(f"{w}x{h} pixels is over twice {limit}")
            if colorspace in _DIRECT_COLORSPACES:
                check_large(w, h)
                return h, w, True
    with open_pil(data) as img:  # PIL checks the pixel limit itself
        w, h = img.size
    return h, w, False


def decode(data, height: int, width: int, direct: bool, reduce: int = 1) -> np.ndarray:
    """RGB pixels (H', W', 3) uint8 of the image as stored (no EXIF orientation: callers
    apply it with orient_array), DCT-scaled by about 1/`reduce` for JPEGs.

    The returned size may differ from (height, width) / reduce (rounding up, or a format
    PIL cannot scale); callers scale their boxes by the actual size.
    """
    if direct:
        if reduce == 1:
            return _simplejpeg.decode_jpeg(data, colorspace="RGB")
        # simplejpeg picks the smallest libjpeg scale whose output is at least this large:
        # exactly 1/reduce, since libjpeg rounds scaled sizes up.
        return _simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            min_height=-(-height // reduce),
            min_width=-(-width // reduce),
        )
    with open_pil(data) as img:
        if reduce > 1:
            # JPEG only (a no-op for other formats). PIL picks the scale s with
            # size // request >= s, so the request is rounded down, not up.
            img.draft(None, (max(1, width // reduce), max(1, height // reduce)))
        return np.array(to_rgb(img))  # a copy: writable, so torch can wrap it


def resized_crop(pixels: np.ndarray, box: Box, size: int, full: tuple[int, int]) -> torch.Tensor:
    """Crop `box` (in the coordinates of a `full` = (H, W) image) out of `pixels`, which may be
    a DCT-scaled decode of it, and resize to `size` x `size`: uint8 (3, size, size)."""
    if pixels.shape[:2] != tuple(full):
        box = scaled_box(box, pixels.shape[0] / full[0], pixels.shape[1] / full[1])
    top, left, h, w = box
    crop = torch.from_numpy(pixels)[top : top + h, left : left + w].permute(2, 0, 1).unsqueeze(0)
    # A dense NHWC copy of the crop first: torch's uint8 antialias kernel is vectorized for
    # channels-last input and measurably faster from it than from a strided view.
    crop = crop.contiguous(memory_format=torch.channels_last)
    out = F.interpolate(
        crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return out[0]


def scaled_box(box: Box, fy: float, fx: float) -> Box:
    """`box` in an image scaled by (fy, fx), its corners rounded to whole pixels.

    The rounding moves each edge by at most half a pixel of the scaled image, which is at
    most half an output pixel (the scaled box still covers the output size; see
    `reduction`). Resampling the exact fractional box instead (PIL can) costs more than the
    DCT scaling saves: on 500x375 files, 1/2-scale decoding saves 0.12-0.15 ms an image, and
    PIL's resize from a numpy array then takes 0.25-0.3 ms against torch's 0.1 ms
    (benchmarks/crop_stages.py).
    """
    top, left, h, w = box
    t, lt = round(top * fy), round(left * fx)
    b, r = round((top + h) * fy), round((left + w) * fx)
    return t, lt, max(1, b - t), max(1, r - lt)


class TrainDraw(NamedTuple):
    """A training sample's geometry, drawn from the file's header: its stored size and
    whether simplejpeg decodes it (`direct`), its EXIF orientation, its upright size, the
    RandomResizedCrop box on the upright image and the flip."""

    height: int
    width: int
    direct: bool
    turn: int
    upright: tuple[int, int]
    box: Box
    flip: bool


def draw_train(data, scale: tuple[float, float], hflip: bool) -> TrainDraw:
    """The crop box and flip of one training sample, drawn in the order every decode mode
    draws them (box, then flip) on the upright image, as TrainTransform draws on load_rgb's."""
    height, width, direct = probe(data)
    turn = file_orientation(data)
    upright = oriented_size(height, width, turn)
    box = sample_crop(*upright, scale)
    return TrainDraw(height, width, direct, turn, upright, box, hflip and sample_flip())


def crop_drawn(data, d: TrainDraw, resolution: int) -> torch.Tensor:
    """The pixels `d` drew from `data`: decoded at the smallest DCT scale that covers the box,
    turned upright, cropped, resized to `resolution` and flipped; uint8 (3, R, R), left
    channels-last in memory (the collate stacks that with a plain copy)."""
    reduce = reduction(d.box[2], d.box[3], resolution, resolution)
    pixels = orient_array(decode(data, d.height, d.width, d.direct, reduce), d.turn)
    out = resized_crop(pixels, d.box, resolution, d.upright)
    return out.flip(-1) if d.flip else out


class TrainDraws:
    """A training sample's settings in the workers of the cpu and gpu modes: the output
    `resolution`, RandomResizedCrop's area range (min_scale, 1), the flip switch and the
    data.auto_augment step (`augment`, None for none; a wrong name fails here, before any
    worker starts)."""

    def __init__(
        self,
        resolution: int,
        min_scale: float = 0.08,
        hflip: bool = True,
        auto_augment: str = "none",
    ):
        self.resolution, self.scale, self.hflip = resolution, (min_scale, 1.0), hflip
        self.augment = AutoAugmentStep(auto_augment) if auto_augment != "none" else None

    def draw(self, data) -> TrainDraw:
        """The crop box and flip of the sample in `data` (file bytes), drawn as every decode
        mode draws them (`draw_train`)."""
        return draw_train(data, self.scale, self.hflip)


class FastTrainTransform(TrainDraws):
    """File bytes -> RandomResizedCrop(resolution) + optional flip + the data.auto_augment
    policy, uint8 (3, R, R).

    The same augmentation as TrainTransform (same box, flip and policy draws for the same
    seed), decoded at the smallest size that still covers the crop.
    """

    def __call__(self, data) -> torch.Tensor:
        out = crop_drawn(data, self.draw(data), self.resolution)
        return out if self.augment is None else self.augment(out)


class FastEvalTransform:
    """File bytes -> EvalTransform's pixels exactly (short side to resolution / crop_ratio,
    centre crop), with the faster decoder.

    No DCT scaling here: validation is a small share of an epoch's images, and exact pixels
    keep `rn50 eval` equal to what `rn50 predict` sees (it decodes with PIL).
    """

    def __init__(self, resolution: int, crop_ratio: float = 0.875):
        self.ops = EvalTransform(resolution, crop_ratio)

    def __call__(self, data) -> torch.Tensor:
        height, width, direct = probe(data)
        if direct:  # libjpeg-turbo in simplejpeg and in PIL give identical pixels
            pixels = orient_array(decode(data, height, width, True), file_orientation(data))
            return self.ops(Image.fromarray(pixels))
        return self.ops(load_rgb(data))
