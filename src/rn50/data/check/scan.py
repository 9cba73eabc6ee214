"""The scan of `rn50 data check`: decode every file of a dataset, in parallel, and classify it.

Every indexed image is fully decoded (``Image.load()``), because Pillow reads only the header
on ``Image.open`` and a truncated JPEG looks fine until its pixels are needed. What a file can
be reported as (``FileReport.problems``) is a fixed vocabulary:

error (the trainer cannot use the file):
    ``unreadable``   zero bytes, truncated, not an image at all (HTML, text), or a mode that
                     cannot be converted to RGB.
warnings (the one image reader, ``rn50.data.image``, converts the file on every read;
``write_fixed_copy`` re-encodes it with that reader):
    ``not_jpeg``     named .jpg/.jpeg but holding another format (ImageNet's
                     n02105855_2933.JPEG is a PNG); a GPU JPEG decoder cannot read it.
    ``cmyk``         CMYK (22 ImageNet train JPEGs).
    ``grayscale``    one channel (modes L and 1).
    ``16bit``        more than 8 bits per sample (modes I;16*, I, F).
    ``alpha``        a transparency channel (RGBA, LA, PA).
    ``palette``      indexed colour (mode P).
    ``other_mode``   any other mode that is not RGB (YCbCr, LAB, HSV, ...).
    ``exif_rotated`` an EXIF orientation other than 1: every reader turns the image upright.
    ``huge``         more pixels than Pillow's decompression-bomb threshold
                     (Image.MAX_IMAGE_PIXELS, 89 MP): read, but slow and memory-hungry.
                     (Above twice that, Pillow refuses the file: ``unreadable``.)

Duplicates (byte-identical files, found by SHA-1) are reported separately: a file in both train
and val inflates val accuracy.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import hashlib
import os
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import IO

import numpy as np
from PIL import ImageFile, UnidentifiedImageError

from rn50 import resources
from rn50.data.check.report import DatasetReport, DuplicateGroup, FileReport, _Progress
from rn50.data.image import LargeImageWarning, open_pil, orientation, to_rgb
from rn50.data.layout import DatasetIndex, printable
from rn50.errors import one_line

UNREADABLE = "unreadable"
NOT_JPEG = "not_jpeg"
CMYK = "cmyk"
GRAYSCALE = "grayscale"
HIGH_BIT_DEPTH = "16bit"
ALPHA = "alpha"
PALETTE = "palette"
OTHER_MODE = "other_mode"
EXIF_ROTATED = "exif_rotated"
HUGE = "huge"

WARNING_KINDS: tuple[str, ...] = (
    NOT_JPEG, CMYK, GRAYSCALE, HIGH_BIT_DEPTH, ALPHA, PALETTE, OTHER_MODE, EXIF_ROTATED, HUGE
)
"""Problems the trainer converts away, in the order reports list them."""

_MODE_PROBLEM = {
    "RGB": None,
    "CMYK": CMYK,
    "L": GRAYSCALE,
    "1": GRAYSCALE,
    "I;16": HIGH_BIT_DEPTH,
    "I;16B": HIGH_BIT_DEPTH,
    "I;16L": HIGH_BIT_DEPTH,
    "I;16N": HIGH_BIT_DEPTH,
    "I": HIGH_BIT_DEPTH,
    "F": HIGH_BIT_DEPTH,
    "RGBA": ALPHA,
    "RGBa": ALPHA,
    "LA": ALPHA,
    "La": ALPHA,
    "PA": ALPHA,
    "P": PALETTE,
}

_JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})
# MPO (multi-picture, written by some cameras) is a JPEG with extra frames: every JPEG decoder
# reads its first frame, so it is not "not_jpeg".
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})

_CHUNK_MAX = 256  # files per task sent to a worker: large enough that pickling is noise


# ---------------------------------------------------------------------------------------------
# One file


def check_file(path: str | os.PathLike[str]) -> FileReport:
    """Read and fully decode one image file and say what is wrong with it, if anything.

    Never raises for a bad file: a file that cannot be read or decoded comes back with
    ok=False and problem "unreadable", the reason in `detail`. `path` is kept as given.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return _unreadable(path, f"cannot read the file: {e.strerror or e}")
    sha1 = hashlib.sha1(data).hexdigest()
    if not data:
        return _unreadable(path, "empty file (0 bytes)", sha1=sha1)
    with _truncated_images_refused(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LargeImageWarning)
        try:
            with open_pil(data) as img:
                fmt, mode, size = img.format, img.mode, img.size
                turn = orientation(img)
                img.load()
                if mode != "RGB":
                    # Proves the reader can convert it; only non-RGB files pay.
                    to_rgb(img)
        except UnidentifiedImageError:
            return _unreadable(path, f"not an image ({_sniff(data)})", len(data), sha1)
        except Exception as e:  # any decoder failure: the trainer's load_rgb fails too
            return _unreadable(path, f"cannot decode: {one_line(e)}", len(data), sha1)
    problems = []
    if os.path.splitext(path)[1].lower() in _JPEG_SUFFIXES and fmt not in _JPEG_FORMATS:
        problems.append(NOT_JPEG)
    mode_problem = _MODE_PROBLEM.get(mode, OTHER_MODE)
    if mode_problem is not None:
        problems.append(mode_problem)
    if turn != 1:
        problems.append(EXIF_ROTATED)
    if any(issubclass(w.category, LargeImageWarning) for w in caught):
        problems.append(HUGE)
    return FileReport(
        path=path, ok=True, problem=problems[0] if problems else None,
        problems=tuple(problems), format=fmt, mode=mode, size=size, nbytes=len(data), sha1=sha1,
    )


def _unreadable(path: str, detail: str, nbytes: int = 0, sha1: str = "") -> FileReport:
    return FileReport(
        path=path, ok=False, problem=UNREADABLE, problems=(UNREADABLE,), detail=detail,
        nbytes=nbytes, sha1=sha1,
    )


@contextlib.contextmanager
def _truncated_images_refused() -> Iterator[None]:
    """Pillow's LOAD_TRUNCATED_IMAGES off while checking.

    A process that turned it on to survive bad files (a trainer, a notebook) would otherwise make
    every truncated JPEG pass this check with grey pixels where its data ends.
    """
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _sniff(data: bytes) -> str:
    """A hint at what a non-image file is: a saved error page is the usual culprit."""
    head = data[:64].lstrip()
    if head[:1] == b"<":
        return "HTML or XML text"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "text"
    return f"unknown content starting with {data[:8].hex(' ')}"


# ---------------------------------------------------------------------------------------------
# A whole dataset


def check_dataset(
    index: DatasetIndex,
    workers: int | None = None,
    progress: bool = False,
    stream: IO[str] | None = None,
) -> DatasetReport:
    """Decode every train and val file of `index` in `workers` processes and report.

    `workers` <= 1 checks in this process; None: resources.available_cpus(). With `progress`, a
    progress bar goes to `stream` (stderr by default) when it is a terminal, else a plain line
    every rn50.data.check.report.PLAIN_PROGRESS_EVERY_S seconds and one at the end. Bad files
    are reported, not raised; Ctrl-C stops the workers without decoding the rest.
    """
    start = time.monotonic()
    workers = resources.available_cpus() if workers is None else workers
    samples = index.train + index.val
    paths = [p for p, _ in samples]
    n_train = len(index.train)
    prefix = str(index.root) + os.sep

    def rel(path: str) -> str:
        # Every indexed file is under root (layout.py builds them from it): slicing is exact,
        # and on 1.28M files it is much faster than os.path.relpath.
        return (path[len(prefix):] if path.startswith(prefix) else path).replace(os.sep, "/")

    # SHA-1s in one array (20 bytes a file), not a dict of strings: on ImageNet that is 26 MB
    # instead of about 250 MB.
    digests = np.zeros(len(paths), dtype="S20")
    readable = np.ones(len(paths), dtype=bool)
    formats: Counter[str] = Counter()
    errors: list[FileReport] = []
    warnings: dict[str, list[FileReport]] = {}
    bar = _Progress(len(paths), "check", progress, stream)
    try:
        for first, reports in _check_in_parallel(paths, workers):
            for offset, report in enumerate(reports):
                pos = first + offset
                if report.sha1:
                    digests[pos] = bytes.fromhex(report.sha1)
                if not report.ok:
                    readable[pos] = False
                    errors.append(dataclasses.replace(report, path=rel(report.path)))
                    continue
                formats[report.format or "?"] += 1
                for kind in report.problems:
                    warnings.setdefault(kind, []).append(
                        dataclasses.replace(report, path=rel(report.path))
                    )
            bar.update(len(reports))
    finally:
        bar.close()

    labels = np.array([label for _, label in samples], dtype=np.int64)
    is_val = np.arange(len(samples)) >= n_train
    readable_train = np.bincount(labels[~is_val & readable], minlength=len(index.classes))
    readable_val = np.bincount(labels[is_val & readable], minlength=len(index.classes))
    has_val = bool(index.val)
    return DatasetReport(
        root=str(index.root),
        layout=index.layout,
        classes=index.classes,
        counts={
            "train": _per_class(index.train, index.classes),
            "val": _per_class(index.val, index.classes),
        },
        formats=dict(formats.most_common()),
        errors=sorted(errors, key=lambda r: r.path),
        warnings={
            kind: sorted(warnings[kind], key=lambda r: r.path)
            for kind in WARNING_KINDS
            if kind in warnings
        },
        duplicates=_duplicate_groups(digests, readable, paths, n_train, rel),
        missing_val=[c for c, n in zip(index.classes, readable_val, strict=True) if n == 0]
        if has_val
        else [],
        empty_train=[c for c, n in zip(index.classes, readable_train, strict=True) if n == 0],
        has_val=has_val,
        skipped=[(printable(rel(p)), why) for p, why in index.skipped],
        notes=list(index.notes),
        seconds=time.monotonic() - start,
    )


def _per_class(samples: Iterable[tuple[str, int]], classes: tuple[str, ...]) -> dict[str, int]:
    """class -> number of samples, every class listed (zeros too), in class order."""
    counts = Counter(label for _, label in samples)
    return {c: counts.get(i, 0) for i, c in enumerate(classes)}


def _check_chunk(paths: list[str]) -> list[FileReport]:
    """One worker task: check a run of files (module level, so a worker process can run it)."""
    return [check_file(p) for p in paths]


def _check_in_parallel(
    paths: list[str], workers: int
) -> Iterator[tuple[int, list[FileReport]]]:
    """(position of the chunk's first file, its reports), in the order chunks finish."""
    # Several chunks per worker so the last ones do not leave workers idle; at most _CHUNK_MAX so
    # the progress bar moves.
    chunk = max(1, min(_CHUNK_MAX, len(paths) // (max(workers, 1) * 8)))
    starts = range(0, len(paths), chunk)
    if workers <= 1:
        for first in starts:
            yield first, _check_chunk(paths[first:first + chunk])
        return
    pool = cf.ProcessPoolExecutor(max_workers=workers)
    try:
        futures = {pool.submit(_check_chunk, paths[s:s + chunk]): s for s in starts}
        for future in cf.as_completed(futures):
            yield futures[future], future.result()
    finally:
        # Ctrl-C or an error: drop the queued chunks instead of decoding the rest of the dataset.
        pool.shutdown(wait=True, cancel_futures=True)


def _duplicate_groups(digests, readable, paths, n_train, rel) -> list[DuplicateGroup]:
    """Groups of readable files with equal SHA-1 (unreadable ones, e.g. empty files, left out)."""
    positions = np.flatnonzero(readable)
    if positions.size == 0:
        return []
    _, inverse, counts = np.unique(digests[positions], return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    repeated = counts[inverse] > 1  # select in numpy: a Python loop over 1.28M files is slow
    groups: dict[int, list[int]] = {}
    for pos, group in zip(positions[repeated], inverse[repeated], strict=True):
        groups.setdefault(int(group), []).append(int(pos))
    result = []
    for members in groups.values():
        pairs = sorted((rel(paths[p]), "train" if p < n_train else "val") for p in members)
        result.append(
            DuplicateGroup(
                sha1=bytes(digests[members[0]]).ljust(20, b"\0").hex(),
                paths=tuple(p for p, _ in pairs),
                splits=tuple(s for _, s in pairs),
            )
        )
    return sorted(result, key=lambda g: g.paths[0])
