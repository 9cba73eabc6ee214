"""Find a dataset on disk and index it: class ids, class names and (file, label) lists.

Two layouts are understood (see DESIGN.md, "Formats users bring"):

- the Kaggle "ImageNet Object Localization Challenge" layout::

      <root>/LOC_synset_mapping.txt
      <root>/LOC_val_solution.csv
      <root>/ILSVRC/Data/CLS-LOC/train/<wnid>/<wnid>_<n>.JPEG
      <root>/ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_XXXXXXXX.JPEG   (flat)

- ImageFolder: ``<root>/train/<class>/*`` and ``<root>/val/<class>/*``.

Labels are positions in the sorted list of train class folders, which for ImageNet equals
torchvision's class order, so weights are interchangeable with torchvision's ``resnet50``.
The tree is walked with ``os.scandir``: on 1.28M files it is several times faster than
``Path.rglob`` because it reuses the file type the directory listing already returned.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rn50.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
)
"""Lower-case file suffixes indexed as images; matched case-insensitively (ImageNet uses .JPEG)."""

MAPPING_FILE = "LOC_synset_mapping.txt"
VAL_SOLUTION_FILE = "LOC_val_solution.csv"
VAL_SOLUTION_HEADER = ["ImageId", "PredictionString"]

# How many folders above CLS-LOC may hold the LOC_ files: CLS-LOC -> Data -> ILSVRC -> <root>.
_LOC_FILE_MAX_UP = 3

Sample = tuple[str, int]


@dataclass(frozen=True)
class DatasetIndex:
    """Everything later stages need to know about a dataset, without opening an image."""

    root: Path
    """the dataset root as resolved (absolute)."""
    layout: str
    """"kaggle" or "imagefolder"."""
    classes: tuple[str, ...]
    """class ids (wnids or folder names), sorted; position = label."""
    names: tuple[str, ...]
    """human-readable name per class, same order as `classes`."""
    train: tuple[Sample, ...]
    """(absolute file path, label), sorted by path."""
    val: tuple[Sample, ...]
    """(absolute file path, label), sorted by path; empty when there is no labelled val set."""


def find_dataset(path: str | os.PathLike[str]) -> DatasetIndex:
    """Detect the layout of the dataset at `path` and index it.

    Raises DataError (one line: the problem and the fix) when nothing usable is there.
    """
    given = Path(path).expanduser()
    if not given.is_dir():
        raise DataError(
            f"data.data_dir: no such directory {_q(given)}; set data.data_dir to your ImageNet "
            f"folder (or run 'rn50 data demo {_show(given)}' for the small demo dataset)"
        )
    # resolve() so every entry point of one dataset (root, root/ILSVRC, ...) gives equal paths.
    here = given.resolve()
    cls_loc = _find_cls_loc(here)
    if cls_loc is not None:
        return _index_kaggle(cls_loc)
    if (here / "train").is_dir():
        return _index_imagefolder(here)
    raise DataError(
        f"no dataset at {_q(here)}: expected an ImageFolder root (train/<class>/, val/<class>/) "
        f"or the Kaggle ILSVRC layout ({MAPPING_FILE}, ILSVRC/Data/CLS-LOC/); "
        f"run 'rn50 data demo DIR' to create a small one"
    )


# ---------------------------------------------------------------------------------------------
# Kaggle ILSVRC layout


def _find_cls_loc(here: Path) -> Path | None:
    """The CLS-LOC folder when `here` is the Kaggle root or one of the folders on the way to it."""
    for candidate in (here, here / "CLS-LOC", here / "Data" / "CLS-LOC",
                      here / "ILSVRC" / "Data" / "CLS-LOC"):
        if candidate.name == "CLS-LOC" and candidate.is_dir():
            return candidate
    return None


def _find_up(start: Path, name: str) -> Path | None:
    """`name` in `start` or in one of the folders above it, nearest first."""
    for folder in [start, *list(start.parents)[:_LOC_FILE_MAX_UP]]:
        if (folder / name).is_file():
            return folder / name
    return None


def _kaggle_root(cls_loc: Path, mapping: Path | None, solution: Path | None) -> Path:
    """The folder the user thinks of as the dataset: where the LOC_ files are, else <root>."""
    for found in (mapping, solution):
        if found is not None:
            return found.parent
    data, ilsvrc = cls_loc.parent, cls_loc.parent.parent
    if data.name == "Data" and ilsvrc.name == "ILSVRC":
        return ilsvrc.parent
    return cls_loc


def _index_kaggle(cls_loc: Path) -> DatasetIndex:
    """Index <root>/ILSVRC/Data/CLS-LOC with labels from the LOC_ files."""
    mapping = _find_up(cls_loc, MAPPING_FILE)
    solution = _find_up(cls_loc, VAL_SOLUTION_FILE)
    train_dir = cls_loc / "train"
    if not train_dir.is_dir():
        raise DataError(
            f"no train folder in {_q(cls_loc)}: the Kaggle layout needs "
            f"CLS-LOC/train/<wnid>/*.JPEG; extract the train images there"
        )
    classes, train = _index_class_tree(train_dir)
    names = _read_names(mapping, classes) if mapping is not None else classes
    val_dir = cls_loc / "val"
    val: tuple[Sample, ...] = ()
    if val_dir.is_dir() and solution is not None:
        val = _index_flat_val(val_dir, solution, classes)
    return DatasetIndex(
        root=_kaggle_root(cls_loc, mapping, solution),
        layout="kaggle",
        classes=classes,
        names=names,
        train=train,
        val=val,
    )


def _read_names(mapping: Path, classes: tuple[str, ...]) -> tuple[str, ...]:
    """Class names from LOC_synset_mapping.txt ("n01440764 tench, Tinca tinca"), in class order."""
    by_wnid: dict[str, str] = {}
    # utf-8-sig: a byte-order mark left by a Windows editor must not become part of a wnid.
    with open(mapping, encoding="utf-8-sig") as f:
        for line in f:
            parts = line.strip().split(maxsplit=1)
            if parts:
                # A line with a wnid and no name still names the class: by its wnid.
                by_wnid.setdefault(parts[0], parts[-1])
    missing = [c for c in classes if c not in by_wnid]
    if missing:
        raise DataError(
            f"{_q(mapping)} has no line for class {_q(missing[0])}{_more(missing)}; "
            f"use the {MAPPING_FILE} that matches the train folders, or delete it to name "
            f"classes by folder"
        )
    return tuple(by_wnid[c] for c in classes)


def _read_val_solution(solution: Path) -> dict[str, str]:
    """ImageId -> wnid from LOC_val_solution.csv (the first token of PredictionString)."""
    labels: dict[str, str] = {}
    with open(solution, encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f)
        header = [cell.strip() for cell in next(rows, [])]
        if header != VAL_SOLUTION_HEADER:
            raise DataError(
                f"{_q(solution)} does not start with the header 'ImageId,PredictionString'; "
                f"use the {VAL_SOLUTION_FILE} from the Kaggle download"
            )
        for line_no, row in enumerate(rows, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            tokens = row[1].split() if len(row) >= 2 else []
            if not tokens:
                raise DataError(
                    f"{_q(solution)} line {line_no} has no class in PredictionString; "
                    f"use the {VAL_SOLUTION_FILE} from the Kaggle download"
                )
            labels[_strip_image_suffix(row[0].strip())] = tokens[0]
    return labels


def _strip_image_suffix(image_id: str) -> str:
    """ImageIds have no extension; tolerate a CSV whose ids carry one."""
    stem, suffix = os.path.splitext(image_id)
    return stem if suffix.lower() in IMAGE_EXTENSIONS else image_id


def _index_flat_val(val_dir: Path, solution: Path, classes: tuple[str, ...]) -> tuple[Sample, ...]:
    """Label the flat val/ folder from the CSV, matching ImageId to the file stem."""
    wnid_of = _read_val_solution(solution)
    label_of = {c: i for i, c in enumerate(classes)}
    files = sorted(_images_in(val_dir, recursive=False))
    unlisted = [p for p in files if _stem(p) not in wnid_of]
    if unlisted:
        raise DataError(
            f"{len(unlisted)} val image(s) have no row in {_q(solution)} (first: "
            f"{_q(os.path.basename(unlisted[0]))}); use the {VAL_SOLUTION_FILE} that came with "
            f"this val folder"
        )
    unknown = sorted({wnid_of[_stem(p)] for p in files} - label_of.keys())
    if unknown:
        raise DataError(
            f"{_q(solution)} labels val images with class {_q(unknown[0])}{_more(unknown)} that "
            f"has no train folder; add its train folder or remove those val images"
        )
    _warn_missing_val_files(solution, wnid_of.keys() - {_stem(p) for p in files})
    return tuple((p, label_of[wnid_of[_stem(p)]]) for p in files)


def _warn_missing_val_files(solution: Path, missing: set[str]) -> None:
    """CSV rows without an image are skipped, not fatal: a pruned val folder is a valid choice."""
    if missing:
        log.warning(
            "%d row(s) of %s have no image in val/ and were skipped (first: %s)",
            len(missing), solution, min(missing),
        )


def _stem(path: str) -> str:
    """The file name without its extension: what an ImageId names."""
    return os.path.splitext(os.path.basename(path))[0]


# ---------------------------------------------------------------------------------------------
# ImageFolder layout


def _index_imagefolder(root: Path) -> DatasetIndex:
    """Index <root>/train/<class>/* and <root>/val/<class>/*; class names from folder names."""
    classes, train = _index_class_tree(root / "train")
    mapping = root / MAPPING_FILE
    names = _read_names(mapping, classes) if mapping.is_file() else classes
    val_dir = root / "val"
    val = _index_class_val(val_dir, classes) if val_dir.is_dir() else ()
    return DatasetIndex(
        root=root, layout="imagefolder", classes=classes, names=names, train=train, val=val
    )


def _index_class_val(val_dir: Path, classes: tuple[str, ...]) -> tuple[Sample, ...]:
    """val/<class>/* labelled with the train class order; val may hold a subset of classes."""
    folders = _class_folders(val_dir)
    if not folders and next(iter(_images_in(val_dir, recursive=False)), None) is not None:
        # A flat val folder has no labels here; silently training without validation would hide it.
        raise DataError(
            f"{_q(val_dir)} holds images but no class folders; sort them into val/<class>/ or "
            f"use the Kaggle layout with {VAL_SOLUTION_FILE}"
        )
    label_of = {c: i for i, c in enumerate(classes)}
    unknown = sorted(folders.keys() - label_of.keys())
    if unknown:
        raise DataError(
            f"val class folder {_q(unknown[0])}{_more(unknown)} in {_q(val_dir)} has no train "
            f"folder; add train/{_show(unknown[0])}/ or remove it from val/"
        )
    samples = [(p, label_of[c]) for c, d in folders.items() for p in _images_in(d)]
    return tuple(sorted(samples))


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _index_class_tree(train_dir: Path) -> tuple[tuple[str, ...], tuple[Sample, ...]]:
    """Sorted class folder names of train/ and every image under them, labelled by position."""
    folders = _class_folders(train_dir)
    if not folders:
        raise DataError(
            f"no class folders in {_q(train_dir)}: expected train/<class>/<image>; "
            f"extract the train images there"
        )
    classes = tuple(sorted(folders))
    samples: list[Sample] = []
    empty: list[str] = []
    for label, name in enumerate(classes):
        images = list(_images_in(folders[name]))
        if not images:
            empty.append(name)
        samples.extend((p, label) for p in images)
    if empty:
        # An empty class would still get an output unit that nothing ever trains.
        raise DataError(
            f"train class folder {_q(empty[0])}{_more(empty)} in {_q(train_dir)} holds no images "
            f"({' '.join(sorted(IMAGE_EXTENSIONS))}); add its images or remove the folder"
        )
    # Sort the whole list, not per class: "a-b/" sorts before "a/" though class "a" comes first.
    return classes, tuple(sorted(samples))


def _class_folders(folder: Path) -> dict[str, str]:
    """Non-hidden subfolders of `folder` by name (symlinked folders count: users link subsets)."""
    with os.scandir(folder) as entries:
        return {
            e.name: e.path
            for e in entries
            if not e.name.startswith(".") and e.is_dir(follow_symlinks=True)
        }


def _images_in(folder: str | Path, recursive: bool = True) -> Iterator[str]:
    """Paths of non-hidden image files under `folder`; subfolders too when `recursive`.

    Symlinked subfolders are not entered, so a link loop cannot recurse forever.
    """
    with os.scandir(folder) as entries:
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_file(follow_symlinks=True):
                if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
                    yield e.path
            elif recursive and e.is_dir(follow_symlinks=False):
                yield from _images_in(e.path)


def _show(value: object) -> str:
    """`value` as text that cannot break the one-line error message."""
    return str(value).replace("\r", "\\r").replace("\n", "\\n")


def _q(value: object) -> str:
    """`value` quoted for an error message."""
    return f"'{_show(value)}'"


def _more(items: list[str]) -> str:
    """' (and N more)' after the first of several problems, so the count is not lost."""
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""
