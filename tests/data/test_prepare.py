"""rn50 data prepare: the resized copy, its layout and labels, resuming, refusals, progress."""

import io
import json
import os

import pytest
from PIL import Image

from rn50.cli import main
from rn50.data import prepare
from rn50.data.layout import find_dataset
from rn50.data.prepare import DONE_FILE, prepare_dataset
from rn50.errors import DataError


def photo(size, mode="RGB") -> Image.Image:
    """A smooth gradient (any content will do: sizes, modes and bytes are what is checked)."""
    img = Image.linear_gradient("L").resize(size)
    return Image.merge("RGB", (img, img.transpose(Image.FLIP_LEFT_RIGHT), img)).convert(mode)


@pytest.fixture()
def source(tmp_path):
    """An ImageFolder tree with one file of each kind prepare treats differently."""
    root = tmp_path / "src"
    a, b = root / "train" / "a", root / "train" / "b"
    for d in (a, b, root / "val" / "a"):
        d.mkdir(parents=True)
    photo((800, 600)).save(a / "big.JPEG", quality=95)  # resized to 512 x 384
    photo((300, 200)).save(a / "small.JPEG", quality=95)  # copied byte for byte
    photo((1200, 300), "L").save(a / "gray_wide.JPEG", quality=95)  # resized, grayscale
    photo((640, 480), "CMYK").save(b / "cmyk.JPEG", quality=95)  # converted and resized
    photo((100, 80)).save(b / "png.JPEG", format="PNG")  # converted, size kept
    data = (a / "big.JPEG").read_bytes()
    (b / "truncated.JPEG").write_bytes(data[: len(data) // 2])  # bad
    (b / "empty.JPEG").write_bytes(b"")  # bad
    photo((520, 390)).save(root / "val" / "a" / "v.JPEG", quality=95)
    return root


def test_prepare_resizes_copies_converts_and_leaves_out_bad_files(source, tmp_path):
    out = tmp_path / "dst"
    s = prepare_dataset(source, out, max_side=512, quality=90, workers=1)
    assert (s.total, s.resized, s.copied, s.converted) == (8, 3, 1, 2)
    assert s.bad == ["train/b/empty.JPEG", "train/b/truncated.JPEG"]
    sizes = {}
    for p in out.rglob("*.JPEG"):
        with Image.open(p) as img:
            sizes[str(p.relative_to(out))] = (img.size, img.format, img.mode)
    assert sizes == {
        "train/a/big.JPEG": ((512, 384), "JPEG", "RGB"),
        "train/a/small.JPEG": ((300, 200), "JPEG", "RGB"),
        "train/a/gray_wide.JPEG": ((512, 128), "JPEG", "RGB"),
        "train/b/cmyk.JPEG": ((512, 384), "JPEG", "RGB"),
        "train/b/png.JPEG": ((100, 80), "JPEG", "RGB"),
        "val/a/v.JPEG": ((512, 384), "JPEG", "RGB"),
    }
    assert (out / "train/a/small.JPEG").read_bytes() == (source / "train/a/small.JPEG").read_bytes()
    # Same layout and labels as the source, less the unreadable files.
    src, dst = find_dataset(source), find_dataset(out)
    assert dst.classes == src.classes
    rel = [(os.path.relpath(p, src.root), label) for p, label in src.train]
    assert [(os.path.relpath(p, dst.root), label) for p, label in dst.train] == [
        r for r in rel if "empty" not in r[0] and "truncated" not in r[0]
    ]
    done = json.loads((out / DONE_FILE).read_text())
    assert done["max_side"] == 512 and done["files"] == 6 and len(done["left_out"]) == 2
    assert not [p for p in out.rglob(".*tmp*")]  # no temporary file left behind


def kaggle_tree(root):
    """The Kaggle ILSVRC layout in miniature: 2 classes, 2 train images each, 3 val images."""
    cls_loc = root / "ILSVRC" / "Data" / "CLS-LOC"
    wnids = ("n01000001", "n01000002")
    for wnid in wnids:
        (cls_loc / "train" / wnid).mkdir(parents=True)
        for i in range(2):
            photo((600, 450)).save(cls_loc / "train" / wnid / f"{wnid}_{i}.JPEG", quality=90)
    (cls_loc / "val").mkdir()
    rows = []
    for i, wnid in enumerate((wnids[1], wnids[0], wnids[1]), start=1):
        photo((400, 300)).save(cls_loc / "val" / f"ILSVRC2012_val_{i:08d}.JPEG", quality=90)
        rows.append(f"ILSVRC2012_val_{i:08d},{wnid} 1 2 3 4")
    (root / "LOC_synset_mapping.txt").write_text(f"{wnids[0]} tench\n{wnids[1]} goldfish\n")
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows))
    return root


def test_prepare_keeps_the_kaggle_layout_and_its_loc_files(tmp_path):
    src = find_dataset(kaggle_tree(tmp_path / "kaggle"))
    prepare_dataset(src.root, tmp_path / "dst", max_side=64, workers=2)
    dst = find_dataset(tmp_path / "dst")
    assert dst.layout == "kaggle" and dst.classes == src.classes
    assert dst.names == src.names == ("tench", "goldfish")
    assert [os.path.relpath(p, dst.root) for p, _ in dst.val] == [
        os.path.relpath(p, src.root) for p, _ in src.val
    ]
    assert [label for _, label in dst.val] == [label for _, label in src.val] == [1, 0, 1]
    with Image.open(dst.train[0][0]) as img:
        assert img.size == (64, 48)


def test_an_interrupted_prepare_resumes_where_it_stopped(source, tmp_path, monkeypatch):
    out = tmp_path / "dst"
    real = prepare.prepare_file
    calls = []

    def dies_after_three(src, dest, max_side, quality):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(src)
        return real(src, dest, max_side, quality)

    monkeypatch.setattr(prepare, "prepare_file", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(source, out, workers=1)
    assert not (out / DONE_FILE).exists()
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*.JPEG")}
    assert len(written) == 3
    monkeypatch.setattr(prepare, "prepare_file", real)
    s = prepare_dataset(source, out, workers=1)
    assert s.already_done == 3 and s.resized + s.copied + s.converted == 3
    assert all(p.stat().st_mtime_ns == t for p, t in written.items())  # not written twice
    assert (out / DONE_FILE).exists()
    again = prepare_dataset(source, out, workers=1)
    assert again.already_done == 6 and again.bad == s.bad  # bad files are retried, cheaply


def test_prepare_refuses_what_it_cannot_resume(source, tmp_path):
    out = tmp_path / "dst"
    prepare_dataset(source, out, max_side=256, workers=1)
    with pytest.raises(DataError, match="other settings"):
        prepare_dataset(source, out, max_side=512, workers=1)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        prepare_dataset(source, foreign, workers=1)
    with pytest.raises(DataError, match="inside the dataset"):
        prepare_dataset(source, source / "copy", workers=1)
    with pytest.raises(DataError, match="max-side"):
        prepare_dataset(source, tmp_path / "x", max_side=4)


def test_progress_without_a_terminal_is_plain_lines(source, tmp_path):
    stream = io.StringIO()
    prepare_dataset(source, tmp_path / "dst", workers=1, progress=True, stream=stream)
    text = stream.getvalue()
    assert "\r" not in text and "prepare: 8/8 files (100%)" in text


def test_cli_prepare_reports_and_lists_left_out_files(source, tmp_path, capsys):
    assert main(["data", "prepare", str(source), str(tmp_path / "dst"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "6 of 8 files (3 resized, 1 copied, 2 converted, 0 done before)" in out
    assert "Left out 2 unreadable file(s)" in out and "train/b/empty.JPEG" in out
    assert main(["data", "prepare", str(source), str(tmp_path / "d2"), "--workers", "0"]) == 2
