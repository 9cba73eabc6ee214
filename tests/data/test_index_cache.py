"""The cached dataset index: reused while nothing changed, rebuilt after any change it can see."""

import os
import time

import pytest
from PIL import Image

from rn50.data import index_cache
from rn50.data.demo import write_demo_dataset
from rn50.data.index_cache import cache_path, load_dataset_index
from rn50.data.layout import MAPPING_FILE, find_dataset


def settle(root) -> None:
    """Date every folder of the tree 10 s back, as if written before this start: the cache
    refuses folders that changed in the last SETTLE_S seconds (they may still be changing)."""
    past = time.time() - 10
    for folder, _, _ in os.walk(root):
        os.utime(folder, (past, past))


def scans(monkeypatch) -> list[str]:
    """Counts calls of find_dataset made by the cache module."""
    calls = []
    real = index_cache.find_dataset

    def counting(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(index_cache, "find_dataset", counting)
    return calls


def add_image(folder) -> None:
    Image.new("RGB", (8, 8)).save(folder / "new.JPEG")


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "data"
    for split, n in (("train", 3), ("val", 1)):
        for c in ("a", "b"):
            (root / split / c / "deep").mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8)).save(root / split / c / f"{i}.JPEG")
    Image.new("RGB", (8, 8)).save(root / "train" / "a" / "deep" / "nested.JPEG")
    settle(root)
    return root


def test_a_second_start_reads_the_cache_and_gets_the_same_index(tree, monkeypatch):
    calls = scans(monkeypatch)
    first = load_dataset_index(tree)
    second = load_dataset_index(tree)
    assert first == second == find_dataset(tree)
    assert len(calls) == 1
    assert cache_path(tree).is_file()
    load_dataset_index(tree, cache=False)
    assert len(calls) == 2  # data.index_cache: false always scans


@pytest.mark.parametrize(
    "change",
    [
        "image added",
        "image removed",
        "nested image added",
        "class added",
        "image renamed",
        "mapping file added",
    ],
)
def test_any_change_to_the_listing_is_noticed(tree, monkeypatch, change):
    calls = scans(monkeypatch)
    load_dataset_index(tree)
    if change == "image added":
        add_image(tree / "train" / "b")
    elif change == "image removed":
        (tree / "val" / "a" / "0.JPEG").unlink()
    elif change == "nested image added":
        add_image(tree / "train" / "a" / "deep")
    elif change == "class added":
        (tree / "train" / "c").mkdir()
        add_image(tree / "train" / "c")
    elif change == "image renamed":
        os.rename(tree / "train" / "a" / "1.JPEG", tree / "train" / "a" / "9.JPEG")
    elif change == "mapping file added":
        (tree / MAPPING_FILE).write_text("a first class\nb second class\n")
    got = load_dataset_index(tree)
    assert len(calls) == 2
    assert got == find_dataset(tree)


def test_an_edited_kaggle_label_file_is_noticed(tmp_path, monkeypatch):
    index = write_demo_dataset(tmp_path / "demo", size=8)
    settle(index.root)
    calls = scans(monkeypatch)
    assert load_dataset_index(index.root) == index
    mapping = index.root / MAPPING_FILE
    lines = mapping.read_text().splitlines()
    mapping.write_text("\n".join([lines[0].split()[0] + " renamed"] + lines[1:]) + "\n")
    os.utime(mapping, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime, surely
    got = load_dataset_index(index.root)
    assert len(calls) == 2 and got.names[0] == "renamed"


def test_a_tree_that_just_changed_is_not_cached(tmp_path, monkeypatch):
    root = tmp_path / "fresh"
    (root / "train" / "a").mkdir(parents=True)
    add_image(root / "train" / "a")  # written now: its folder may still be changing
    calls = scans(monkeypatch)
    load_dataset_index(root)
    load_dataset_index(root)
    assert len(calls) == 2 and not cache_path(root).exists()
    load_dataset_index(root, settle=False)  # a caller that wrote it and is done: cached
    load_dataset_index(root)
    assert len(calls) == 3


def test_a_damaged_or_unwritable_cache_only_costs_a_scan(tree, monkeypatch, tmp_path):
    calls = scans(monkeypatch)
    load_dataset_index(tree)
    cache_path(tree).write_text('{"format": 1, "given": "')  # cut short
    assert load_dataset_index(tree) == find_dataset(tree)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("RN50_CACHE_DIR", str(blocker))  # mkdir inside a file fails
    assert load_dataset_index(tree) == find_dataset(tree)
    assert len(calls) == 3


def test_a_label_swapped_in_place_with_the_same_size_and_mtime_is_noticed(tmp_path, monkeypatch):
    """rsync -t or cp -p of a corrected LOC_val_solution.csv can keep mtime and size: the
    cache compares the bytes too, or every val image of the row would keep its old label."""
    index = write_demo_dataset(tmp_path / "demo", size=8, val_every=50)
    csv = index.root / "LOC_val_solution.csv"
    settle(index.root)
    first = load_dataset_index(index.root)
    st = os.stat(csv)
    text = csv.read_text()
    line = text.splitlines()[1]
    wnid = line.split(",")[1].split()[0]
    other = next(c for c in first.classes if c != wnid)
    csv.write_text(text.replace(line, line.replace(wnid, other)))  # same length
    os.utime(csv, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(csv).st_size == st.st_size
    calls = scans(monkeypatch)
    again = load_dataset_index(index.root)
    assert calls and again == find_dataset(index.root) and again.val != first.val


def test_an_index_that_set_entries_aside_is_never_cached(tree, monkeypatch):
    """Fixing such an entry (chmod, a link re-pointed) may change no folder's mtime."""
    os.symlink("nowhere.JPEG", tree / "train" / "a" / "broken.JPEG")
    settle(tree)
    calls = scans(monkeypatch)
    first = load_dataset_index(tree)
    assert [why for _, why in first.skipped] == ["a broken symbolic link (its target does not "
                                                 "exist)"]
    load_dataset_index(tree)
    assert len(calls) == 2 and not cache_path(tree).exists()
