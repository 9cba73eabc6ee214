"""The fixed copy of a dataset (`rn50 data check --fix-to DIR`): the same layout, files with
warnings re-encoded as RGB, unreadable ones left out, every other file hard-linked."""

from __future__ import annotations

import os
import secrets
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rn50.data.check.report import DatasetReport, _Progress
from rn50.data.check.scan import _truncated_images_refused
from rn50.data.image import load_rgb
from rn50.data.layout import IMAGE_EXTENSIONS, DatasetIndex
from rn50.errors import DataError

# The format a re-encoded file is written in, by its (kept) suffix, so name and content agree.
_FORMAT_OF_SUFFIX = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP",
    ".tif": "TIFF", ".tiff": "TIFF",
}
_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}


@dataclass(frozen=True)
class FixSummary:
    """What `write_fixed_copy` did, in files."""

    out_dir: str
    """the copy's folder, resolved (absolute)."""
    reencoded: int
    """files with warnings, written again as RGB."""
    linked: int
    """clean files hard-linked to the original."""
    copied: int
    """clean files copied (the filesystem could not link them)."""
    left_out: int
    """unreadable files, not in the copy."""


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
