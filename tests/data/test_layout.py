"""Known-answer tests for rn50.data.layout on tiny generated trees of real image files."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from rn50.data.layout import IMAGE_EXTENSIONS, DatasetIndex, find_dataset
from rn50.errors import DataError

CLS_LOC = Path("ILSVRC", "Data", "CLS-LOC")

# Written in this (unsorted) order so a test fails if creation order leaks into labels.
KAGGLE_TRAIN = {
    "n02000000": ["n02000000_1.JPEG", "n02000000_2.png"],
    "n01000000": ["n01000000_5.JPEG", "n01000000_10.jpg"],
    "n03000000": ["n03000000_3.JPEG"],
}
KAGGLE_NAMES = {
    "n03000000": "great white shark, white shark, Carcharodon carcharias",
    "n01000000": "tench, Tinca tinca",
    "n02000000": "goldfish, Carassius auratus",
}
# ImageId -> wnid; rows go into the CSV in this shuffled order.
KAGGLE_VAL = {
    "ILSVRC2012_val_00000003": "n03000000",
    "ILSVRC2012_val_00000001": "n02000000",
    "ILSVRC2012_val_00000004": "n01000000",
    "ILSVRC2012_val_00000002": "n02000000",
}


def write_image(path: Path) -> None:
    """A real 8x8 image; the format follows the suffix (JPEG for .JPEG/.jpg, PNG for .png)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpeg": "JPEG", ".jpg": "JPEG", ".png": "PNG"}[path.suffix.lower()]
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path, format=fmt)


def write_mapping(path: Path, names: dict[str, str]) -> None:
    """LOC_synset_mapping.txt: '<wnid> <name>' per line."""
    path.write_text("".join(f"{w} {n}\n" for w, n in names.items()), encoding="utf-8")


def write_solution(path: Path, rows: dict[str, str]) -> None:
    """LOC_val_solution.csv with the Kaggle header and two boxes per row, like the real file."""
    lines = ["ImageId,PredictionString\n"]
    lines += [f"{i},{w} 156 48 272 332 {w} 42 9 322 285\n" for i, w in rows.items()]
    path.write_text("".join(lines), encoding="utf-8")


@pytest.fixture
def kaggle_root(tmp_path: Path) -> Path:
    """A 3-class Kaggle ILSVRC tree with distractors that must not be indexed."""
    root = tmp_path / "imagenet"
    cls_loc = root / CLS_LOC
    for wnid, files in KAGGLE_TRAIN.items():
        for name in files:
            write_image(cls_loc / "train" / wnid / name)
    for image_id in KAGGLE_VAL:
        write_image(cls_loc / "val" / f"{image_id}.JPEG")
    # Distractors: a non-image, hidden files, and a hidden folder (Jupyter leaves these).
    (cls_loc / "train" / "n03000000" / "notes.txt").write_text("not an image")
    write_image(cls_loc / "train" / "n03000000" / ".hidden.JPEG")
    write_image(cls_loc / "train" / ".ipynb_checkpoints" / "x.JPEG")
    (cls_loc / "val" / "notes.txt").write_text("not an image")
    write_image(cls_loc / "val" / ".ILSVRC2012_val_00000009.JPEG")
    write_mapping(root / "LOC_synset_mapping.txt", KAGGLE_NAMES)
    write_solution(root / "LOC_val_solution.csv", KAGGLE_VAL)
    return root


def rel(index_split, base: Path) -> list[tuple[str, int]]:
    """(path relative to base, label) pairs, so expectations read like the tree."""
    return [(Path(p).relative_to(base).as_posix(), label) for p, label in index_split]


def assert_one_line_error(excinfo: pytest.ExceptionInfo[DataError]) -> None:
    """The CLI prints the message as one line."""
    assert "\n" not in str(excinfo.value)
    assert str(excinfo.value).strip()


def test_image_extensions_are_lower_case_suffixes():
    assert {".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff"} == IMAGE_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)


# ---------------------------------------------------------------------------------------------
# Kaggle layout


def test_kaggle_index_known_answer(kaggle_root: Path):
    index = find_dataset(kaggle_root)
    cls_loc = kaggle_root.resolve() / CLS_LOC

    assert index.layout == "kaggle"
    assert index.root == kaggle_root.resolve()
    assert index.classes == ("n01000000", "n02000000", "n03000000")
    assert index.names == (
        "tench, Tinca tinca",
        "goldfish, Carassius auratus",
        "great white shark, white shark, Carcharodon carcharias",
    )
    # Sorted by path: "_10.jpg" < "_5.JPEG"; the .png and upper-case .JPEG are both images.
    assert rel(index.train, cls_loc) == [
        ("train/n01000000/n01000000_10.jpg", 0),
        ("train/n01000000/n01000000_5.JPEG", 0),
        ("train/n02000000/n02000000_1.JPEG", 1),
        ("train/n02000000/n02000000_2.png", 1),
        ("train/n03000000/n03000000_3.JPEG", 2),
    ]
    assert rel(index.val, cls_loc) == [
        ("val/ILSVRC2012_val_00000001.JPEG", 1),
        ("val/ILSVRC2012_val_00000002.JPEG", 1),
        ("val/ILSVRC2012_val_00000003.JPEG", 2),
        ("val/ILSVRC2012_val_00000004.JPEG", 0),
    ]
    assert (len(index.train), len(index.val)) == (5, 4)
    assert all(os.path.isabs(p) for p, _ in index.train + index.val)


@pytest.mark.parametrize(
    "entry", ["", "ILSVRC", "ILSVRC/Data", "ILSVRC/Data/CLS-LOC"], ids=lambda e: e or "root"
)
def test_kaggle_every_entry_point_gives_the_same_index(kaggle_root: Path, entry: str):
    assert find_dataset(kaggle_root / entry) == find_dataset(kaggle_root)


def test_kaggle_accepts_str_and_relative_path(kaggle_root: Path, monkeypatch):
    monkeypatch.chdir(kaggle_root.parent)
    assert find_dataset("imagenet/ILSVRC") == find_dataset(kaggle_root)


def test_kaggle_loc_files_next_to_cls_loc_are_found(kaggle_root: Path):
    # Some re-packaged downloads move the LOC_ files down into ILSVRC/Data.
    data = kaggle_root / "ILSVRC" / "Data"
    for name in ("LOC_synset_mapping.txt", "LOC_val_solution.csv"):
        shutil.move(kaggle_root / name, data / name)
    index = find_dataset(kaggle_root)
    assert index.root == data.resolve()
    assert index.names[0] == "tench, Tinca tinca"
    assert len(index.val) == 4


def test_kaggle_without_mapping_names_are_wnids(kaggle_root: Path):
    (kaggle_root / "LOC_synset_mapping.txt").unlink()
    index = find_dataset(kaggle_root)
    assert index.names == index.classes == ("n01000000", "n02000000", "n03000000")
    assert index.root == kaggle_root.resolve()


def test_kaggle_mapping_may_list_extra_wnids(kaggle_root: Path):
    write_mapping(kaggle_root / "LOC_synset_mapping.txt", {**KAGGLE_NAMES, "n09999999": "extra"})
    assert find_dataset(kaggle_root).classes == ("n01000000", "n02000000", "n03000000")


def test_kaggle_without_csv_or_val_folder_val_is_empty(kaggle_root: Path):
    (kaggle_root / "LOC_val_solution.csv").unlink()
    assert find_dataset(kaggle_root).val == ()
    shutil.rmtree(kaggle_root / CLS_LOC / "val")
    assert find_dataset(kaggle_root).val == ()


def test_kaggle_csv_row_without_image_is_skipped_and_counted(kaggle_root: Path, caplog):
    write_solution(
        kaggle_root / "LOC_val_solution.csv",
        {**KAGGLE_VAL, "ILSVRC2012_val_00000007": "n01000000", "ILSVRC2012_val_00000008": "x"},
    )
    with caplog.at_level(logging.WARNING, logger="rn50.data.layout"):
        index = find_dataset(kaggle_root)
    assert len(index.val) == 4
    assert "2 row(s)" in caplog.text
    assert "ILSVRC2012_val_00000007" in caplog.text


# ---------------------------------------------------------------------------------------------
# ImageFolder layout


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    """A 3-class ImageFolder tree whose classes are created out of order."""
    root = tmp_path / "folder"
    for cls, files in {"dog": ["d1.jpg", "d0.PNG"], "cat": ["c.JPEG"], "ant": ["a.png"]}.items():
        for name in files:
            write_image(root / "train" / cls / name)
    write_image(root / "val" / "dog" / "v_dog.jpg")
    write_image(root / "val" / "ant" / "v_ant.JPEG")
    (root / "val" / "ant" / "readme.md").write_text("not an image")
    write_image(root / "val" / ".cache" / "v.jpg")
    return root


def test_imagefolder_index_known_answer(folder_root: Path):
    index = find_dataset(folder_root)
    base = folder_root.resolve()
    assert index.layout == "imagefolder"
    assert index.root == base
    assert index.classes == index.names == ("ant", "cat", "dog")
    assert rel(index.train, base) == [
        ("train/ant/a.png", 0),
        ("train/cat/c.JPEG", 1),
        ("train/dog/d0.PNG", 2),
        ("train/dog/d1.jpg", 2),
    ]
    assert rel(index.val, base) == [("val/ant/v_ant.JPEG", 0), ("val/dog/v_dog.jpg", 2)]


def test_imagefolder_samples_sorted_by_path_not_by_class(tmp_path: Path):
    # Class "a" sorts before "a-b", but the path "a-b/..." sorts before "a/...".
    for cls in ("a", "a-b"):
        write_image(tmp_path / "train" / cls / "x.jpg")
    index = find_dataset(tmp_path)
    assert index.classes == ("a", "a-b")
    assert rel(index.train, tmp_path.resolve()) == [("train/a-b/x.jpg", 1), ("train/a/x.jpg", 0)]


def test_imagefolder_nested_images_are_indexed(tmp_path: Path):
    write_image(tmp_path / "train" / "cat" / "sub" / "deep.jpg")
    index = find_dataset(tmp_path)
    assert rel(index.train, tmp_path.resolve()) == [("train/cat/sub/deep.jpg", 0)]


def test_imagefolder_names_from_mapping_file(folder_root: Path):
    write_mapping(folder_root / "LOC_synset_mapping.txt",
                  {"dog": "Dog, doggy", "ant": "Ant", "cat": "Cat"})
    assert find_dataset(folder_root).names == ("Ant", "Cat", "Dog, doggy")


def test_imagefolder_missing_val_is_empty(folder_root: Path):
    shutil.rmtree(folder_root / "val")
    index = find_dataset(folder_root)
    assert index.val == ()
    assert len(index.train) == 4


def test_imagefolder_val_class_not_in_train(folder_root: Path):
    write_image(folder_root / "val" / "zebra" / "z.jpg")
    with pytest.raises(DataError, match="'zebra'") as excinfo:
        find_dataset(folder_root)
    assert_one_line_error(excinfo)


def test_imagefolder_flat_val_is_an_error(folder_root: Path):
    shutil.rmtree(folder_root / "val")
    write_image(folder_root / "val" / "loose.jpg")
    with pytest.raises(DataError, match="no class folders") as excinfo:
        find_dataset(folder_root)
    assert_one_line_error(excinfo)


# ---------------------------------------------------------------------------------------------
# Error paths: each is one line that names the problem


def break_val_image_without_row(root: Path) -> str:
    write_image(root / CLS_LOC / "val" / "ILSVRC2012_val_00000005.JPEG")
    write_image(root / CLS_LOC / "val" / "ILSVRC2012_val_00000006.JPEG")
    return r"2 val image\(s\).*'ILSVRC2012_val_00000005.JPEG'"


def break_csv_unknown_wnid(root: Path) -> str:
    write_solution(root / "LOC_val_solution.csv",
                   {**KAGGLE_VAL, "ILSVRC2012_val_00000002": "n04000000"})
    return "'n04000000'"


def break_mapping_missing_wnid(root: Path) -> str:
    names = {w: n for w, n in KAGGLE_NAMES.items() if w != "n02000000"}
    write_mapping(root / "LOC_synset_mapping.txt", names)
    return "no line for class 'n02000000'"


def break_csv_header(root: Path) -> str:
    (root / "LOC_val_solution.csv").write_text("id,label\nILSVRC2012_val_00000001,n01000000\n")
    return "header"


def break_empty_class_folder(root: Path) -> str:
    (root / CLS_LOC / "train" / "n05000000").mkdir()
    return "'n05000000'.*no images"


def break_train_without_classes(root: Path) -> str:
    shutil.rmtree(root / CLS_LOC / "train")
    (root / CLS_LOC / "train").mkdir()
    return "no class folders"


def break_no_train_folder(root: Path) -> str:
    shutil.rmtree(root / CLS_LOC / "train")
    return "no train folder"


@pytest.mark.parametrize(
    "breaker",
    [
        break_val_image_without_row,
        break_csv_unknown_wnid,
        break_mapping_missing_wnid,
        break_csv_header,
        break_empty_class_folder,
        break_train_without_classes,
        break_no_train_folder,
    ],
    ids=lambda f: f.__name__.removeprefix("break_"),
)
def test_kaggle_errors(kaggle_root: Path, breaker):
    pattern = breaker(kaggle_root)
    with pytest.raises(DataError, match=pattern) as excinfo:
        find_dataset(kaggle_root)
    assert_one_line_error(excinfo)


def test_missing_path(tmp_path: Path):
    with pytest.raises(DataError, match="data.data_dir: no such directory") as excinfo:
        find_dataset(tmp_path / "nope")
    assert_one_line_error(excinfo)


def test_path_that_is_a_file(tmp_path: Path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataError, match="no such directory"):
        find_dataset(tmp_path / "f.txt")


def test_empty_dir(tmp_path: Path):
    with pytest.raises(DataError, match="no dataset at .*rn50 data demo DIR") as excinfo:
        find_dataset(tmp_path)
    assert_one_line_error(excinfo)


def test_train_folder_with_only_non_images(tmp_path: Path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images") as excinfo:
        find_dataset(tmp_path)
    assert_one_line_error(excinfo)


def test_error_message_stays_one_line_with_newline_in_path(tmp_path: Path):
    odd = tmp_path / "bad\nname"
    with pytest.raises(DataError) as excinfo:
        find_dataset(odd)
    assert_one_line_error(excinfo)


def test_index_is_frozen(folder_root: Path):
    index = find_dataset(folder_root)
    assert isinstance(index, DatasetIndex)
    with pytest.raises(AttributeError):
        index.layout = "kaggle"  # type: ignore[misc]


# -- labels never shift: names that differ only in case or spaces, foreign skip lists --------


def test_class_names_that_differ_only_in_case_or_spaces(tmp_path):
    for name in ("cat", "Cat ", "dog"):
        write_image(tmp_path / "train" / name / "a.jpg")
    index = find_dataset(tmp_path)
    assert index.classes == ("Cat ", "cat", "dog")
    assert index.notes == (
        f"class folders 'Cat ' and 'cat' in '{tmp_path / 'train'}' differ only in case or "
        f"spaces: they are two classes; merge them if they are one",
    )
    write_image(tmp_path / "val" / "Dog" / "a.jpg")
    with pytest.raises(DataError, match="has no train folder \\(it differs from train class "
                                        "'dog' only in case or spaces\\)"):
        find_dataset(tmp_path)


def test_a_skip_list_from_another_dataset_is_noted(tmp_path):
    from rn50.data.skiplist import apply_skip_list

    for name in ("a", "b"):
        write_image(tmp_path / "train" / name / "1.jpg")
        write_image(tmp_path / "train" / name / "2.jpg")
    index = find_dataset(tmp_path)
    kept = apply_skip_list(index, {"train/a/1.jpg", "train/x/9.JPEG", "train/y/9.JPEG"})
    assert [os.path.relpath(p, tmp_path) for p, _ in kept.train] == [
        "train/a/2.jpg", "train/b/1.jpg", "train/b/2.jpg"
    ]
    assert kept.notes == (
        f"2 of the 3 skip-list entries name no file of {tmp_path} (first: 'train/x/9.JPEG'); "
        f"was data.skip_list written for another dataset?",
    )
