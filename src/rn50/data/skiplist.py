"""The skip list: the files training leaves out (data.skip_list), as `rn50 data check
--skip-list FILE` writes them.

One path a line, relative to the dataset root with "/" separators, so the list stays valid
when the dataset moves; lines starting with "#" are comments. Training reads it through this
module alone, without importing the checker (rn50.data.check).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from rn50.data.layout import DatasetIndex, printable
from rn50.errors import DataError, one_line
from rn50.fileio import atomic_write_text

if TYPE_CHECKING:
    from rn50.data.check.report import DatasetReport

SKIP_LIST_COMMENT = "#"
"""A line starting with this is a comment."""


def write_skip_list(report: DatasetReport, path: str | os.PathLike[str]) -> None:
    """Write `report`'s unreadable files (a DatasetReport's `errors`), one path a line
    relative to the dataset root, after a header of comment lines; written atomically.

    Relative paths keep the list valid when the dataset moves; lines starting with "#" are
    comments. An empty list (header only) is written when nothing is unreadable, so a config
    that names the file keeps working. Raises OSError when `path` cannot be written.
    """
    header = [
        "# rn50 skip list: files the trainer leaves out because they cannot be decoded.",
        "# Written by 'rn50 data check'. One path a line, relative to the dataset root",
        f"# (here {report.root}); lines starting with '#' are comments.",
        f"# {len(report.errors)} file(s).",
    ]
    atomic_write_text(path, "\n".join(header + [r.path for r in report.errors]) + "\n")


def read_skip_list(path: str | os.PathLike[str]) -> set[str]:
    """The paths in a skip list (relative to the dataset root, "/" separators).

    Comment and blank lines are passed over; "\\" separators and a leading "./" are
    tolerated. Raises DataError (one line, with the fix) when the file is missing, unreadable
    or not UTF-8 text.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(
            f"skip list not found: '{path}'; write one with 'rn50 data check DATA_DIR "
            f"--skip-list {path}'"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read skip list '{path}': {one_line(e)}") from None
    skipped = set()
    for line in text.splitlines():
        entry = line.strip()
        if entry and not entry.startswith(SKIP_LIST_COMMENT):
            # Tolerate a list edited on Windows or written as ./train/...
            entry = entry.replace("\\", "/")
            skipped.add(entry[2:] if entry.startswith("./") else entry)
    return skipped


def apply_skip_list(index: DatasetIndex, skipped: set[str]) -> DatasetIndex:
    """`index` without the files in `skipped` (paths relative to its root with "/"
    separators, as `read_skip_list` returns them, or absolute); its classes stay as they are.

    Entries that name no file of the index (a list written for another dataset, or for
    files since removed) are counted in a note of the returned index (DatasetIndex.notes).
    """
    if not skipped:
        return index
    prefix = str(index.root) + os.sep
    used: set[str] = set()

    def keep(path: str) -> bool:
        rel = path[len(prefix):] if path.startswith(prefix) else path
        for name in (rel.replace(os.sep, "/"), path):
            if name in skipped:
                used.add(name)
                return False
        return True

    train = tuple(s for s in index.train if keep(s[0]))
    val = tuple(s for s in index.val if keep(s[0]))
    notes = index.notes
    unmatched = sorted(skipped - used)
    if unmatched:
        notes += (
            f"{len(unmatched)} of the {len(skipped)} skip-list entries name no file of "
            f"{printable(str(index.root))} (first: '{printable(unmatched[0])}'); was "
            f"data.skip_list written for another dataset?",
        )
    return dataclasses.replace(index, train=train, val=val, notes=notes)
