"""`rn50 data prepare`: a resized copy of a dataset, which is cheaper to decode every epoch.

Training crops at most a few hundred pixels out of each image, but decoding costs by the pixel
of the stored file: ImageNet's originals average about 400x350 with a long tail of multi-
megapixel photos. A copy with the longest side at most `max_side` (e.g. 512) decodes several
times faster on those and keeps what a 224 px crop can show.

The copy has the layout of the source (ImageFolder or Kaggle ILSVRC, LOC_ files included) and
the same file names, so labels are the same. Per file:

- a JPEG (RGB or grayscale) no larger than `max_side` is copied byte for byte (no second
  lossy encoding, its EXIF orientation kept and applied when it is read), after a decode
  that proves it readable;
- a larger one is decoded (DCT-scaled by libjpeg where it is at least twice too large),
  turned upright by its EXIF orientation, resized with a Lanczos filter and written as JPEG
  at `quality` (without EXIF);
- any other file the trainer reads (CMYK, PNG, 16-bit, ...) is read by rn50's one image
  reader (rn50.data.image: upright, converted to RGB) and written as JPEG at `quality` under
  its own name;
- an unreadable file is left out and listed.

Resumable: each file is written to a hidden temporary name and renamed, so a file under its
final name is complete, and a second run skips those (after a kill, run the same command
again; it removes the temporary files the killed run left). The settings are recorded in
DST/.rn50-prepare.json, and resuming with other settings is refused; DST/.rn50-prepared.json
is written when every file is done. At the end the index of the copy is cached, so the first
training start on it does not list 1.28M files again.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import os
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from PIL import Image

from rn50 import resources
from rn50.data.check.fix import _loc_files
from rn50.data.check.report import _Progress
from rn50.data.check.scan import _truncated_images_refused
from rn50.data.image import (
    LargeImageWarning,
    open_pil,
    orient,
    orientation,
    oriented_size,
    to_rgb,
)
from rn50.data.layout import DatasetIndex, find_dataset, index_warnings
from rn50.errors import DataError
from rn50.fileio import atomic_write_text, remove_stale_temps, temp_path

SETTINGS_FILE = ".rn50-prepare.json"
DONE_FILE = ".rn50-prepared.json"
_CHUNK = 64  # files per worker task: pickling cost is noise, the progress bar still moves


@dataclass
class PrepareSummary:
    """What `prepare_dataset` did, in files."""

    out_dir: str
    total: int = 0
    already_done: int = 0  # found complete from an earlier run
    copied: int = 0  # small enough: the original bytes
    resized: int = 0
    converted: int = 0  # not a plain RGB/grayscale JPEG: re-encoded as RGB JPEG
    bad: list[str] = field(default_factory=list)  # unreadable: left out (relative paths)
    # what indexing set aside or had to guess (rn50.data.layout.index_warnings): not copied
    warnings: list[str] = field(default_factory=list)
    removed_temps: str | None = None  # the line saying which files of killed writers went


def prepare_dataset(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    max_side: int = 512,
    quality: int = 90,
    workers: int | None = None,
    progress: bool = False,
    stream: IO[str] | None = None,
    index: DatasetIndex | None = None,
) -> PrepareSummary:
    """Write the resized copy of the dataset at `src` to `dst` (see the module docstring);
    `index`: src's index when the caller has listed it already (else it is listed here)."""
    if max_side < 16:
        raise DataError(f"--max-side must be at least 16, got {max_side}")
    if not 1 <= quality <= 100:
        raise DataError(f"--quality must be in 1..100, got {quality}")
    index = index if index is not None else find_dataset(src)
    root = Path(index.root)
    out = Path(dst).expanduser().resolve()
    if out == root or root in out.parents:
        raise DataError(f"DST '{out}' is inside the dataset '{root}'; choose a folder outside it")
    settings = {"source": str(root), "max_side": max_side, "quality": quality}
    _claim(out, settings)
    summary = PrepareSummary(out_dir=str(out), warnings=index_warnings(index))
    # A killed earlier run left its half-written files under hidden temporary names.
    summary.removed_temps = remove_stale_temps(out, recursive=True)

    for loc in _loc_files(index):
        dest = out / loc.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(dest)
        shutil.copyfile(loc, tmp)
        os.replace(tmp, dest)

    prefix = str(root) + os.sep
    todo: list[tuple[str, str]] = []
    folders: set[str] = set()
    samples = index.train + index.val
    summary.total = len(samples)
    for path, _ in samples:
        rel = path[len(prefix) :]
        dest = os.path.join(out, rel)
        if os.path.exists(dest):
            summary.already_done += 1
            continue
        folders.add(os.path.dirname(dest))
        todo.append((path, dest))
    for folder in sorted(folders):  # here, not in the workers: no race between them
        os.makedirs(folder, exist_ok=True)

    counts: Counter[str] = Counter()
    bar = _Progress(len(todo), "prepare", progress, stream)  # the files left: an honest rate
    try:
        for results in _in_parallel(todo, max_side, quality, workers):
            for src_path, outcome in results:
                counts[outcome] += 1
                if outcome == "bad":
                    summary.bad.append(src_path[len(prefix) :].replace(os.sep, "/"))
            bar.update(len(results))
    finally:
        bar.close()
    summary.copied, summary.resized = counts["copied"], counts["resized"]
    summary.converted = counts["converted"]
    summary.bad.sort()
    atomic_write_text(
        out / DONE_FILE,
        json.dumps(
            {**settings, "files": summary.total - len(summary.bad), "left_out": summary.bad},
            indent=1,
        ),
    )
    from rn50.data.index_cache import load_dataset_index

    load_dataset_index(out, settle=False)  # nothing writes there any more: cache it now
    return summary


def _claim(out: Path, settings: dict) -> None:
    """Start or resume writing to `out`: new, empty, or an earlier run with the same settings."""
    marker = out / SETTINGS_FILE
    if out.exists() and not out.is_dir():
        raise DataError(f"DST '{out}' is a file; choose a new or empty folder")
    if marker.is_file():
        try:
            before = json.loads(marker.read_text())
        except ValueError:
            before = None
        if before != settings:
            raise DataError(
                f"DST '{out}' holds a copy prepared with other settings ({before}); use the "
                f"same --max-side and --quality to resume, or a new folder"
            )
        return
    if out.is_dir() and any(out.iterdir()):
        raise DataError(
            f"DST '{out}' is not empty and was not written by rn50 data prepare; choose a new "
            f"or empty folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps(settings, indent=1))


def _in_parallel(todo, max_side: int, quality: int, workers: int | None):
    """Lists of (source path, outcome), chunk by chunk, in the order they finish."""
    workers = resources.available_cpus() if workers is None else workers
    chunks = [todo[i : i + _CHUNK] for i in range(0, len(todo), _CHUNK)]
    if workers <= 1:
        for chunk in chunks:
            yield _prepare_chunk(chunk, max_side, quality)
        return
    pool = cf.ProcessPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(_prepare_chunk, c, max_side, quality) for c in chunks]
        for future in cf.as_completed(futures):
            yield future.result()
    finally:
        # Ctrl-C: drop the queued chunks; what is written is complete and a rerun resumes.
        pool.shutdown(wait=True, cancel_futures=True)


def _prepare_chunk(chunk, max_side: int, quality: int) -> list[tuple[str, str]]:
    """One worker task (module level, so a worker process can run it)."""
    with _truncated_images_refused(), warnings.catch_warnings():
        # A large image is prepared like any other (and made smaller): no warning per file.
        warnings.simplefilter("ignore", LargeImageWarning)
        return [(src, prepare_file(src, dest, max_side, quality)) for src, dest in chunk]


def prepare_file(src: str, dest: str, max_side: int, quality: int) -> str:
    """Write one file's prepared copy to `dest`: 'copied', 'resized', 'converted' or 'bad'."""
    try:
        with open(src, "rb") as f:
            data = f.read()
        with open_pil(data) as img:
            width, height = img.size
            plain = img.format == "JPEG" and img.mode in ("RGB", "L")
            scale = max_side / max(width, height)
            if plain and scale >= 1:
                img.load()  # proves it decodes: a truncated file is not copied
                outcome, payload = "copied", data
            else:
                turn = orientation(img)  # from the header, before draft() and decoding
                size = (max(1, round(width * min(scale, 1))), max(1, round(height * min(scale, 1))))
                if scale < 1:
                    img.draft("RGB", size)  # JPEG: decode at 1/2..1/8 when still >= size
                # Upright first, then resized: what the reader gives, resized.
                rgb = orient(to_rgb(img), turn)
                size = oriented_size(*size, turn)  # (w, h) swap alike for 5..8
                if rgb.size != size:
                    rgb = rgb.resize(size, Image.LANCZOS)
                buf = io.BytesIO()
                rgb.save(buf, format="JPEG", quality=quality)
                outcome = "resized" if plain else "converted"
                payload = buf.getvalue()
    except Exception:  # unreadable, truncated, not an image, decompression bomb
        return "bad"
    tmp = temp_path(dest)
    with open(tmp, "wb") as f:
        f.write(payload)
    os.replace(tmp, dest)  # a file under its final name is complete: a resume skips it
    return outcome
