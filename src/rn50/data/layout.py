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
import errno
import logging
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rn50.errors import DataError
from rn50.paths import is_link_loop, link_loop

log = logging.getLogger(__name__)

# A character no log line, skip list or report line can hold (C0 controls and DEL).
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")

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
    skipped: tuple[tuple[str, str], ...] = ()
    """(absolute path, why) of each entry of the tree that was not indexed although it sits
    where a class folder or an image belongs: a symbolic link loop, a broken link, a folder
    that cannot be listed, an image name on a FIFO, socket or device, a name that is not
    UTF-8 text, an image where class folders are expected; sorted by path."""
    notes: tuple[str, ...] = ()
    """one line each: labels the index had to choose (the file and line of a
    LOC_val_solution.csv row whose boxes name different synsets, or that repeats an ImageId
    with another class), class folders whose names differ only in case or spaces, skip-list
    entries that name no file of the dataset."""


def find_dataset(path: str | os.PathLike[str]) -> DatasetIndex:
    """Detect the layout of the dataset at `path` and index it.

    Raises DataError (one line: the problem and the fix) when nothing usable is there.
    """
    given = Path(path).expanduser()
    if not given.is_dir():
        loop = link_loop(given, "data.data_dir")
        if loop:
            raise DataError(loop)
        raise DataError(
            f"data.data_dir: no such directory {_q(given)}; set data.data_dir to your ImageNet "
            f"folder (or run 'rn50 data demo {_show(given)}' for the small demo dataset)"
        )
    # resolve() so every entry point of one dataset (root, root/ILSVRC, ...) gives equal paths.
    here = given.resolve()
    cls_loc = _find_cls_loc(here)
    if cls_loc is not None:
        return _index_kaggle(cls_loc, _Walk())
    if (here / "train").is_dir():
        return _index_imagefolder(here, _Walk())
    _refuse_link_loops([*_cls_loc_candidates(here), here / "train"])
    raise DataError(
        f"no dataset at {_q(here)}: expected an ImageFolder root (train/<class>/, val/<class>/) "
        f"or the Kaggle ILSVRC layout ({MAPPING_FILE}, ILSVRC/Data/CLS-LOC/); "
        f"run 'rn50 data demo DIR' to create a small one"
    )


# ---------------------------------------------------------------------------------------------
# Kaggle ILSVRC layout


def _find_cls_loc(here: Path) -> Path | None:
    """The CLS-LOC folder when `here` is the Kaggle root or one of the folders on the way to it."""
    for candidate in _cls_loc_candidates(here):
        if candidate.name == "CLS-LOC" and candidate.is_dir():
            return candidate
    return None


def _cls_loc_candidates(here: Path) -> tuple[Path, ...]:
    """Where a Kaggle layout's CLS-LOC folder may be, seen from `here`."""
    return (here, here / "CLS-LOC", here / "Data" / "CLS-LOC", here / "ILSVRC" / "Data" / "CLS-LOC")


def _refuse_link_loops(paths) -> None:
    """DataError naming the first of `paths` (a folder of a dataset layout) that is, or is
    reached through, a symbolic link loop: else the error would say the folder is missing."""
    for path in paths:
        if is_link_loop(path):
            raise DataError(
                f"{_q(path)} is a symbolic link loop (it, or a link on its way, leads back to "
                f"itself, never to a folder); make it the dataset folder it stands for"
            )


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


def _index_kaggle(cls_loc: Path, walk: _Walk) -> DatasetIndex:
    """Index <root>/ILSVRC/Data/CLS-LOC with labels from the LOC_ files."""
    mapping = _find_up(cls_loc, MAPPING_FILE)
    solution = _find_up(cls_loc, VAL_SOLUTION_FILE)
    train_dir = cls_loc / "train"
    if not train_dir.is_dir():
        _refuse_link_loops([train_dir])
        raise DataError(
            f"no train folder in {_q(cls_loc)}: the Kaggle layout needs "
            f"CLS-LOC/train/<wnid>/*.JPEG; extract the train images there"
        )
    classes, train = _index_class_tree(train_dir, walk)
    names = _read_names(mapping, classes) if mapping is not None else classes
    val_dir = cls_loc / "val"
    val: tuple[Sample, ...] = ()
    if val_dir.is_dir() and solution is not None:
        val = _index_flat_val(val_dir, solution, classes, walk)
    return walk.index(
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


def _read_val_solution(solution: Path, walk: _Walk) -> dict[str, str]:
    """ImageId -> wnid from LOC_val_solution.csv (the first token of PredictionString).

    A row is "<wnid> x_min y_min x_max y_max" per box. When its boxes name different synsets,
    or an ImageId comes again with another class, the first wins and a note names the file
    and line: the image's label is then a guess.
    """
    labels: dict[str, str] = {}
    first_line: dict[str, int] = {}
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
            image_id = _strip_image_suffix(row[0].strip())
            wnids = list(dict.fromkeys(tokens[0::5]))  # a box is 5 tokens: wnid and 4 numbers
            if len(wnids) > 1:
                walk.note(
                    f"{_q(solution)} line {line_no}: the boxes of {_show(image_id)} name "
                    f"{len(wnids)} synsets ({', '.join(map(_show, wnids))}); it is labelled "
                    f"{_show(wnids[0])}, the first"
                )
            if image_id in labels:
                if labels[image_id] != wnids[0]:
                    walk.note(
                        f"{_q(solution)} line {line_no}: {_show(image_id)} again, as "
                        f"{_show(wnids[0])}; it keeps {_show(labels[image_id])} from line "
                        f"{first_line[image_id]}"
                    )
                continue
            labels[image_id], first_line[image_id] = wnids[0], line_no
    return labels


def _strip_image_suffix(image_id: str) -> str:
    """ImageIds have no extension; tolerate a CSV whose ids carry one."""
    stem, suffix = os.path.splitext(image_id)
    return stem if suffix.lower() in IMAGE_EXTENSIONS else image_id


def _index_flat_val(
    val_dir: Path, solution: Path, classes: tuple[str, ...], walk: _Walk
) -> tuple[Sample, ...]:
    """Label the flat val/ folder from the CSV, matching ImageId to the file stem."""
    wnid_of = _read_val_solution(solution, walk)
    label_of = {c: i for i, c in enumerate(classes)}
    files = sorted(walk.images_in(val_dir, flat=True))
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
            f"has no train folder{_near(unknown[0], classes)}; add its train folder or remove "
            f"those val images"
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


def _index_imagefolder(root: Path, walk: _Walk) -> DatasetIndex:
    """Index <root>/train/<class>/* and <root>/val/<class>/*; class names from folder names."""
    classes, train = _index_class_tree(root / "train", walk)
    mapping = root / MAPPING_FILE
    names = _read_names(mapping, classes) if mapping.is_file() else classes
    val_dir = root / "val"
    val = _index_class_val(val_dir, classes, walk) if val_dir.is_dir() else ()
    return walk.index(
        root=root, layout="imagefolder", classes=classes, names=names, train=train, val=val
    )


def _index_class_val(val_dir: Path, classes: tuple[str, ...], walk: _Walk) -> tuple[Sample, ...]:
    """val/<class>/* labelled with the train class order; val may hold a subset of classes."""
    folders, files = walk.class_folders(val_dir)
    if not folders and files:
        # A flat val folder has no labels here; silently training without validation would hide it.
        raise DataError(
            f"{_q(val_dir)} holds images but no class folders; sort them into val/<class>/ or "
            f"use the Kaggle layout with {VAL_SOLUTION_FILE}"
        )
    walk.misplaced(files)
    label_of = {c: i for i, c in enumerate(classes)}
    unknown = sorted(folders.keys() - label_of.keys())
    if unknown:
        raise DataError(
            f"val class folder {_q(unknown[0])}{_more(unknown)} in {_q(val_dir)} has no train "
            f"folder{_near(unknown[0], classes)}; add train/{_show(unknown[0])}/ or remove it "
            f"from val/"
        )
    # A val class folder that cannot be listed is skipped (and named): its class then has no
    # val images, which training warns about; the labels of the others do not move.
    samples = [(p, label_of[c]) for c, d in folders.items() for p in walk.images_in(d)]
    return tuple(sorted(samples))


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _index_class_tree(train_dir: Path, walk: _Walk) -> tuple[tuple[str, ...], tuple[Sample, ...]]:
    """Sorted class folder names of train/ and every image under them, labelled by position."""
    folders, files = walk.class_folders(train_dir)
    if not folders:
        raise DataError(
            f"no class folders in {_q(train_dir)}: expected train/<class>/<image>; "
            f"extract the train images there"
        )
    walk.misplaced(files)
    classes = tuple(sorted(folders))
    samples: list[Sample] = []
    empty: list[str] = []
    for label, name in enumerate(classes):
        # A train class folder is a label: one that cannot be listed would shift every
        # label after it, so it stops the index instead of being skipped.
        images = list(walk.images_in(folders[name], must_list=True))
        if not images:
            empty.append(name)
        samples.extend((p, label) for p in images)
    if empty:
        # An empty class would still get an output unit that nothing ever trains.
        raise DataError(
            f"train class folder {_q(empty[0])}{_more(empty)} in {_q(train_dir)} holds no images "
            f"({' '.join(sorted(IMAGE_EXTENSIONS))}); add its images or remove the folder"
        )
    _note_near_names(classes, train_dir, walk)
    # Sort the whole list, not per class: "a-b/" sorts before "a/" though class "a" comes first.
    return classes, tuple(sorted(samples))


def _fold(name: str) -> str:
    """A class name as a careless eye reads it: case and surrounding spaces ignored."""
    return name.strip().casefold()


def _near(name: str, classes: tuple[str, ...]) -> str:
    """' (it differs from train class 'x' only in case or spaces)' when one is that close."""
    close = [c for c in classes if _fold(c) == _fold(name)]
    return f" (it differs from train class {_q(close[0])} only in case or spaces)" if close else ""


def _note_near_names(classes: tuple[str, ...], folder: Path, walk: _Walk) -> None:
    """Class folders whose names differ only in case or surrounding spaces ('cat', 'Cat ')
    are two classes here, and one on a case-insensitive file system: a note for each."""
    seen: dict[str, str] = {}
    for c in classes:
        if _fold(c) in seen:
            walk.note(
                f"class folders {_q(seen[_fold(c)])} and {_q(c)} in {_q(folder)} differ only in "
                f"case or spaces: they are two classes; merge them if they are one"
            )
        seen.setdefault(_fold(c), c)


class _Walk:
    """Lists the folders of one dataset, setting aside (with the reason) every entry that
    cannot be used where a class folder or an image belongs, and collecting notes; never
    raises OSError for one entry (a folder that must be listed raises DataError)."""

    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []
        self.notes: list[str] = []

    def index(self, **fields) -> DatasetIndex:
        """The DatasetIndex of `fields`, with what this walk set aside and noted."""
        return DatasetIndex(
            **fields, skipped=tuple(sorted(set(self.skipped))), notes=tuple(self.notes)
        )

    def note(self, message: str) -> None:
        self.notes.append(message)

    def skip(self, path: str, why: str) -> None:
        self.skipped.append((path, why))

    def entries(self, folder: str | Path, must_list: bool = False) -> list[os.DirEntry]:
        """The non-hidden entries of `folder`; [] (and the folder set aside) when it cannot be
        listed, or DataError when `must_list`."""
        try:
            with os.scandir(folder) as it:
                return [e for e in it if not e.name.startswith(".")]
        except OSError as e:
            why = f"the folder cannot be listed ({e.strerror or e})"
            if must_list:
                raise DataError(
                    f"{_q(folder)}: {why}; fix its permissions or move it out of the dataset"
                ) from None
            self.skip(str(folder), why)
            return []

    def kind(self, e: os.DirEntry) -> str:
        """"dir", "file" (regular, links followed), or why `e` is neither."""
        try:
            if e.is_file(follow_symlinks=True):
                return "file"
            if e.is_dir(follow_symlinks=True):
                return "dir"
        except OSError as err:  # a link loop (ELOOP), a name too long, an I/O error
            if err.errno == errno.ELOOP:
                return "a symbolic link loop"
            return f"cannot be read ({err.strerror or err})"
        try:
            mode = os.stat(e.path).st_mode
        except FileNotFoundError:
            return "a broken symbolic link (its target does not exist)"
        except OSError as err:
            return f"cannot be read ({err.strerror or err})"
        if stat.S_ISFIFO(mode):
            return "a FIFO (named pipe), not a file"
        if stat.S_ISSOCK(mode):
            return "a socket, not a file"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            return "a device, not a file"
        return "not a regular file"

    def usable_name(self, e: os.DirEntry) -> bool:  # called for every file: kept cheap
        """False (and `e` set aside) for a name that is not UTF-8 text or holds a control
        character: logs, skip lists and reports could not name it, one a line."""
        try:
            e.name.encode("utf-8")
        except UnicodeEncodeError:
            self.skip(e.path, "its name is not UTF-8 text; rename it")
            return False
        if _CONTROL_CHARACTER.search(e.name):
            self.skip(e.path, "its name holds a control character (a newline, a tab); rename it")
            return False
        return True

    def class_folders(self, folder: Path) -> tuple[dict[str, str], list[str]]:
        """({name: path} of the non-hidden subfolders of `folder` (symlinked folders count:
        users link subsets), [image files found there instead]); other entries that cannot
        be used are set aside. Raises DataError when `folder` itself cannot be listed."""
        folders: dict[str, str] = {}
        files: list[str] = []
        for e in self.entries(folder, must_list=True):
            kind = self.kind(e)
            if kind == "dir":
                if self.usable_name(e):
                    folders[e.name] = e.path
            elif kind == "file":
                if _is_image_name(e.name):
                    files.append(e.path)
            elif kind.startswith("a symbolic link") or _is_image_name(e.name):
                self.skip(e.path, kind)
        return folders, files

    def misplaced(self, files: list[str]) -> None:
        """Images lying where class folders are expected: they have no class."""
        for path in files:
            self.skip(path, "an image where class folders are expected (it has no class)")

    def images_in(
        self, folder: str | Path, must_list: bool = False, flat: bool = False
    ) -> Iterator[str]:
        """Paths of non-hidden image files under `folder` and its subfolders; `flat`: the
        subfolders are set aside instead (the Kaggle val folder holds files only).

        Symlinked subfolders are not entered (and are set aside), so a link loop cannot
        recurse forever.
        """
        for e in self.entries(folder, must_list):
            kind = self.kind(e)
            if kind == "file":
                if _is_image_name(e.name) and self.usable_name(e):
                    yield e.path
            elif kind == "dir":
                if flat:
                    self.skip(e.path, "a folder in the flat val/ folder (not indexed: the "
                                      f"Kaggle layout labels val images from {VAL_SOLUTION_FILE})")
                elif e.is_symlink():
                    self.skip(e.path, "a symbolic link to a folder inside a class folder (not "
                                      "followed, so a link loop cannot recurse forever)")
                elif self.usable_name(e):
                    yield from self.images_in(e.path)
            elif kind.startswith("a symbolic link") or _is_image_name(e.name):
                self.skip(e.path, kind)


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def printable(path: str) -> str:
    """`path` as one line of text: bytes that are not UTF-8 as \\xNN, control characters
    escaped (a newline in a file name must not split a log line)."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def index_warnings(index: DatasetIndex, limit: int = 10) -> list[str]:
    """The lines a command that reads `index` warns with: each entry set aside (up to
    `limit`, then a count) and each note, naming the paths."""
    lines = [f"not indexed: {printable(p)}: {why}" for p, why in index.skipped[:limit]]
    if len(index.skipped) > limit:
        lines.append(f"... and {len(index.skipped) - limit} more entries not indexed "
                     f"('rn50 data check {printable(str(index.root))}' lists them all)")
    lines += list(index.notes[:limit])
    if len(index.notes) > limit:
        lines.append(f"... and {len(index.notes) - limit} more notes ('rn50 data check "
                     f"{printable(str(index.root))}' lists them all)")
    return lines


def classes_without_val(index: DatasetIndex) -> list[str]:
    """Classes with no indexed val image (their val accuracy cannot be measured); [] when
    the dataset has no val split at all."""
    if not index.val:
        return []
    have = {label for _, label in index.val}
    return [c for i, c in enumerate(index.classes) if i not in have]


def _show(value: object) -> str:
    """`value` as text that cannot break the one-line error message."""
    return printable(str(value))


def _q(value: object) -> str:
    """`value` quoted for an error message."""
    return f"'{_show(value)}'"


def _more(items: list[str]) -> str:
    """' (and N more)' after the first of several problems, so the count is not lost."""
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""
