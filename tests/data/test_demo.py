"""Tests for the embedded demo dataset (sklearn digits in the Kaggle ILSVRC layout)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from rn50.data import demo
from rn50.data.demo import DEMO_WNIDS, write_demo_dataset
from rn50.data.layout import find_dataset
from rn50.errors import DataError

SIZE = 32  # small, so the whole module runs in a few seconds
CLS_LOC = Path("ILSVRC", "Data", "CLS-LOC")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo dataset shared by the read-only tests."""
    out = tmp_path_factory.mktemp("demo") / "digits"
    write_demo_dataset(out, size=SIZE)
    return out


def all_files(root: Path) -> list[Path]:
    """Every file under root, sorted, hidden ones included."""
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_wnids_sort_in_digit_order():
    assert len(DEMO_WNIDS) == 10
    assert list(DEMO_WNIDS) == sorted(DEMO_WNIDS)
    assert DEMO_WNIDS[0] == "n00000000" and DEMO_WNIDS[9] == "n00000009"


def test_demo_counts_and_classes(demo_dir: Path):
    index = find_dataset(demo_dir)
    assert index.layout == "kaggle"
    assert index.root == demo_dir.resolve()
    assert index.classes == DEMO_WNIDS
    assert index.names[0] == "zero, digit 0" and index.names[7] == "seven, digit 7"
    assert len(index.val) == len([i for i in range(1797) if i % 5 == 0]) == 360
    assert len(index.train) == 1437
    digits = set(range(10))
    assert {label for _, label in index.train} == {label for _, label in index.val} == digits


def test_demo_files_follow_the_kaggle_layout(demo_dir: Path):
    assert (demo_dir / "LOC_synset_mapping.txt").read_text().splitlines()[3] == (
        "n00000003 three, digit 3"
    )
    csv_lines = (demo_dir / "LOC_val_solution.csv").read_text().splitlines()
    assert csv_lines[0] == "ImageId,PredictionString"
    assert csv_lines[1] == f"ILSVRC2012_val_00000001,n00000000 0 0 {SIZE - 1} {SIZE - 1}"
    assert len(csv_lines) == 1 + 360
    assert (demo_dir / CLS_LOC / "val" / "ILSVRC2012_val_00000360.JPEG").is_file()


def test_every_file_is_an_rgb_jpeg_of_the_right_size(demo_dir: Path):
    index = find_dataset(demo_dir)
    for path, _ in index.train + index.val:
        with Image.open(path) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (SIZE, SIZE)), path


def test_digits_are_dark_on_light(demo_dir: Path):
    # Image 0 is a "0": the corner is background (light), the stroke at the ring is dark.
    with Image.open(demo_dir / CLS_LOC / "val" / "ILSVRC2012_val_00000001.JPEG") as im:
        gray = im.convert("L")
        assert gray.getpixel((0, 0)) > 200
        assert gray.getextrema()[0] < 60


@pytest.mark.parametrize(
    ("relpath", "digit"),
    [
        # Known answers from sklearn's load_digits().target: index 0 -> 0, 5 -> 5,
        # 1000 -> 1, 1795 -> 9 (val k holds index 5 * (k - 1)); 1 -> 1, 1002 -> 0, 1796 -> 8.
        ("val/ILSVRC2012_val_00000001.JPEG", 0),
        ("val/ILSVRC2012_val_00000002.JPEG", 5),
        ("val/ILSVRC2012_val_00000201.JPEG", 1),
        ("val/ILSVRC2012_val_00000360.JPEG", 9),
        ("train/n00000001/n00000001_1.JPEG", 1),
        ("train/n00000000/n00000000_1002.JPEG", 0),
        ("train/n00000008/n00000008_1796.JPEG", 8),
    ],
)
def test_known_labels(demo_dir: Path, relpath: str, digit: int):
    index = find_dataset(demo_dir)
    labels = dict(index.train + index.val)
    assert labels[str(demo_dir.resolve() / CLS_LOC / relpath)] == digit


def test_labels_match_sklearn_targets(demo_dir: Path):
    from sklearn.datasets import load_digits

    target = load_digits().target
    index = find_dataset(demo_dir)
    for path, label in index.train:
        assert label == target[int(Path(path).stem.split("_")[1])]
    for path, label in index.val:
        k = int(Path(path).stem.rsplit("_", 1)[1])
        assert label == target[5 * (k - 1)]


def test_rerun_returns_same_index_without_rewriting(demo_dir: Path):
    before = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in all_files(demo_dir)}
    assert write_demo_dataset(demo_dir, size=SIZE) == find_dataset(demo_dir)
    after = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in all_files(demo_dir)}
    assert after == before
    assert sorted(p.name for p in demo_dir.parent.iterdir()) == [demo_dir.name]  # no temp left


def test_output_is_byte_identical_across_runs(demo_dir: Path, tmp_path: Path):
    again = tmp_path / "again"
    write_demo_dataset(again, size=SIZE)
    first, second = all_files(demo_dir), all_files(again)
    assert [p.relative_to(demo_dir) for p in first] == [p.relative_to(again) for p in second]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second, strict=True))


def test_writes_into_an_existing_empty_dir(tmp_path: Path):
    out = tmp_path / "empty"
    out.mkdir()
    index = write_demo_dataset(out, size=8, val_every=10)
    assert len(index.train) + len(index.val) == 1797
    assert len(index.val) == 180


def test_foreign_non_empty_dir_is_refused(tmp_path: Path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(DataError, match="not a demo dataset") as excinfo:
        write_demo_dataset(tmp_path, size=SIZE)
    assert "\n" not in str(excinfo.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_demo_with_other_arguments_is_refused(demo_dir: Path):
    with pytest.raises(DataError, match="size=32.*not size=64") as excinfo:
        write_demo_dataset(demo_dir, size=64)
    assert "\n" not in str(excinfo.value)


def test_file_in_place_of_dir_is_refused(tmp_path: Path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        write_demo_dataset(tmp_path / "f", size=SIZE)


@pytest.mark.parametrize(
    "kwargs", [{"size": 4}, {"val_every": 1}, {"quality": 0}, {"quality": 101}]
)
def test_bad_arguments(tmp_path: Path, kwargs):
    with pytest.raises(DataError, match="demo:"):
        write_demo_dataset(tmp_path / "d", **kwargs)


def test_interrupted_write_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch):
    calls = {"n": 0}
    real_save = demo._save_jpeg

    def failing_save(image, path, quality):
        calls["n"] += 1
        if calls["n"] > 100:
            raise KeyboardInterrupt  # like Ctrl-C half way through
        real_save(image, path, quality)

    monkeypatch.setattr(demo, "_save_jpeg", failing_save)
    out = tmp_path / "digits"
    with pytest.raises(KeyboardInterrupt):
        write_demo_dataset(out, size=8)
    assert list(tmp_path.iterdir()) == []  # neither out nor the temporary folder


def test_missing_scikit_learn_says_how_to_install(tmp_path: Path, monkeypatch):
    # None in sys.modules makes `import sklearn...` raise ImportError.
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match="pip install scikit-learn") as excinfo:
        write_demo_dataset(tmp_path / "d", size=SIZE)
    assert "\n" not in str(excinfo.value)
    assert not (tmp_path / "d").exists()
