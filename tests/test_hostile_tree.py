"""A hostile dataset tree through every command that reads one: no traceback, every odd entry
named, exit codes as README documents; and labels that never shift where weights meet data.

The tree (Kaggle layout, 3 classes, 32 px) holds a symbolic link loop at the train root, a
broken link, a FIFO and a socket under image names, a folder that cannot be listed (os.scandir
refuses it: tests run as root, where chmod 000 blocks nothing), a name that is not UTF-8, an
image where class folders belong, a folder inside the flat val/, an unreadable train image
(whose batch of 2 is left with one image: a skipped step), an unreadable val image, a
LOC_val_solution.csv row whose boxes name two synsets, a row that repeats an ImageId with
another class, and a class with no val images.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rn50.checkpoint import load_checkpoint, save_checkpoint
from rn50.cli import main
from rn50.data.layout import printable
from rn50.runlog import read_metrics
from tests.conftest import tiny_config

WNIDS = ("n01000000", "n02000000", "n03000000")
TRAIN_PER_CLASS = 5
CLS_LOC = Path("ILSVRC", "Data", "CLS-LOC")
ODD_NAME = os.fsdecode(b"odd\xff.JPEG")  # bytes that are not UTF-8


def write_jpeg(path: Path, label: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
    pixels[..., label] += 180  # a class is a colour: learnable, not needed
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


def build_tree(root: Path) -> dict[str, Path]:
    """The hostile tree at `root`; returns its odd entries by kind."""
    cls_loc = root / CLS_LOC
    train, val = cls_loc / "train", cls_loc / "val"
    for label, wnid in enumerate(WNIDS):
        for i in range(TRAIN_PER_CLASS):
            write_jpeg(train / wnid / f"{wnid}_{i}.JPEG", label, 10 * label + i)
    odd = {
        "loop_a": train / "loopA",
        "loop_b": train / "loopB",
        "broken": train / WNIDS[0] / "broken.JPEG",
        "fifo": train / WNIDS[0] / "pipe.JPEG",
        "socket": train / WNIDS[1] / "sock.JPEG",
        "unlistable": train / WNIDS[1] / "extra",
        "odd_name": train / WNIDS[2] / ODD_NAME,
        "stray": train / "stray.JPEG",
        "val_folder": val / "n01000000",
        "bad_train": train / WNIDS[1] / "zz_truncated.JPEG",
        "bad_val": val / "ILSVRC2012_val_00000005.JPEG",
    }
    os.symlink("loopB", odd["loop_a"])
    os.symlink("loopA", odd["loop_b"])
    os.symlink("does-not-exist.JPEG", odd["broken"])
    os.mkfifo(odd["fifo"])
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(odd["socket"]))
    write_jpeg(odd["unlistable"] / "hidden_by_permissions.JPEG", 1, 99)
    write_jpeg(odd["odd_name"], 2, 98)
    write_jpeg(odd["stray"], 0, 97)
    write_jpeg(odd["val_folder"] / "sorted.JPEG", 0, 96)
    good = odd["bad_train"].with_name("x.JPEG")
    write_jpeg(good, 1, 95)
    odd["bad_train"].write_bytes(good.read_bytes()[:300])  # cut short: cannot be decoded
    good.unlink()
    # val: 1-2 class 0, 3-4 class 1, 5 unreadable; class 2 has none.
    for i, label in enumerate([0, 0, 1, 1], start=1):
        write_jpeg(val / f"ILSVRC2012_val_{i:08d}.JPEG", label, 200 + i)
    odd["bad_val"].write_bytes(b"<html>not found</html>")
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} class {w[1:3]}\n" for w in WNIDS)
    )
    rows = [
        f"ILSVRC2012_val_00000001,{WNIDS[0]} 1 1 20 20 {WNIDS[1]} 2 2 30 30",  # line 2
        f"ILSVRC2012_val_00000002,{WNIDS[0]} 1 1 20 20",
        f"ILSVRC2012_val_00000003,{WNIDS[1]} 1 1 20 20",
        f"ILSVRC2012_val_00000004,{WNIDS[1]} 1 1 20 20",
        f"ILSVRC2012_val_00000005,{WNIDS[0]} 1 1 20 20",
        f"ILSVRC2012_val_00000002,{WNIDS[2]} 1 1 20 20",  # line 7: again, another class
    ]
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows))
    return odd


@pytest.fixture
def hostile(tmp_path, monkeypatch) -> tuple[Path, dict[str, Path]]:
    """(root, odd entries); os.scandir refuses the 'unlistable' folder as chmod 000 would."""
    # A short path: a socket's name must fit in 108 bytes.
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"rn50-hostile-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    odd = build_tree(root)
    real_scandir = os.scandir

    def scandir(path="."):
        if isinstance(path, str | os.PathLike) and os.fspath(path) == str(odd["unlistable"]):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    yield root, odd
    shutil.rmtree(root, ignore_errors=True)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def shown(path: Path, root: Path) -> str:
    """How a report names `path`: relative to the dataset root, odd bytes as \\xNN."""
    rel = os.path.relpath(path, root)
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


SET_ASIDE = ("loop_a", "loop_b", "broken", "fifo", "socket", "unlistable", "odd_name", "stray",
             "val_folder")


def test_hostile_tree_through_every_command(hostile, tmp_path, capsys):
    root, odd = hostile

    # data check: every odd entry named and counted; errors: exit code 1.
    code, out, err = run(capsys, "data", "check", root, "--workers", "1", "--max-paths", "50")
    assert code == 1
    assert "9 entries not indexed" in out
    for kind in SET_ASIDE:
        assert shown(odd[kind], root) in out, kind
    assert "a symbolic link loop" in out and "a broken symbolic link" in out
    assert "a FIFO" in out and "a socket" in out and "cannot be listed" in out
    assert "not UTF-8" in out and "where class folders are expected" in out
    assert "LOC_val_solution.csv' line 2: the boxes of ILSVRC2012_val_00000001 name 2" in out
    assert "line 7: ILSVRC2012_val_00000002 again, as n03000000; it keeps n01000000" in out
    for kind in ("bad_train", "bad_val"):
        assert shown(odd[kind], root) in out, kind
    assert "1 class(es) with no readable val image" in out

    # train: one tiny epoch; everything named on stderr, the skipped step in steps.jsonl.
    run_dir = tmp_path / "run"
    cfg = tiny_config(root, run_dir, data={"batch_size": 2}, model={"arch": "resnet18"},
                      train={"epochs": 1})
    config = tmp_path / "run.yaml"
    config.write_text(cfg.to_yaml())
    code, out, err = run(capsys, "train", "--config", config)
    assert code == 0, err
    for kind in SET_ASIDE:
        assert f"warning: not indexed: {printable(str(odd[kind]))}: " in err, kind
    assert "line 2: the boxes of ILSVRC2012_val_00000001" in err
    assert "1 class(es) have no val images ('n03000000')" in err
    assert f"skipped unreadable image {odd['bad_train']}" in err
    assert f"skipped unreadable image {odd['bad_val']}" in err  # in validation, same words
    assert "step skipped: a batch held fewer than 2 images" in err
    steps = read_metrics(run_dir / "steps.jsonl")
    skipped = [r for r in steps if r.get("skipped")]
    assert len(skipped) == 1 and "fewer than 2 images" in skipped[0]["skipped"]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))  # no gap
    assert read_metrics(run_dir / "metrics.jsonl")[0]["val_skipped"] == 1

    # eval: the unreadable val file named and counted.
    best = run_dir / "model_best.pth"
    code, out, err = run(capsys, "eval", "--checkpoint", best)
    assert code == 0, err
    assert f"skipped unreadable image {odd['bad_val']}" in err
    assert "Val images: 4" in out and "Skipped unreadable images: 1" in out

    # predict: each path that is not an image file is one line, the others are classified.
    good = root / CLS_LOC / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG"
    paths = [good, odd["fifo"], odd["socket"], odd["loop_a"], odd["broken"], odd["val_folder"]]
    code, out, err = run(capsys, "predict", "--checkpoint", best, *paths)
    assert code == 2
    assert out.startswith(str(good))
    lines = err.strip().splitlines()
    assert len(lines) == 5 and all(line.startswith("rn50: error: ") for line in lines)
    assert "a FIFO, socket or device" in lines[0] and "a FIFO, socket or device" in lines[1]
    assert "Too many levels of symbolic links" in lines[2]
    assert "no such file" in lines[3] and "is a folder" in lines[4]

    # data prepare: the odd entries named, the readable files copied, exit code 0.
    code, out, err = run(capsys, "data", "prepare", root, tmp_path / "prepared",
                         "--workers", "1")
    assert code == 0, err
    for kind in SET_ASIDE:
        assert f"warning: not indexed: {printable(str(odd[kind]))}: " in err, kind
    assert "Left out 2 unreadable file(s)" in out

    # data show: the same warnings, a picture.
    code, out, err = run(capsys, "data", "show", "--config", config, "--out",
                         tmp_path / "s.png", "--count", "4")
    assert code == 0 and (tmp_path / "s.png").exists()
    assert "not indexed:" in err


def test_a_train_class_folder_that_cannot_be_listed_stops_with_one_line(
    hostile, tmp_path, capsys
):
    """Skipping it would shift every later label: the index stops instead."""
    root, odd = hostile
    real = os.scandir

    def scandir(path="."):
        if isinstance(path, str | os.PathLike) and os.fspath(path).endswith(WNIDS[1]):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    os.scandir = scandir  # undone by the fixture's monkeypatch
    try:
        code, out, err = run(capsys, "data", "check", root)
    finally:
        os.scandir = real
    assert code == 2
    assert err.strip() == (
        f"rn50: error: '{root / CLS_LOC / 'train' / WNIDS[1]}': the folder cannot be listed "
        f"(Permission denied); fix its permissions or move it out of the dataset"
    )


def test_a_data_dir_that_is_a_link_loop_is_named_so(tmp_path, capsys):
    """data.data_dir (or data check's PATH) a link loop, a link to itself, or a path through
    one: one line saying it is a symbolic link loop (not "no such directory"), exit 2, no
    run dir, in every command that reads a dataset."""
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    os.symlink("self", tmp_path / "self")
    run_dir = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(tiny_config(tmp_path, run_dir, model={"arch": "resnet18"}).to_yaml())
    for loop in (tmp_path / "a", tmp_path / "self", tmp_path / "a" / "imagenet"):
        data = f"data.data_dir={loop}"
        for argv in (["data", "check", loop], ["data", "prepare", loop, tmp_path / "copy"],
                     ["train", "-c", config, "--set", data],
                     ["lr-find", "-c", config, "--set", data],
                     ["data", "show", "-c", config, "--set", data, "--out", tmp_path / "s.png"]):
            code, out, err = run(capsys, *argv)
            assert code == 2 and out == "", argv
            assert err == (
                f"rn50: error: data.data_dir '{loop}' is a symbolic link loop (it, or a link "
                f"on its way, leads back to itself, never to a folder); point data.data_dir "
                f"at your dataset folder\n"), argv
    assert not run_dir.exists() and not (tmp_path / "copy").exists()


def test_a_link_loop_inside_the_layout_is_named_so(tmp_path, capsys):
    """A folder of the layout (ILSVRC linked to itself, a train folder that loops): one line
    naming it as a link loop, not "no dataset" or "no train folder", in every command that
    reads a dataset, including bench --data-dir."""
    (tmp_path / "kaggle").mkdir()
    os.symlink("ILSVRC", tmp_path / "kaggle" / "ILSVRC")
    cls_loc = tmp_path / "cls" / "ILSVRC" / "Data" / "CLS-LOC"
    cls_loc.mkdir(parents=True)
    os.symlink("train", cls_loc / "train")
    (tmp_path / "folder").mkdir()
    os.symlink("train", tmp_path / "folder" / "train")
    run_dir = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(tiny_config(tmp_path, run_dir, model={"arch": "resnet18"}).to_yaml())
    cases = {
        tmp_path / "kaggle": tmp_path / "kaggle" / "ILSVRC" / "Data" / "CLS-LOC",
        tmp_path / "cls": cls_loc / "train",
        tmp_path / "folder": tmp_path / "folder" / "train",
    }
    for root, loop in cases.items():
        data = f"data.data_dir={root}"
        for argv in (["data", "check", root], ["train", "-c", config, "--set", data],
                     ["data", "show", "-c", config, "--set", data, "--out", tmp_path / "s.png"],
                     ["bench", "--device", "cpu", "--only", "stages", "--data-dir", root]):
            code, out, err = run(capsys, *argv)
            assert code == 2 and out == "", argv
            line = err.strip().splitlines()[-1]
            assert line.startswith(f"rn50: error: '{loop}' is a symbolic link loop"), (argv, err)
    assert not run_dir.exists()


# -- labels never shift where weights meet data ------------------------------------------------


def plain_tree(root: Path, wnids=WNIDS) -> Path:
    """A clean ImageFolder tree: 4 train and 2 val images a class."""
    for label, wnid in enumerate(wnids):
        for i in range(4):
            write_jpeg(root / "train" / wnid / f"{i}.JPEG", label % 3, 10 * label + i)
        for i in range(2):
            write_jpeg(root / "val" / wnid / f"{i}.JPEG", label % 3, 500 + 10 * label + i)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset, model_best.pth) of one tiny epoch on a clean tree."""
    from rn50.train.loop import fit

    tmp = tmp_path_factory.mktemp("labels")
    data = plain_tree(tmp / "data")
    run_dir = tmp / "run"
    fit(tiny_config(data, run_dir, data={"batch_size": 4}, model={"arch": "resnet18"},
                    train={"epochs": 1}))
    return data, run_dir / "model_best.pth"


def reordered(best: Path, out: Path, order: list[int]) -> Path:
    """`best` with its classes (and the output rows that go with them) in `order`: the same
    model, whose outputs are listed in another order."""
    state = load_checkpoint(best)
    state["classes"] = [state["classes"][i] for i in order]
    state["names"] = [state["names"][i] for i in order]
    for key in ("fc.weight", "fc.bias"):
        state["model"][key] = state["model"][key][order].clone()
    return save_checkpoint(state, out)


def test_eval_maps_by_class_id_when_every_id_is_present(trained, tmp_path, capsys):
    data, best = trained
    code, out, _ = run(capsys, "eval", "--checkpoint", best)
    assert code == 0 and "Classes:" not in out
    score = [ln for ln in out.splitlines() if ln.startswith("Val Loss")]
    shuffled = reordered(best, tmp_path / "shuffled.pth", [2, 0, 1])
    code, out, _ = run(capsys, "eval", "--checkpoint", shuffled)
    assert code == 0
    assert "each val image is scored against the output of its class id" in out
    # Scored by id, the same model gets the same numbers; by position they would differ.
    assert [ln for ln in out.splitlines() if ln.startswith("Val Loss")] == score


def test_eval_refuses_other_class_ids_of_the_same_count(trained, tmp_path, capsys):
    data, best = trained
    other = plain_tree(tmp_path / "other", ("n01000000", "n02000000", "n09999999"))
    code, _, err = run(capsys, "eval", "--checkpoint", best, "--set", f"data.data_dir={other}")
    assert code == 2
    assert err.strip() == (
        f"rn50: error: '{best}' was trained on other classes than this dataset's: the "
        f"dataset's class 'n09999999' is not among the checkpoint's (class 2 is 'n03000000' "
        f"in the checkpoint but 'n09999999' in the dataset); evaluate it on the dataset it "
        f"was trained on"
    )


def test_eval_of_a_checkpoint_without_class_ids_checks_the_class_count(trained, tmp_path,
                                                                        capsys):
    """A checkpoint that stores no class ids (older files) cannot be compared by id: the
    dataset's class count must be the model's, or one line says which count to set."""
    data, best = trained
    state = load_checkpoint(best)
    del state["classes"], state["names"]
    bare = save_checkpoint(state, tmp_path / "bare.pth")
    code, out, _ = run(capsys, "eval", "--checkpoint", bare)
    assert code == 0 and "Val Loss" in out
    four = plain_tree(tmp_path / "four", (*WNIDS, "n09999999"))
    code, _, err = run(capsys, "eval", "--checkpoint", bare, "--set", f"data.data_dir={four}")
    assert code == 2
    assert err.strip() == (
        f"rn50: error: model.num_classes is 3 but {four} has 4 classes; "
        f"set model.num_classes=4"
    )


def test_resume_and_initial_weights_refuse_other_class_ids(trained, tmp_path):
    from rn50.errors import CheckpointError
    from rn50.train.loop import fit

    data, best = trained
    other = plain_tree(tmp_path / "other", ("n01000000", "n02000000", "n09999999"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(best, run_dir / "checkpoint_epoch_001.pth")
    cfg = tiny_config(other, run_dir, data={"batch_size": 4}, model={"arch": "resnet18"},
                      train={"epochs": 2})
    with pytest.raises(CheckpointError, match="class 2 is 'n03000000' in the checkpoint but "
                                              "'n09999999' in the dataset; train on the"):
        fit(cfg)
    cfg = tiny_config(other, tmp_path / "fresh", data={"batch_size": 4},
                      model={"arch": "resnet18"}, train={"initial_model_path": best})
    with pytest.raises(CheckpointError, match="'n09999999' in the dataset; delete the file"):
        fit(cfg)


# -- every command that reads weights: one loader, one set of messages ---------------------


def rewritten(best: Path, out: Path, change) -> Path:
    state = load_checkpoint(best)
    for key in ("model", "train_model"):
        if key in state:
            state[key] = change(state[key])
    return save_checkpoint(state, out)


def wrapped(weights: dict) -> dict:
    """As DDP around torch.compile names them."""
    return {f"module._orig_mod.{k}": v for k, v in weights.items()}


def narrowed(weights: dict) -> dict:
    """fc for 2 classes where the model has 3."""
    return {k: v[:2] if k.startswith("fc.") else v for k, v in weights.items()}


@pytest.mark.parametrize("change", [wrapped, narrowed])
def test_every_reader_of_weights_accepts_prefixes_and_names_a_wrong_shape(
    trained, tmp_path, capsys, change
):
    from rn50.errors import CheckpointError
    from rn50.model import build_model
    from rn50.runlog import ConsoleLog
    from rn50.train.loop import Trainer
    from rn50.train.resume import initial_weights

    data, best = trained
    path = rewritten(best, tmp_path / "changed.pth", change)
    shape = "weight 'fc.weight' has shape 2x512 in the file but 3x512 in the model"
    ok = change is wrapped

    commands = {
        "eval": ["eval", "--checkpoint", path],
        "predict": ["predict", "--checkpoint", path, next((data / "val").rglob("*.JPEG"))],
        "export": ["export", "--checkpoint", path, "--format", "safetensors", "--out",
                   tmp_path / "m.safetensors"],
    }
    for name, argv in commands.items():
        code, out, err = run(capsys, *argv)
        if ok:
            assert code == 0, (name, err)
        else:
            assert code == 2 and shape in err and len(err.strip().splitlines()) == 1, name

    cfg = tiny_config(data, tmp_path / "run", data={"batch_size": 4},
                      model={"arch": "resnet18"}, train={"epochs": 1, "initial_model_path": path})
    model = build_model(cfg.model)
    run_dir = tmp_path / "resumed"
    run_dir.mkdir()
    shutil.copy(path, run_dir / "checkpoint_epoch_001.pth")
    resume_cfg = tiny_config(data, run_dir, data={"batch_size": 4}, model={"arch": "resnet18"},
                             train={"epochs": 1})
    if ok:
        initial_weights(model, cfg.train, ConsoleLog())
        expected = load_checkpoint(best)["model"]
        for k, v in model.state_dict().items():
            assert torch.equal(v, expected[k]), k
        Trainer(resume_cfg)  # restores the run: weights, EMA, optimizer
    else:
        with pytest.raises(CheckpointError, match=shape):
            initial_weights(model, cfg.train, ConsoleLog())
        with pytest.raises(CheckpointError, match=shape):
            Trainer(resume_cfg)
