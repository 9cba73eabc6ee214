"""The embedded demo dataset: scikit-learn's handwritten digits as a tiny Kaggle ILSVRC tree.

It lets a user run every command (train, evaluate, export, serve) on a laptop CPU in minutes,
with no download, on files laid out exactly like the real ImageNet download, so the same code
path that reads ImageNet reads the demo.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from rn50.data.image import to_rgb
from rn50.data.layout import (
    MAPPING_FILE,
    VAL_SOLUTION_FILE,
    DatasetIndex,
    find_dataset,
)
from rn50.errors import DataError

DEMO_WNIDS: tuple[str, ...] = tuple(f"n{digit:08d}" for digit in range(10))
"""Made-up synset-like ids, one per digit; they sort in digit order, so digit v is label v."""

_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Written last inside the temporary folder: its presence marks a complete demo dataset and
# records how it was made. Hidden, so the dataset index never sees it.
MARKER_FILE = ".rn50-demo.json"

_CLS_LOC = Path("ILSVRC", "Data", "CLS-LOC")
_DIGIT_MAX = 16  # load_digits pixel values are ints 0..16 (counts of set pixels in 4x4 blocks)


def write_demo_dataset(
    out_dir: str | os.PathLike[str], size: int = 64, val_every: int = 5, quality: int = 95
) -> DatasetIndex:
    """Write the 1797 sklearn digits as `size` x `size` RGB JPEGs in the Kaggle ILSVRC layout.

    Digit v is class v (wnid ``DEMO_WNIDS[v]``). Image i, in ``load_digits()`` order, goes to
    val when ``i % val_every == 0``, else to train as ``<wnid>_<i>.JPEG`` (so a train file
    names its sklearn index); val files are ``ILSVRC2012_val_<k>.JPEG`` numbered from 1.
    Digits are drawn dark on a light background, like ink on paper: 0 -> 255, 16 -> 0.

    Output is deterministic (byte-identical on re-runs with the same Pillow). The tree is
    written into a hidden temporary sibling folder and renamed into place at the end, so an
    interrupted run never leaves a half-written dataset that looks complete. If `out_dir`
    already holds a complete demo dataset written with the same arguments, it is returned
    untouched; any other non-empty `out_dir` raises DataError rather than mixing files.
    """
    _check_arguments(size, val_every, quality)
    out = Path(out_dir).expanduser().resolve()
    params = {"size": size, "val_every": val_every, "quality": quality}
    if _existing_demo(out, params):
        return find_dataset(out)
    images, targets = _load_digits()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _make_temp_sibling(out)
    try:
        counts = _write_tree(tmp, images, targets, size, val_every, quality)
        _write_marker(tmp, {**params, **counts})
        _move_into_place(tmp, out, params)
    finally:
        # Only left behind when writing or the rename failed; never a complete-looking dataset.
        shutil.rmtree(tmp, ignore_errors=True)
    return find_dataset(out)


def _check_arguments(size: int, val_every: int, quality: int) -> None:
    """Reject arguments that would give an unreadable or train-less dataset."""
    if size < 8:
        raise DataError(f"demo: size must be at least 8 pixels (the digits are 8x8), got {size}")
    if val_every < 2:
        raise DataError(f"demo: val_every must be at least 2 (1 leaves no train images), "
                        f"got {val_every}")
    if not 1 <= quality <= 100:
        raise DataError(f"demo: JPEG quality must be between 1 and 100, got {quality}")


def _existing_demo(out: Path, params: dict[str, int]) -> bool:
    """True when `out` is already this demo dataset; False when it is absent or empty."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise DataError(f"demo: '{out}' is a file, not a folder; choose another directory")
    if not any(out.iterdir()):
        return False
    marker = _read_marker(out)
    if marker is None:
        raise DataError(
            f"demo: '{out}' is not empty and is not a demo dataset; choose an empty or new "
            f"directory so the demo files are not mixed with yours"
        )
    written = {key: marker.get(key) for key in params}
    if written != params:
        raise DataError(
            f"demo: '{out}' holds a demo dataset written with {_describe(written)}, not "
            f"{_describe(params)}; delete it or choose another directory"
        )
    _check_complete(out, marker)
    return True


def _check_complete(out: Path, marker: dict) -> None:
    """Files deleted after writing would silently shrink the dataset; say so instead."""
    index = find_dataset(out)
    if (len(index.train), len(index.val)) != (marker.get("train"), marker.get("val")):
        raise DataError(
            f"demo: '{out}' has {len(index.train)} train and {len(index.val)} val images but was "
            f"written with {marker.get('train')} and {marker.get('val')}; delete it and run again"
        )


def _describe(params: dict) -> str:
    """'size=64, val_every=5, quality=95' for error messages."""
    return ", ".join(f"{key}={value}" for key, value in params.items())


def _load_digits():
    """sklearn's bundled digits as (uint8 images 1797x8x8 in 0..16, int targets); no download."""
    try:
        from sklearn.datasets import load_digits  # lazy: scikit-learn is only needed here
    except ImportError as e:
        raise DataError(
            "demo: the demo dataset needs scikit-learn; run 'pip install scikit-learn' "
            "(or 'pip install rn50[demo]')"
        ) from e
    digits = load_digits()
    return digits.images, digits.target


def _write_tree(tmp: Path, images, targets, size: int, val_every: int, quality: int) -> dict:
    """Write mapping, val CSV and all JPEGs under `tmp`; return the train and val counts."""
    train_dir, val_dir = tmp / _CLS_LOC / "train", tmp / _CLS_LOC / "val"
    for wnid in DEMO_WNIDS:
        (train_dir / wnid).mkdir(parents=True)
    val_dir.mkdir(parents=True)
    (tmp / MAPPING_FILE).write_text(
        "".join(f"{wnid} {_DIGIT_WORDS[d]}, digit {d}\n" for d, wnid in enumerate(DEMO_WNIDS)),
        encoding="utf-8",
    )
    val_rows = []
    n_train = 0
    for i, (pixels, digit) in enumerate(zip(images, targets, strict=True)):
        wnid = DEMO_WNIDS[int(digit)]
        if i % val_every == 0:
            image_id = f"ILSVRC2012_val_{len(val_rows) + 1:08d}"
            path = val_dir / f"{image_id}.JPEG"
            val_rows.append(f"{image_id},{wnid} 0 0 {size - 1} {size - 1}\n")
        else:
            path = train_dir / wnid / f"{wnid}_{i}.JPEG"
            n_train += 1
        _save_jpeg(_digit_image(pixels, size), path, quality)
    (tmp / VAL_SOLUTION_FILE).write_text(
        "ImageId,PredictionString\n" + "".join(val_rows), encoding="utf-8"
    )
    return {"train": n_train, "val": len(val_rows)}


def _digit_image(pixels, size: int) -> Image.Image:
    """One 8x8 digit (0..16) as a `size` x `size` RGB Pillow image, dark digit on light."""
    gray = np.rint(255 - np.asarray(pixels, dtype=np.float64) * (255 / _DIGIT_MAX))
    small = Image.fromarray(gray.astype(np.uint8))  # 2-D uint8 -> mode "L"
    # Convert to RGB after resizing: 3 identical channels, as the model's stem expects 3.
    return to_rgb(small.resize((size, size), Image.Resampling.BICUBIC))


def _save_jpeg(image: Image.Image, path: Path, quality: int) -> None:
    """Save as baseline JPEG with nothing time- or machine-dependent in it (no EXIF)."""
    image.save(path, format="JPEG", quality=quality)


def _write_marker(tmp: Path, info: dict) -> None:
    """Record how the dataset was made; written last, so it exists only in a complete tree."""
    (tmp / MARKER_FILE).write_text(json.dumps(info, sort_keys=True) + "\n", encoding="utf-8")


def _read_marker(out: Path) -> dict | None:
    """The marker's contents, or None when `out` is not a demo dataset."""
    try:
        info = json.loads((out / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _make_temp_sibling(out: Path) -> Path:
    """A new hidden folder next to `out`: same filesystem, so the final rename is atomic.

    Not tempfile.mkdtemp: its 0700 mode would survive the rename and hide the dataset from
    other users; mkdir applies the umask like any folder the user creates.
    """
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    return tmp


def _move_into_place(tmp: Path, out: Path, params: dict[str, int]) -> None:
    """Rename the finished tree to `out` (atomic on one filesystem; tmp is a sibling of out)."""
    if out.is_dir():
        # Only reached when out is empty: rmdir refuses a folder that filled up meanwhile.
        _rmdir_if_empty(out)
    try:
        os.rename(tmp, out)
    except OSError:
        # Another process may have finished the same demo first; that result is as good as ours.
        if not _existing_demo(out, params):
            raise


def _rmdir_if_empty(out: Path) -> None:
    """Remove an empty `out` so the rename can take its place."""
    try:
        out.rmdir()
    except OSError:
        pass  # not empty any more: the rename below fails and the caller re-checks

