"""What `rn50 data check` found and how it is shown: the result types (`FileReport`,
`DuplicateGroup`, `DatasetReport`), the progress display while files are read, and the report
as text for a terminal or as a JSON file.

Paths inside a `DatasetReport` are relative to the dataset root (`DatasetIndex.root`) with "/"
separators, so a report stays valid when the dataset is moved or mounted elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import IO

from rn50.fileio import atomic_write_text

PLAIN_PROGRESS_EVERY_S = 10.0
"""Seconds between progress lines when stderr is not a terminal (a log file, CI)."""


# ---------------------------------------------------------------------------------------------
# What a check found


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
    """every problem found, from the vocabulary in rn50.data.check.scan's docstring."""
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


@dataclass(frozen=True)
class DuplicateGroup:
    """Byte-identical readable files: two or more, in one split or across train and val."""

    sha1: str
    """SHA-1 of their bytes (40 hex digits)."""
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
    """the dataset root (DatasetIndex.root), absolute."""
    layout: str
    """"kaggle" or "imagefolder" (DatasetIndex.layout)."""
    classes: tuple[str, ...]
    """class ids (wnids or folder names), sorted; position = label."""
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
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(path, why) of entries not indexed (DatasetIndex.skipped): link loops, broken links,
    folders that cannot be listed, image names on FIFOs or devices, odd names, ..."""
    notes: list[str] = field(default_factory=list)
    """labels the index had to choose and near-identical class names (DatasetIndex.notes)."""
    seconds: float = 0.0
    """wall-clock time the scan took, in seconds."""
    files: int = field(init=False)
    """indexed train and val files, unreadable ones included (the sum of `counts`)."""

    def __post_init__(self) -> None:
        self.files = sum(sum(per_class.values()) for per_class in self.counts.values())

    @property
    def has_errors(self) -> bool:
        """True when training on this dataset as it is would skip data or miss classes."""
        return bool(
            self.errors or self.missing_val or self.empty_train or self.skipped or self.notes
        )

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
            "skipped": [{"path": p, "why": why} for p, why in self.skipped],
            "notes": self.notes,
            "errors": [dataclasses.asdict(r) for r in self.errors],
            "warnings": {
                kind: [dataclasses.asdict(r) for r in reps] for kind, reps in self.warnings.items()
            },
            "duplicates": [
                {**dataclasses.asdict(g), "across_splits": g.across_splits}
                for g in self.duplicates
            ],
        }


# ---------------------------------------------------------------------------------------------
# Progress while files are read


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
# The text report and the JSON file


def format_report(report: DatasetReport, max_paths: int = 10) -> str:
    """The report as text for a terminal: counts per split (and per class up to 20 classes),
    formats, errors, warnings, duplicates and a result line, at most `max_paths` paths per
    list (the rest counted)."""
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
    n_errors = (len(report.errors) + len(report.missing_val) + len(report.empty_train)
                + len(report.skipped) + len(report.notes))
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
    if report.skipped:
        lines.append(f"  {len(report.skipped)} entr{'y' if len(report.skipped) == 1 else 'ies'} "
                     f"not indexed (training leaves them out):")
        lines += _listing([f"{p}: {why}" for p, why in report.skipped], max_paths)
    if report.notes:
        lines.append(f"  {len(report.notes)} label problem(s) (training warns about them):")
        lines += _listing(report.notes, max_paths)

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
    """The full report (`DatasetReport.to_json`) as an indented JSON file, written atomically.

    Raises OSError when `path` cannot be written; the file it replaces is then left as it was.
    """
    atomic_write_text(path, json.dumps(report.to_json(), indent=1) + "\n")
