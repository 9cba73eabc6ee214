"""Scan a dataset for files the trainer cannot read, files it would silently convert, and
duplicates; write a skip list or a fixed copy.

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

Paths inside a ``DatasetReport`` and in a skip list are relative to the dataset root
(``DatasetIndex.root``) with "/" separators, so a report or skip list stays valid when the
dataset is moved or mounted elsewhere.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from PIL import ImageFile, UnidentifiedImageError

from rn50.data.image import LargeImageWarning, load_rgb, open_pil, orientation, to_rgb
from rn50.data.layout import IMAGE_EXTENSIONS, DatasetIndex
from rn50.errors import DataError
from rn50.fileio import atomic_write_text

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

# The format a re-encoded file is written in, by its (kept) suffix, so name and content agree.
_FORMAT_OF_SUFFIX = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP",
    ".tif": "TIFF", ".tiff": "TIFF",
}
_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}

SKIP_LIST_COMMENT = "#"

PLAIN_PROGRESS_EVERY_S = 10.0
"""Seconds between progress lines when stderr is not a terminal (a log file, CI)."""

_CHUNK_MAX = 256  # files per task sent to a worker: large enough that pickling is noise


# ---------------------------------------------------------------------------------------------
# One file


@dataclass(frozen=True)
class FileReport:
    """What decoding one file found."""

    path: str
    """the file; relative to the dataset root inside a DatasetReport."""
    ok: bool
    """True when the file decodes (it may still have warnings); False when it is unreadable."""
    problem: str | None
    """the first of `problems` (the error, if any), or None for a clean file."""
    problems: tuple[str, ...] = ()
    """every problem found, from the vocabulary in this module's docstring."""
    detail: str = ""
    """why an unreadable file is unreadable, in words."""
    format: str | None = None
    """the content's format as Pillow names it (JPEG, PNG, ...), whatever the file is named."""
    mode: str | None = None
    """Pillow's mode (RGB, CMYK, L, I;16, P, RGBA, ...)."""
    size: tuple[int, int] | None = None
    """(width, height) in pixels."""
    nbytes: int = 0
    """file size in bytes."""
    sha1: str = ""
    """SHA-1 of the file's bytes (hex): equal for byte-identical files."""


def check_file(path: str | os.PathLike[str]) -> FileReport:
    """Read and fully decode one image file and say what is wrong with it, if anything."""
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
            return _unreadable(path, f"cannot decode: {_one_line(e)}", len(data), sha1)
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


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# ---------------------------------------------------------------------------------------------
# A whole dataset


@dataclass(frozen=True)
class DuplicateGroup:
    """Byte-identical files."""

    sha1: str
    paths: tuple[str, ...]
    """relative to the dataset root, sorted."""
    splits: tuple[str, ...]
    """"train" or "val" for each of `paths`."""

    @property
    def across_splits(self) -> bool:
        """True when the same bytes are in train and val: a val image the model trains on."""
        return len(set(self.splits)) > 1


@dataclass
class DatasetReport:
    """What `check_dataset` found. Paths are relative to `root`, with "/" separators."""

    root: str
    layout: str
    classes: tuple[str, ...]
    counts: dict[str, dict[str, int]]
    """split ("train", "val") -> class -> indexed files (unreadable ones included)."""
    formats: dict[str, int]
    """content format (JPEG, PNG, ...) -> readable files."""
    errors: list[FileReport]
    """unreadable files, sorted by path."""
    warnings: dict[str, list[FileReport]]
    """warning kind -> files, sorted by path; only kinds that occur. A file with two
    problems (a palette PNG named .JPEG) is listed under both."""
    duplicates: list[DuplicateGroup]
    """groups of byte-identical readable files, sorted by first path."""
    missing_val: list[str]
    """classes with no readable val image; empty when the dataset has no val split at all."""
    empty_train: list[str]
    """classes whose train images are all unreadable."""
    has_val: bool
    """False when the dataset has no labelled val split (not an error: training still runs)."""
    seconds: float = 0.0
    files: int = field(init=False)

    def __post_init__(self) -> None:
        self.files = sum(sum(per_class.values()) for per_class in self.counts.values())

    @property
    def has_errors(self) -> bool:
        """True when training on this dataset as it is would skip data or miss classes."""
        return bool(self.errors or self.missing_val or self.empty_train)

    def to_json(self) -> dict:
        """The whole report as JSON-ready values (every path, every class)."""
        return {
            "root": self.root,
            "layout": self.layout,
            "files": self.files,
            "seconds": round(self.seconds, 3),
            "has_errors": self.has_errors,
            "has_val": self.has_val,
            "counts": self.counts,
            "formats": self.formats,
            "missing_val": self.missing_val,
            "empty_train": self.empty_train,
            "errors": [dataclasses.asdict(r) for r in self.errors],
            "warnings": {
                kind: [dataclasses.asdict(r) for r in reps] for kind, reps in self.warnings.items()
            },
            "duplicates": [
                {**dataclasses.asdict(g), "across_splits": g.across_splits}
                for g in self.duplicates
            ],
        }


def default_workers() -> int:
    """The CPUs this process may use (a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def check_dataset(
    index: DatasetIndex,
    workers: int | None = None,
    progress: bool = False,
    stream: IO[str] | None = None,
) -> DatasetReport:
    """Decode every train and val file of `index` in `workers` processes and report.

    `workers` <= 1 checks in this process. With `progress`, a progress bar goes to `stream`
    (stderr by default) when it is a terminal, else a plain line every
    PLAIN_PROGRESS_EVERY_S seconds and one at the end.
    """
    start = time.monotonic()
    workers = default_workers() if workers is None else workers
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


class _Progress:
    """tqdm on a terminal; plain, carriage-return-free lines in a log file; nothing when off."""

    def __init__(self, total: int, desc: str, enabled: bool, stream: IO[str] | None = None):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.start = self.last = time.monotonic()
        self.bar = None
        if enabled and _isatty(self.stream):
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(
                    total=total, desc=desc, unit="file", file=self.stream, dynamic_ncols=True
                )

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.enabled and (now - self.last >= PLAIN_PROGRESS_EVERY_S or self.done >= self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            pct = 100.0 * self.done / max(self.total, 1)
            print(
                f"{self.desc}: {self.done}/{self.total} files ({pct:.0f}%), {rate:.0f} files/s",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


# ---------------------------------------------------------------------------------------------
# The text report


def format_report(report: DatasetReport, max_paths: int = 10) -> str:
    """The report as text for a terminal: at most `max_paths` paths per list."""
    lines = [
        f"Dataset {report.root} ({report.layout} layout): {len(report.classes)} classes, "
        f"{report.files} files checked in {report.seconds:.1f} s",
    ]
    for split, per_class in report.counts.items():
        lines.append(_split_line(split, per_class))
    if len(report.classes) <= 20:
        width = max(len(c) for c in report.classes)
        lines.append(f"  {'class':<{width}}  {'train':>7}  {'val':>7}")
        for c in report.classes:
            lines.append(
                f"  {c:<{width}}  {report.counts['train'][c]:>7}  {report.counts['val'][c]:>7}"
            )
    if not report.has_val:
        lines.append("  no labelled val split: training runs without validation")
    lines.append(
        "Formats: " + (", ".join(f"{k} {v}" for k, v in report.formats.items()) or "none")
    )

    lines.append("")
    n_errors = len(report.errors) + len(report.missing_val) + len(report.empty_train)
    lines.append(f"Errors: {n_errors}")
    if report.errors:
        lines.append(f"  {len(report.errors)} unreadable file(s) (write --skip-list FILE and set "
                     f"data.skip_list to leave them out):")
        lines += _listing([f"{r.path}: {r.detail}" for r in report.errors], max_paths)
    if report.empty_train:
        lines.append(f"  {len(report.empty_train)} class(es) with no readable train image:")
        lines += _listing(report.empty_train, max_paths)
    if report.missing_val:
        lines.append(f"  {len(report.missing_val)} class(es) with no readable val image "
                     f"(their val accuracy cannot be measured):")
        lines += _listing(report.missing_val, max_paths)

    lines.append("")
    n_warned = len({r.path for reps in report.warnings.values() for r in reps})
    lines.append(f"Warnings: {n_warned}" + (
        " file(s) the trainer converts to RGB on every read (--fix-to DIR writes a converted "
        "copy)" if n_warned else ""))
    for kind, reps in report.warnings.items():
        lines.append(f"  {kind}: {len(reps)}")
        lines += _listing([f"{r.path} ({r.format} {r.mode})" for r in reps], max_paths)

    lines.append("")
    across = sum(g.across_splits for g in report.duplicates)
    lines.append(f"Duplicates: {len(report.duplicates)} group(s) of byte-identical files"
                 + (f", {across} in both train and val (inflates val accuracy)" if across else ""))
    # Leaks first: they change the numbers a user reports.
    ordered = sorted(report.duplicates, key=lambda g: not g.across_splits)
    lines += _listing(
        [f"{g.sha1[:12]}: " + ", ".join(g.paths) for g in ordered], max_paths
    )

    lines.append("")
    lines.append("Result: " + ("ERRORS found" if report.has_errors else "no errors")
                 + f" ({n_errors} error(s), {n_warned} file(s) with warnings, "
                 f"{len(report.duplicates)} duplicate group(s))")
    return "\n".join(lines)


def _split_line(split: str, per_class: dict[str, int]) -> str:
    values = sorted(per_class.values())
    total = sum(values)
    if total == 0:
        return f"  {split}: 0 files"
    with_files = sum(v > 0 for v in values)
    return (f"  {split}: {total} files in {with_files} classes, "
            f"{values[0]} to {values[-1]} per class")


def _listing(items: list[str], max_paths: int) -> list[str]:
    shown = [f"    {item}" for item in items[:max_paths]]
    if len(items) > max_paths:
        shown.append(f"    ... and {len(items) - max_paths} more (--json FILE lists all)")
    return shown


def write_json(report: DatasetReport, path: str | os.PathLike[str]) -> None:
    """The full report as a JSON file (written atomically)."""
    atomic_write_text(path, json.dumps(report.to_json(), indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# Skip list


def write_skip_list(report: DatasetReport, path: str | os.PathLike[str]) -> None:
    """Write the unreadable files, one path a line relative to the dataset root.

    Relative paths keep the list valid when the dataset moves; lines starting with "#" are
    comments. An empty list (header only) is written when nothing is unreadable, so a config
    that names the file keeps working.
    """
    header = [
        "# rn50 skip list: files the trainer leaves out because they cannot be decoded.",
        "# Written by 'rn50 data check'. One path a line, relative to the dataset root",
        f"# (here {report.root}); lines starting with '#' are comments.",
        f"# {len(report.errors)} file(s).",
    ]
    atomic_write_text(path, "\n".join(header + [r.path for r in report.errors]) + "\n")


def read_skip_list(path: str | os.PathLike[str]) -> set[str]:
    """The paths in a skip list (relative to the dataset root, "/" separators)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(
            f"skip list not found: '{path}'; write one with 'rn50 data check DATA_DIR "
            f"--skip-list {path}'"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read skip list '{path}': {_one_line(e)}") from None
    skipped = set()
    for line in text.splitlines():
        entry = line.strip()
        if entry and not entry.startswith(SKIP_LIST_COMMENT):
            # Tolerate a list edited on Windows or written as ./train/...
            entry = entry.replace("\\", "/")
            skipped.add(entry[2:] if entry.startswith("./") else entry)
    return skipped


def apply_skip_list(index: DatasetIndex, skipped: set[str]) -> DatasetIndex:
    """`index` without the files in `skipped` (paths relative to its root, or absolute)."""
    if not skipped:
        return index
    prefix = str(index.root) + os.sep

    def keep(path: str) -> bool:
        rel = path[len(prefix):] if path.startswith(prefix) else path
        return rel.replace(os.sep, "/") not in skipped and path not in skipped

    return dataclasses.replace(
        index,
        train=tuple(s for s in index.train if keep(s[0])),
        val=tuple(s for s in index.val if keep(s[0])),
    )


# ---------------------------------------------------------------------------------------------
# Fixed copy


@dataclass(frozen=True)
class FixSummary:
    """What `write_fixed_copy` did, in files."""

    out_dir: str
    reencoded: int
    linked: int
    copied: int
    left_out: int


def check_fix_target(out_dir: str | os.PathLike[str], root: str | os.PathLike[str]) -> Path:
    """The resolved `out_dir` if a fixed copy of the dataset at `root` may be written there.

    Raises DataError for a non-empty folder, a file, or a folder inside the dataset (the copy
    would be indexed as part of it).
    """
    out = Path(out_dir).expanduser().resolve()
    root = Path(root).resolve()
    if out == root or root in out.parents:
        raise DataError(
            f"--fix-to '{out}' is inside the dataset '{root}'; choose a folder outside it"
        )
    if out.exists():
        if not out.is_dir():
            raise DataError(f"--fix-to '{out}' is a file; choose a new or empty folder")
        if any(out.iterdir()):
            raise DataError(
                f"--fix-to '{out}' is not empty; choose a new or empty folder (nothing is "
                f"overwritten)"
            )
    return out


def write_fixed_copy(
    report: DatasetReport,
    index: DatasetIndex,
    out_dir: str | os.PathLike[str],
    progress: bool = False,
) -> FixSummary:
    """Write a copy of the dataset with the same layout that checks clean.

    Files with warnings are re-encoded as RGB under their original name, in the format the name
    says (JPEG quality 95 for .JPEG/.jpg, which is every ImageNet file); 16-bit images are
    scaled to 8 bits, not clipped. Unreadable files are left out. Every other file is
    hard-linked (copied where the filesystem cannot link), so the copy costs little disk: do
    not edit files in place in either tree, since linked files are shared. The LOC_ files
    (class names, val labels) are copied. The tree is written to a hidden sibling folder and
    renamed to `out_dir` at the end, so a copy that exists is complete; a non-empty `out_dir`
    is refused (DataError).
    """
    out = check_fix_target(out_dir, index.root)
    root = Path(index.root)
    prefix = str(root) + os.sep
    problem_of = {r.path: r for r in report.errors}
    for reps in report.warnings.values():
        problem_of.update((r.path, r) for r in reps)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    counts = Counter()
    try:
        for src in _loc_files(index):
            dest = tmp / src.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
        made: set[Path] = set()
        can_link = True
        samples = index.train + index.val
        bar = _Progress(len(samples), "fix", progress)
        try:
            for path, _ in samples:
                bar.update(1)
                rel = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, root)
                found = problem_of.get(rel.replace(os.sep, "/"))
                if found is not None and not found.ok:
                    counts["left_out"] += 1
                    continue
                dest = tmp / rel
                if dest.parent not in made:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    made.add(dest.parent)
                if found is not None:
                    _reencode(path, dest)
                    counts["reencoded"] += 1
                    continue
                if can_link:
                    try:
                        os.link(path, dest)
                        counts["linked"] += 1
                        continue
                    except OSError:
                        # Another filesystem, or one without hard links: every later link would
                        # fail the same way, so stop trying.
                        can_link = False
                shutil.copy2(path, dest)
                counts["copied"] += 1
        finally:
            bar.close()
        _move_into_place(tmp, out)
    finally:
        # Only left behind when writing or the rename failed.
        shutil.rmtree(tmp, ignore_errors=True)
    return FixSummary(
        out_dir=str(out), reencoded=counts["reencoded"], linked=counts["linked"],
        copied=counts["copied"], left_out=counts["left_out"],
    )


def _loc_files(index: DatasetIndex) -> list[Path]:
    """The Kaggle LOC_ files (mapping, val CSV, ...) between the root and the images.

    layout.py looks for them up to three folders above CLS-LOC and takes the highest as the
    root, so every one it can use lies on the way from the root to the first train image.
    """
    root = Path(index.root)
    first = Path(index.train[0][0]) if index.train else root
    folders = [root, *(p for p in first.parents if root in p.parents)]
    found = []
    for folder in folders:
        with os.scandir(folder) as entries:
            found += [
                Path(e.path)
                for e in entries
                if e.name.startswith("LOC_")
                and e.is_file()
                and os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS
            ]
    return sorted(found)


def _reencode(src: str, dest: Path) -> None:
    """Decode `src` and write it to `dest` as RGB, in the format `dest`'s suffix names."""
    fmt = _FORMAT_OF_SUFFIX.get(dest.suffix.lower(), "JPEG")
    with _truncated_images_refused():
        rgb = load_rgb(src)  # upright: the copy is saved without its EXIF orientation
    # No icc_profile: a CMYK file's profile would mislabel the RGB pixels.
    rgb.save(dest, format=fmt, **_SAVE_OPTIONS.get(fmt, {}))


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished tree to `out` (atomic: `tmp` is its sibling, on one filesystem)."""
    if out.is_dir():
        try:
            out.rmdir()  # empty (checked before); rmdir refuses one that filled up meanwhile
        except OSError as e:
            raise DataError(f"--fix-to '{out}' is no longer empty; choose another folder") from e
    os.rename(tmp, out)
