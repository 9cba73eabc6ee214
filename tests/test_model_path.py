"""Each model-path switch trains on the demo data; EMA and progressive resizing are wired in.

The switches are trained on 48 images of the demo dataset (the demo48 fixture) with
resnet18 at 32 px (the training loop does not depend on the arch), so that each costs
seconds on a CPU.
"""

import shutil

import pytest
import torch

from rn50.checkpoint import load_checkpoint
from rn50.runlog import read_metrics
from rn50.train.evaluate import evaluate_checkpoint
from rn50.train.loop import Trainer, fit
from tests.conftest import assert_same_weights, demo48_config, kill_and_resume_like_a_straight_run

SMALL = {"arch": "resnet18"}

SWITCHES = {
    "channels_last off": {"model": {"channels_last": False}},
    # Inductor compiles ResNet-18's train and eval graphs with the system C++ compiler: about
    # 40 s on 2 cores, the slowest case here.
    "compile": {"train": {"compile": True}},
    "zero_init_residual off": {"model": {"zero_init_residual": False}},
    "fused off": {"optim": {"fused": False}},
    "bn weight decay on": {"optim": {"no_bn_weight_decay": False}},
    "nesterov": {"optim": {"nesterov": True}},
    "label smoothing": {"train": {"label_smoothing": 0.1}},
    "accumulation": {"data": {"batch_size": 4}, "train": {"accum_steps": 2}},
    "ema": {"train": {"ema": True, "ema_decay": 0.9}},
    "progressive resizing": {
        "data": {"resolution": 64, "min_resolution": 32, "ramp_start_epoch": 1,
                 "ramp_end_epoch": 2, "eval_resolution": 64}
    },
    "decode pil": {"data": {"decode": "pil"}},
    "decode gpu (on cpu)": {"data": {"decode": "gpu"}},
}


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_trains(demo48, tmp_path, switch):
    if switch == "compile" and not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("torch.compile on a CPU needs a C++ compiler (apt install g++)")
    sections = {k: dict(v) for k, v in SWITCHES[switch].items()}
    sections["model"] = {**SMALL, **sections.get("model", {})}
    sections["train"] = {"epochs": 1, "precision": "bf16", **sections.get("train", {})}
    cfg = demo48_config(demo48, tmp_path / "run", **sections)
    trainer = Trainer(cfg)
    initial = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    record = trainer.fit()
    assert record["epoch"] == 1 and record["train_images"] == 48  # every image, every step
    assert record["step"] == 6  # optimizer steps: 48 images / global batch 8
    assert torch.isfinite(torch.tensor([record["train_loss"], record["val_loss"]])).all()
    saved = load_checkpoint(tmp_path / "run" / "checkpoint_epoch_001.pth")
    weights = saved.get("train_model", saved["model"])
    moved = [k for k, v in weights.items() if v.is_floating_point() and not v.equal(initial[k])]
    assert "fc.weight" in moved and "conv1.weight" in moved


def input_sizes(trainer: Trainer) -> list[tuple[bool, int]]:
    """(training?, side) of every batch the network sees, in order."""
    seen: list[tuple[bool, int]] = []
    trainer.module.register_forward_pre_hook(
        lambda m, args: seen.append((m.training, args[0].shape[-1]))
    )
    return seen


def test_progressive_resizing_follows_its_schedule(demo48, tmp_path):
    # 32 px up to epoch 1, 96 px from epoch 3, linear in multiples of 32 between: 64 at 2.
    data = {"resolution": 96, "min_resolution": 32, "ramp_start_epoch": 1,
            "ramp_end_epoch": 3, "eval_resolution": 64}
    cfg = demo48_config(demo48, tmp_path / "run", data=data, model=SMALL, train={"epochs": 3})
    trainer = Trainer(cfg)
    seen = input_sizes(trainer)
    trainer.fit()
    train_sides = [side for training, side in seen if training]
    assert train_sides == [32] * 6 + [64] * 6 + [96] * 6  # 6 steps an epoch
    assert {side for training, side in seen if not training} == {64}  # eval_resolution
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["train_resolution"] for r in metrics] == [32, 64, 96]
    log = next((tmp_path / "run").glob("training_log_*.txt")).read_text()
    assert "Training resolution: 64 px" in log and "Training resolution: 96 px" in log


def test_ema_is_the_runs_model_and_the_raw_weights_are_kept(demo48, tmp_path):
    run = tmp_path / "run"
    cfg = demo48_config(demo48, run, model=SMALL, train={"ema": True, "ema_decay": 0.9})
    fit(cfg)
    state = load_checkpoint(run / "checkpoint_epoch_002.pth")
    assert state["ema_steps"] == 12
    assert not state["model"]["fc.weight"].equal(state["train_model"]["fc.weight"])
    record = read_metrics(run / "metrics.jsonl")[-1]
    # val_* measure "model" (what eval, predict and export load), raw_val_* the raw weights.
    ema_val = evaluate_checkpoint(state, "ema", cfg)
    raw_val = evaluate_checkpoint({**state, "model": state["train_model"]}, "raw", cfg)
    assert (record["val_top1"], record["val_loss"]) == (ema_val["top1"], ema_val["loss"])
    assert (record["raw_val_top1"], record["raw_val_loss"]) == (raw_val["top1"], raw_val["loss"])
    best = load_checkpoint(run / "model_best.pth")
    assert best["best_top1"] == max(r["val_top1"] for r in read_metrics(run / "metrics.jsonl"))


def test_ema_and_resizing_resume_mid_epoch_exactly(demo48, tmp_path, monkeypatch):
    """A run stopped in epoch 2 (the resolution just changed) resumes from last.pth to the
    same metrics and the same raw and averaged weights as a run never stopped."""
    sections = {
        "data": {"resolution": 64, "min_resolution": 32, "ramp_start_epoch": 1,
                 "ramp_end_epoch": 2},
        "model": SMALL,
        "train": {"ema": True, "ema_decay": 0.9, "save_every_steps": 2},
    }
    # metrics, LR series, "model" (the EMA)
    run = kill_and_resume_like_a_straight_run(monkeypatch, demo48, tmp_path, sections)
    a = load_checkpoint(run / "checkpoint_epoch_002.pth")
    b = load_checkpoint(tmp_path / "straight" / "checkpoint_epoch_002.pth")
    assert_same_weights(a["train_model"], b["train_model"])
    assert a["ema_steps"] == b["ema_steps"] == 12


def test_ema_batchnorm_statistics_are_recomputed_on_training_batches(demo48, tmp_path):
    """The EMA model's BatchNorm statistics are the plain average over train.ema_bn_batches
    batches of what each BatchNorm sees, not an average over the weights' past."""
    train = {"epochs": 1, "ema": True, "ema_decay": 0.9, "ema_bn_batches": 3,
             "precision": "fp32"}  # fmt: skip
    cfg = demo48_config(demo48, tmp_path / "run", model=SMALL, train=train)
    trainer = Trainer(cfg)
    means = []

    def record(module, args):
        if module.training:  # the calibration passes (evaluation runs in eval mode)
            means.append(args[0].float().mean(dim=(0, 2, 3)))

    trainer.ema.module.bn1.register_forward_pre_hook(record)
    trainer.fit()
    assert len(means) == 3
    saved = load_checkpoint(tmp_path / "run" / "checkpoint_epoch_001.pth")["model"]
    torch.testing.assert_close(saved["bn1.running_mean"], torch.stack(means).mean(0))
    assert saved["bn1.num_batches_tracked"] == 3
