"""Known-answer tests for rn50.data.check, rn50.data.skiplist and `rn50 data check`.

Small datasets in both layouts are seeded with one file of every bad kind, so every count in a
report is known exactly.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from rn50.cli import main
from rn50.data.check import report as doctor
from rn50.data.check.fix import write_fixed_copy
from rn50.data.check.scan import check_dataset, check_file
from rn50.data.demo import write_demo_dataset
from rn50.data.image import load_rgb, to_rgb
from rn50.data.layout import DatasetIndex, find_dataset
from rn50.data.skiplist import apply_skip_list, read_skip_list, write_skip_list
from rn50.errors import DataError
from tests.conftest import write_digit_tree

CLS_LOC = "ILSVRC/Data/CLS-LOC"
VALUE_16BIT = 128 * 257  # a 16-bit sample that is exactly 128 once scaled to 8 bits


# ---------------------------------------------------------------------------------------------
# Bad file contents


def gradient(size: int = 24) -> Image.Image:
    """A deterministic RGB image with distinct pixels (so no planted file equals another)."""
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x * 10, y * 10, (x + y) * 5], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def image_16bit() -> Image.Image:
    img = Image.fromarray(np.full((16, 16), VALUE_16BIT, dtype=np.uint16))
    assert img.mode == "I;16"
    return img


# A different size for each, so no two planted files are equal even after the fixed copy
# re-encodes them (a CMYK and an RGB image of the same pixels become the same JPEG).
REAL_JPEG = encode(gradient(64), "JPEG")
# Cut in the compressed pixel data (the header is intact): Image.open succeeds, only a full
# decode finds it. Cut in the header: Image.open itself fails.
TRUNCATED_JPEG = REAL_JPEG[: len(REAL_JPEG) // 2]
CUT_HEADER_JPEG = REAL_JPEG[:100]
HTML_PAGE = b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n"
PNG_RGB = encode(gradient(20), "PNG")
CMYK_JPEG = encode(gradient(21).convert("CMYK"), "JPEG")
GRAY_JPEG = encode(gradient(22).convert("L"), "JPEG")
PNG_16BIT = encode(image_16bit(), "PNG")
PNG_RGBA = encode(gradient(23).convert("RGBA"), "PNG")
PNG_PALETTE = encode(gradient(25).convert("P"), "PNG")


@pytest.mark.parametrize(
    "name, data, ok, problems, fmt, mode",
    [
        ("good.JPEG", REAL_JPEG, True, (), "JPEG", "RGB"),
        ("good.png", PNG_RGB, True, (), "PNG", "RGB"),
        ("truncated.JPEG", TRUNCATED_JPEG, False, ("unreadable",), None, None),
        ("cut_header.JPEG", CUT_HEADER_JPEG, False, ("unreadable",), None, None),
        ("empty.JPEG", b"", False, ("unreadable",), None, None),
        ("page.JPEG", HTML_PAGE, False, ("unreadable",), None, None),
        ("png.JPEG", PNG_RGB, True, ("not_jpeg",), "PNG", "RGB"),
        ("cmyk.JPEG", CMYK_JPEG, True, ("cmyk",), "JPEG", "CMYK"),
        ("gray.jpg", GRAY_JPEG, True, ("grayscale",), "JPEG", "L"),
        ("deep.png", PNG_16BIT, True, ("16bit",), "PNG", "I;16"),
        ("rgba.png", PNG_RGBA, True, ("alpha",), "PNG", "RGBA"),
        ("palette.png", PNG_PALETTE, True, ("palette",), "PNG", "P"),
        ("palette.JPEG", PNG_PALETTE, True, ("not_jpeg", "palette"), "PNG", "P"),
    ],
)
def test_check_file_names_each_kind(tmp_path, name, data, ok, problems, fmt, mode):
    path = tmp_path / name
    path.write_bytes(data)
    report = check_file(path)
    assert (report.ok, report.problems, report.format, report.mode) == (ok, problems, fmt, mode)
    assert report.problem == (problems[0] if problems else None)
    assert report.nbytes == len(data)
    assert report.path == str(path)


def test_check_file_details_and_hash(tmp_path):
    (tmp_path / "a.JPEG").write_bytes(REAL_JPEG)
    (tmp_path / "page.JPEG").write_bytes(HTML_PAGE)
    (tmp_path / "empty.JPEG").write_bytes(b"")
    (tmp_path / "cut.JPEG").write_bytes(TRUNCATED_JPEG)
    good = check_file(tmp_path / "a.JPEG")
    assert good.size == (64, 64)
    assert good.sha1 == hashlib.sha1(REAL_JPEG).hexdigest()
    assert check_file(tmp_path / "page.JPEG").detail == "not an image (HTML or XML text)"
    assert check_file(tmp_path / "empty.JPEG").detail == "empty file (0 bytes)"
    assert check_file(tmp_path / "cut.JPEG").detail.startswith("cannot decode: ")
    missing = check_file(tmp_path / "missing.JPEG")
    assert (missing.ok, missing.problem) == (False, "unreadable")
    assert missing.detail.startswith("cannot read the file")


def test_truncation_found_even_when_pillow_is_told_to_load_truncated_images(tmp_path, monkeypatch):
    # A trainer may turn this on to survive bad files; the check must not inherit it.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = tmp_path / "cut.JPEG"
    path.write_bytes(TRUNCATED_JPEG)
    with Image.open(path) as img:
        img.load()  # what a check that trusted the flag would have seen: no error
    report = check_file(path)
    assert report.problem == "unreadable" and "truncated" in report.detail
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored afterwards


# ---------------------------------------------------------------------------------------------
# Seeded datasets in both layouts


@dataclass
class Seeded:
    """A dataset with planted files and what a check of it must find."""

    root: Path
    layout: str
    missing_val: list[str]
    train_class: str  # where the bad train files are planted
    val_class: str  # the label of the planted val files
    unreadable: set[str]  # relative paths
    warnings: dict[str, set[str]]
    duplicates: list[tuple[tuple[str, str], tuple[str, str]]]  # ((path, split), (path, split))
    base_train: dict[str, int]  # files per class before planting
    base_val: dict[str, int]


def plant(put: Callable[[str, str, bytes], str], train_copy: Path, val_copy: Path, rel) -> dict:
    """Write one file of every bad kind with `put(split, name, bytes) -> relative path`."""
    p = {
        "truncated": put("train", "bad_truncated.JPEG", TRUNCATED_JPEG),
        "html": put("train", "bad_html.JPEG", HTML_PAGE),
        "empty": put("val", "bad_empty", b""),
        "png": put("train", "warn_png.JPEG", PNG_RGB),
        "cmyk": put("val", "warn_cmyk", CMYK_JPEG),
        "gray": put("train", "warn_gray.JPEG", GRAY_JPEG),
        "16bit": put("train", "warn_16bit.png", PNG_16BIT),
        "rgba": put("train", "warn_rgba.png", PNG_RGBA),
        "palette": put("train", "warn_palette.png", PNG_PALETTE),
        "dup_train": put("train", "dup_of_train.JPEG", train_copy.read_bytes()),
        "dup_val": put("train", "dup_of_val.JPEG", val_copy.read_bytes()),
    }
    return {
        "unreadable": {p["truncated"], p["html"], p["empty"]},
        "warnings": {
            "not_jpeg": {p["png"]}, "cmyk": {p["cmyk"]}, "grayscale": {p["gray"]},
            "16bit": {p["16bit"]}, "alpha": {p["rgba"]}, "palette": {p["palette"]},
        },
        "duplicates": [
            ((p["dup_train"], "train"), (rel(train_copy), "train")),
            ((p["dup_val"], "train"), (rel(val_copy), "val")),
        ],
    }


def counts_of(index: DatasetIndex) -> tuple[dict[str, int], dict[str, int]]:
    train = {c: sum(1 for _, y in index.train if y == i) for i, c in enumerate(index.classes)}
    val = {c: sum(1 for _, y in index.val if y == i) for i, c in enumerate(index.classes)}
    return train, val


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory) -> Seeded:
    """3 classes x (8 train + 4 val) 32 px digits; class_2 has no val folder."""
    root = write_digit_tree(tmp_path_factory.mktemp("folder") / "data", classes=3)
    shutil.rmtree(root / "val" / "class_2")
    base_train, base_val = counts_of(find_dataset(root))

    def put(split: str, name: str, data: bytes) -> str:
        folder = "train/class_0" if split == "train" else "val/class_1"
        if "." not in name:
            name += ".JPEG"
        (root / folder / name).write_bytes(data)
        return f"{folder}/{name}"

    def rel(path: Path) -> str:
        return path.relative_to(root).as_posix()

    planted = plant(
        put, root / "train/class_1/img_000.jpg", root / "val/class_0/img_008.jpg", rel
    )
    return Seeded(root=root, layout="imagefolder", missing_val=["class_2"],
                  train_class="class_0", val_class="class_1",
                  base_train=base_train, base_val=base_val, **planted)


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory) -> Seeded:
    """The 16 px demo dataset; n00000009 has its val images (and CSV rows) removed."""
    root = tmp_path_factory.mktemp("kaggle") / "data"
    write_demo_dataset(root, size=16)
    csv = root / "LOC_val_solution.csv"
    header, *rows = csv.read_text().splitlines()
    kept = []
    for row in rows:
        image_id, labels = row.split(",")
        if labels.startswith("n00000009 "):
            (root / CLS_LOC / "val" / f"{image_id}.JPEG").unlink()
        else:
            kept.append(row)
    csv.write_text("\n".join([header, *kept]) + "\n")
    base_train, base_val = counts_of(find_dataset(root))
    new_rows = []

    def put(split: str, name: str, data: bytes) -> str:
        if split == "train":
            rel = f"{CLS_LOC}/train/n00000000/{name}"
        else:
            # Flat val folder: the label comes from a CSV row, as in the real download.
            image_id = f"ILSVRC2012_val_{900 + len(new_rows):08d}"
            new_rows.append(f"{image_id},n00000001 0 0 15 15")
            rel = f"{CLS_LOC}/val/{image_id}.JPEG"
        (root / rel).write_bytes(data)
        return rel

    def rel(path: Path) -> str:
        return path.relative_to(root).as_posix()

    index = find_dataset(root)
    val_copy = Path(index.val[0][0])
    planted = plant(put, root / CLS_LOC / "train/n00000001/n00000001_1.JPEG", val_copy, rel)
    with open(csv, "a") as f:
        f.write("\n".join(new_rows) + "\n")
    return Seeded(root=root, layout="kaggle", missing_val=["n00000009"],
                  train_class="n00000000", val_class="n00000001",
                  base_train=base_train, base_val=base_val, **planted)


@pytest.fixture(params=["imagefolder", "kaggle"])
def seeded(request) -> Seeded:
    return request.getfixturevalue(request.param)


def test_report_has_exact_counts(seeded: Seeded):
    index = find_dataset(seeded.root)
    report = check_dataset(index, workers=1)
    assert report.layout == seeded.layout
    train, val = dict(seeded.base_train), dict(seeded.base_val)
    train[seeded.train_class] += 9
    val[seeded.val_class] += 2
    assert report.counts == {"train": train, "val": val}
    assert report.files == sum(train.values()) + sum(val.values()) == len(index.train + index.val)
    assert {r.path for r in report.errors} == seeded.unreadable
    assert len(report.errors) == 3 and all(not r.ok for r in report.errors)
    assert {kind: {r.path for r in reps} for kind, reps in report.warnings.items()} == (
        seeded.warnings
    )
    assert list(report.warnings) == ["not_jpeg", "cmyk", "grayscale", "16bit", "alpha", "palette"]
    # 4 PNGs were planted (one named .JPEG); the other readable files are JPEGs.
    assert report.formats == {"JPEG": report.files - 3 - 4, "PNG": 4}
    groups = {tuple(zip(g.paths, g.splits, strict=True)) for g in report.duplicates}
    assert groups == {tuple(sorted(pair)) for pair in seeded.duplicates}
    assert [g.across_splits for g in report.duplicates].count(True) == 1
    assert report.missing_val == seeded.missing_val
    assert report.empty_train == []
    assert report.has_val and report.has_errors


def test_parallel_check_equals_serial(imagefolder: Seeded):
    index = find_dataset(imagefolder.root)
    serial = check_dataset(index, workers=1).to_json()
    parallel = check_dataset(index, workers=2).to_json()
    serial.pop("seconds"), parallel.pop("seconds")
    assert parallel == serial


def test_classes_whose_files_are_all_unreadable_are_errors(tmp_path):
    root = write_digit_tree(tmp_path, classes=2, train_per_class=1, val_per_class=1)
    (root / "train/class_0/img_000.jpg").write_bytes(b"")
    (root / "val/class_1/img_001.jpg").write_bytes(TRUNCATED_JPEG)
    report = check_dataset(find_dataset(root), workers=1)
    assert report.empty_train == ["class_0"]
    assert report.missing_val == ["class_1"]
    assert len(report.errors) == 2 and report.has_errors


def test_no_val_split_is_reported_but_not_an_error(tmp_path):
    root = write_digit_tree(tmp_path, classes=2, train_per_class=2, val_per_class=1)
    shutil.rmtree(root / "val")
    report = check_dataset(find_dataset(root), workers=1)
    assert (report.has_val, report.missing_val, report.has_errors) == (False, [], False)
    assert "no labelled val split" in doctor.format_report(report)


# ---------------------------------------------------------------------------------------------
# The command


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_with_errors_exits_1_and_writes_json_and_skip_list(
    seeded: Seeded, tmp_path, capsys, monkeypatch
):
    # A progress line on every update, so the no-carriage-return check has lines to look at.
    monkeypatch.setattr(doctor, "PLAIN_PROGRESS_EVERY_S", 0.0)
    report_file, skip_file = tmp_path / "report.json", tmp_path / "skip.txt"
    rc, out, err = run_main(
        capsys, "data", "check", str(seeded.root), "--workers", "2",
        "--json", str(report_file), "--skip-list", str(skip_file),
    )
    assert rc == 1
    assert "Errors: 4" in out  # 3 unreadable files + 1 class with no val image
    assert "Warnings: 6 file(s)" in out
    assert "Duplicates: 2 group(s) of byte-identical files, 1 in both train and val" in out
    assert "Result: ERRORS found" in out
    # Not a terminal (captured): plain progress lines, never a carriage return.
    assert "\r" not in err and "\r" not in out
    index = find_dataset(seeded.root)
    total = len(index.train) + len(index.val)
    progress = [line for line in err.splitlines() if line.startswith("check: ")]
    assert progress and progress[-1].startswith(f"check: {total}/{total} files (100%)")

    data = json.loads(report_file.read_text())
    assert {e["path"] for e in data["errors"]} == seeded.unreadable
    assert {k: len(v) for k, v in data["warnings"].items()} == {k: 1 for k in seeded.warnings}
    assert data["missing_val"] == seeded.missing_val and data["has_errors"] is True
    assert sum(d["across_splits"] for d in data["duplicates"]) == 1

    assert read_skip_list(skip_file) == seeded.unreadable
    lines = skip_file.read_text().splitlines()
    assert [line for line in lines if not line.startswith("#")] == sorted(seeded.unreadable)


def test_cli_clean_dataset_exits_0(tmp_path, capsys):
    root = write_digit_tree(tmp_path / "clean", classes=2, train_per_class=3, val_per_class=2)
    rc, out, err = run_main(capsys, "data", "check", str(root), "--workers", "1")
    assert rc == 0, out
    assert "Result: no errors (0 error(s), 0 file(s) with warnings, 0 duplicate group(s))" in out
    assert "\r" not in err


def test_cli_class_missing_from_val_alone_exits_1(tmp_path, capsys):
    root = write_digit_tree(tmp_path / "data", classes=2, train_per_class=3, val_per_class=2)
    shutil.rmtree(root / "val" / "class_1")
    rc, out, _ = run_main(capsys, "data", "check", str(root), "--workers", "1")
    assert rc == 1
    assert "1 class(es) with no readable val image" in out and "    class_1" in out
    assert "Errors: 1" in out


def test_cli_without_dataset_exits_2_with_one_line(tmp_path, capsys):
    rc, out, err = run_main(capsys, "data", "check", str(tmp_path / "nowhere"))
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("rn50: error: ")
    (tmp_path / "empty").mkdir()
    rc, _, err = run_main(capsys, "data", "check", str(tmp_path / "empty"))
    assert rc == 2 and "no dataset at" in err
    rc, _, err = run_main(capsys, "data", "check", str(tmp_path / "empty"), "--workers", "0")
    assert rc == 2 and "--workers must be at least 1" in err


def test_cli_refuses_non_empty_fix_dir_before_scanning(imagefolder: Seeded, tmp_path, capsys):
    out_dir = tmp_path / "fixed"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("mine")
    report_file = tmp_path / "report.json"
    rc, out, err = run_main(capsys, "data", "check", str(imagefolder.root), "--fix-to",
                            str(out_dir), "--json", str(report_file))
    assert rc == 2 and "is not empty" in err
    assert not report_file.exists() and out == ""  # refused before the scan
    assert [p.name for p in out_dir.iterdir()] == ["keep.txt"]
    rc, _, err = run_main(capsys, "data", "check", str(imagefolder.root), "--fix-to",
                          str(imagefolder.root / "fixed"))
    assert rc == 2 and "inside the dataset" in err


def test_cli_help_explains_exit_codes(capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "check", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "Exit code: 0 no errors" in out and "--skip-list" in out and "--fix-to" in out


# ---------------------------------------------------------------------------------------------
# Progress output


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_a_bar_and_elsewhere_plain_lines(monkeypatch):
    terminal = FakeTerminal()
    bar = doctor._Progress(10, "check", True, terminal)
    bar.update(4), bar.update(6), bar.close()
    assert "\r" in terminal.getvalue() and "10/10" in terminal.getvalue()

    monkeypatch.setattr(doctor, "PLAIN_PROGRESS_EVERY_S", 3600.0)
    log = io.StringIO()
    bar = doctor._Progress(10, "check", True, log)
    bar.update(4), bar.update(6), bar.close()
    assert log.getvalue().startswith("check: 10/10 files (100%), ")
    assert log.getvalue().count("\n") == 1 and "\r" not in log.getvalue()

    quiet = FakeTerminal()
    bar = doctor._Progress(10, "check", False, quiet)
    bar.update(10), bar.close()
    assert quiet.getvalue() == ""


# ---------------------------------------------------------------------------------------------
# Skip list


def test_skip_list_round_trip_and_apply(imagefolder: Seeded, tmp_path):
    index = find_dataset(imagefolder.root)
    report = check_dataset(index, workers=1)
    path = tmp_path / "lists" / "skip.txt"
    write_skip_list(report, path)
    skipped = read_skip_list(path)
    assert skipped == imagefolder.unreadable
    kept = apply_skip_list(index, skipped)
    assert len(kept.train) == len(index.train) - 2 and len(kept.val) == len(index.val) - 1
    kept_paths = {p for p, _ in kept.train + kept.val}
    assert not {str(imagefolder.root / s) for s in skipped} & kept_paths
    assert kept.classes == index.classes and kept.root == index.root


def test_read_skip_list_tolerates_comments_blank_lines_and_other_spellings(tmp_path):
    path = tmp_path / "skip.txt"
    path.write_text("# header\n\ntrain/a/x.JPEG\n  ./train/b/y.JPEG  \ntrain\\c\\z.JPEG\n")
    assert read_skip_list(path) == {"train/a/x.JPEG", "train/b/y.JPEG", "train/c/z.JPEG"}


def test_skip_list_of_a_clean_dataset_is_empty_and_a_missing_one_is_a_data_error(tmp_path):
    root = write_digit_tree(tmp_path / "clean", classes=2, train_per_class=2, val_per_class=1)
    report = check_dataset(find_dataset(root), workers=1)
    write_skip_list(report, tmp_path / "skip.txt")
    assert read_skip_list(tmp_path / "skip.txt") == set()
    with pytest.raises(DataError, match="skip list not found"):
        read_skip_list(tmp_path / "missing.txt")


def test_absolute_paths_in_a_skip_list_also_match(imagefolder: Seeded):
    index = find_dataset(imagefolder.root)
    first = index.train[0][0]
    assert len(apply_skip_list(index, {first}).train) == len(index.train) - 1


# ---------------------------------------------------------------------------------------------
# Fixed copy


def test_fixed_copy_checks_clean_and_keeps_labels(seeded: Seeded, tmp_path):
    index = find_dataset(seeded.root)
    report = check_dataset(index, workers=1)
    out = tmp_path / "fixed"
    summary = write_fixed_copy(report, index, out)
    total = len(index.train) + len(index.val)
    assert (summary.reencoded, summary.left_out) == (6, 3)
    assert summary.linked + summary.copied == total - 9
    assert summary.linked == total - 9  # same filesystem: hard links, no copies

    copy = find_dataset(out)
    assert copy.classes == index.classes and copy.names == index.names
    assert copy.layout == index.layout

    def labels(ix: DatasetIndex) -> dict[str, int]:
        return {Path(p).relative_to(ix.root).as_posix(): y for p, y in ix.train + ix.val}

    expected = {rel: y for rel, y in labels(index).items() if rel not in seeded.unreadable}
    assert labels(copy) == expected

    again = check_dataset(copy, workers=1)
    assert again.errors == [] and again.warnings == {}
    assert again.missing_val == seeded.missing_val  # a copy cannot invent val images
    assert [g.paths for g in again.duplicates] == [g.paths for g in report.duplicates]
    assert again.formats == {"JPEG": total - 3 - 3, "PNG": 3}  # .png files stay PNG

    # Unchanged files share the original's inode; converted ones are new RGB files.
    some = next(rel for rel in expected if rel.endswith((".jpg", ".JPEG"))
                and rel not in set().union(*seeded.warnings.values()))
    assert os.stat(out / some).st_ino == os.stat(seeded.root / some).st_ino
    (cmyk,) = seeded.warnings["cmyk"]
    with Image.open(out / cmyk) as img:
        assert (img.format, img.mode) == ("JPEG", "RGB")
    (deep,) = seeded.warnings["16bit"]
    with Image.open(out / deep) as img:
        assert img.mode == "RGB"
        # Scaled (32896 -> 128), not clipped to 255 as Image.convert("RGB") would.
        assert np.unique(np.asarray(img)).tolist() == [128]
    for rel in seeded.unreadable:
        assert not (out / rel).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_fixed_copy_of_kaggle_keeps_loc_files(kaggle: Seeded, tmp_path):
    index = find_dataset(kaggle.root)
    write_fixed_copy(check_dataset(index, workers=1), index, tmp_path / "fixed")
    for name in ("LOC_synset_mapping.txt", "LOC_val_solution.csv"):
        assert (tmp_path / "fixed" / name).read_bytes() == (kaggle.root / name).read_bytes()
    assert not (tmp_path / "fixed" / ".rn50-demo.json").exists()


def test_fixed_copy_refuses_to_overwrite(imagefolder: Seeded, tmp_path):
    index = find_dataset(imagefolder.root)
    report = check_dataset(index, workers=1)
    out = tmp_path / "fixed"
    out.mkdir()
    (out / "x").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        write_fixed_copy(report, index, out)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        write_fixed_copy(report, index, tmp_path / "file")
    # An existing empty folder is fine.
    (tmp_path / "empty").mkdir()
    assert write_fixed_copy(report, index, tmp_path / "empty").left_out == 3


def test_to_rgb_scales_16bit_instead_of_clipping():
    img = to_rgb(image_16bit())
    assert img.mode == "RGB" and np.unique(np.asarray(img)).tolist() == [128]
    assert np.unique(np.asarray(image_16bit().convert("RGB"))).tolist() == [255]  # why to_rgb


def test_trainer_decodes_16bit_files_scaled(tmp_path):
    path = tmp_path / "deep.png"
    image_16bit().save(path)
    assert np.unique(np.asarray(load_rgb(str(path)))).tolist() == [128]
