import argparse
import pickle

import numpy as np
import pytest
import torch

from rn50.checkpoint import (
    check_classes,
    copy_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from rn50.errors import CheckpointError
from rn50.fileio import atomic_write_text


def test_round_trip_keeps_every_tensor_and_value(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    state = {
        "epoch": 3,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "best_top1": 41.5,
        "classes": ["a", "b"],
        "config": {"train": {"epochs": 5}},
    }
    path = save_checkpoint(state, tmp_path / "checkpoint_epoch_003.pth")
    back = load_checkpoint(path)
    assert back["epoch"] == 3 and back["best_top1"] == 41.5 and back["classes"] == ["a", "b"]
    for k, v in model.state_dict().items():
        assert torch.equal(back["model"][k], v), k
    buf = back["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(buf, opt.state_dict()["state"][0]["momentum_buffer"])
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_latest_is_highest_epoch_not_newest_file(tmp_path):
    for n in (2, 10, 9):
        save_checkpoint({"model": {}}, tmp_path / f"checkpoint_epoch_{n:03d}.pth")
    (tmp_path / ".checkpoint_epoch_011.pth.tmp123").write_bytes(b"partial")
    (tmp_path / "model_best.pth").write_bytes(b"x")
    assert latest_checkpoint(tmp_path).name == "checkpoint_epoch_010.pth"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_copy_is_identical(tmp_path):
    src = save_checkpoint({"model": {"w": torch.arange(5)}}, tmp_path / "a.pth")
    dst = copy_checkpoint(src, tmp_path / "model_best.pth")
    assert dst.read_bytes() == src.read_bytes()


class _Exploit:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


@pytest.mark.parametrize("kind", ["text", "pickle_exploit", "foreign_dict", "missing"])
def test_bad_files_give_one_line_checkpoint_error(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.pth"
    if kind == "text":
        path.write_text("hello, not a checkpoint\n")
    elif kind == "pickle_exploit":
        path.write_bytes(pickle.dumps({"model": _Exploit()}))
    elif kind == "foreign_dict":
        torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value) and "bad.pth" in str(e.value)
    assert not (tmp_path / "PWNED").exists(), "loading ran code from the file"


def test_class_count_mismatch_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="trained for 10 classes but this run has 1000"):
        check_classes({"classes": [str(i) for i in range(10)]}, 1000, "x.pth")
    check_classes({"classes": ["a", "b"]}, 2, "x.pth")


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "config.yaml"
    atomic_write_text(target, "old\n")

    def explode(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    from rn50.fileio import atomic_write_with

    with pytest.raises(OSError):
        atomic_write_with(target, explode)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


# -- one loader for every command that reads weights -------------------------------------------


def _tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))


@pytest.mark.parametrize(
    "prefix", ["", "module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."]
)
def test_ddp_and_compile_prefixes_are_stripped(prefix):
    """DistributedDataParallel ("module.") and torch.compile ("_orig_mod."), in any nesting."""
    from rn50.checkpoint import load_weights

    saved = _tiny_net().state_dict()
    weights = {prefix + k: v + 1 if v.is_floating_point() else v for k, v in saved.items()}
    target = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    load_weights(target, weights, "x.pth", "fix it")
    for k, v in target.state_dict().items():
        want = saved[k] + 1 if saved[k].is_floating_point() else saved[k]
        assert torch.equal(v, want), k


def test_a_wrong_shape_names_the_first_key_and_both_shapes():
    from rn50.checkpoint import load_weights

    weights = _tiny_net().state_dict()
    weights["1.weight"] = torch.zeros(7)
    weights["1.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError) as e:
        load_weights(_tiny_net(), {"module." + k: v for k, v in weights.items()}, "x.pth", "FIX")
    assert str(e.value) == (
        "'x.pth': weight '1.weight' has shape 7 in the file but 4 in the model; FIX"
    )


def test_missing_and_unexpected_keys_are_one_line():
    from rn50.checkpoint import load_weights

    weights = _tiny_net().state_dict()
    del weights["0.bias"], weights["1.running_var"]
    weights["head.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError) as e:
        load_weights(_tiny_net(), weights, "x.pth", "FIX")
    assert str(e.value) == (
        "'x.pth': the weights do not fit the model: 2 missing (first: '0.bias'), "
        "1 unexpected (first: 'head.weight'); FIX"
    )


class _Code:
    def __reduce__(self):
        return (exec, ("pass",))


@pytest.mark.parametrize(
    "payload, name",
    [
        (lambda: argparse.Namespace(lr=0.1), "argparse.Namespace"),
        (lambda: np.float64(0.5), "numpy"),  # numpy's scalar (numpy._core or numpy.core)
        (lambda: _Code(), "builtins.exec"),
    ],
)
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickled_objects_are_refused_in_rn50s_words(tmp_path, payload, name, writer):
    path = tmp_path / "obj.pth"
    state = {"format": "rn50-checkpoint", "model": {}, "args": payload()}
    if writer == "torch.save":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state, protocol=4))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    text = str(e.value)
    assert text.startswith(f"'{path}' holds pickled Python objects (e.g. {name}")
    assert text.endswith("rn50 loads only tensors and plain data, and will not unpickle it")
    assert "\x1b" not in text and "weights_only" not in text and "\n" not in text


def test_class_ids_are_compared_not_only_counted():
    from rn50.checkpoint import class_mapping, match_classes

    state = {"classes": ["n01", "n02", "n03"]}
    match_classes(state, ("n01", "n02", "n03"), "x.pth", "FIX")
    match_classes({}, ("a",), "x.pth", "FIX")  # weights only (initial_model.pth): nothing to check
    with pytest.raises(CheckpointError) as e:
        match_classes(state, ("n01", "n02", "n04"), "x.pth", "FIX")
    assert str(e.value) == (
        "'x.pth' was trained on other classes than this dataset's: class 2 is 'n03' in the "
        "checkpoint but 'n04' in the dataset; FIX"
    )
    assert class_mapping(state, ("n01", "n02", "n03"), "x.pth") is None
    assert class_mapping(state, ("n03", "n01"), "x.pth") == [2, 0]  # a subset, another order
    with pytest.raises(CheckpointError, match="the dataset's class 'n09' is not among"):
        class_mapping(state, ("n01", "n09", "n03"), "x.pth")
