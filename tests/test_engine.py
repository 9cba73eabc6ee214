"""End-to-end training on a tiny real-JPEG dataset: outputs, best model, resume, eval."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from rn50.checkpoint import load_checkpoint
from rn50.cli import main
from rn50.errors import CheckpointError
from rn50.model import build_model
from rn50.runlog import RunLog, read_metrics
from rn50.train.loop import fit
from rn50.train.resume import initial_weights
from tests.conftest import assert_same_run, assert_same_weights, tiny_config


def test_run_dir_layout_and_records(straight_run):
    names = sorted(p.name for p in straight_run.iterdir())
    assert "config.yaml" in names and "metrics.jsonl" in names and "initial_model.pth" in names
    assert "checkpoint_epoch_001.pth" in names and "checkpoint_epoch_002.pth" in names
    assert any(n.startswith("training_log_") and n.endswith(".txt") for n in names)
    records = read_metrics(straight_run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["step"] for r in records] == [6, 12]  # 48 images / batch 8 = 6 steps an epoch
    assert all(r["val_images"] == 12 and r["train_images"] == 48 for r in records)
    state = load_checkpoint(straight_run / "checkpoint_epoch_002.pth")
    assert {
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "epoch",
        "best_top1",
        "config",
        "classes",
        "names",
    } <= state.keys()
    assert state["epoch"] == 2 and state["classes"] == ["class_0", "class_1", "class_2"]
    assert state["config"]["data"]["batch_size"] == 8


def test_best_model_is_the_epoch_with_highest_val_top1(straight_run):
    records = read_metrics(straight_run / "metrics.jsonl")
    best = max(records, key=lambda r: (r["val_top1"], -r["epoch"]))  # first of equals wins
    state = load_checkpoint(straight_run / "model_best.pth")
    assert state["epoch"] == best["epoch"]
    assert state["best_top1"] == best["val_top1"]
    log = next(straight_run.glob("training_log_*.txt")).read_text()
    assert f"Saved checkpoint to: {straight_run}/checkpoint_epoch_002.pth" in log
    assert f"New best accuracy: Top-1 {best['val_top1']:.2f}% (epoch {best['epoch']})" in log


def test_eval_command_matches_the_logged_val_metrics(straight_run, capsys):
    rc = main(
        [
            "eval",
            "--checkpoint",
            str(straight_run / "checkpoint_epoch_002.pth"),
            "--set",
            "data.workers=0",
        ]
    )
    out = capsys.readouterr().out
    r = read_metrics(straight_run / "metrics.jsonl")[1]
    assert rc == 0
    assert (
        f"Val Loss: {r['val_loss']:.4f} Top-1: {r['val_top1']:.2f}% "
        f"Top-5: {r['val_top5']:.2f}%" in out
    )


def test_killed_and_resumed_run_equals_uninterrupted(straight_run, tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    config_file = tmp_path / "run.yaml"
    # workers=0 here, 2 in the straight run: the data stream must not depend on them.
    config_file.write_text(tiny_config(tiny_data, run_dir).to_yaml())
    cmd = [sys.executable, "-m", "rn50", "train", "--config", str(config_file)]

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = run_dir / "checkpoint_epoch_001.pth"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists(), proc.stderr.read().decode()
    assert not (run_dir / "checkpoint_epoch_002.pth").exists(), "kill came too late to test"

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Loaded checkpoint '{first}' (epoch 1)" in resumed.stdout
    assert "Previous best accuracy: " in resumed.stdout

    assert_same_run(run_dir, straight_run)


def test_finished_run_resumes_to_nothing(straight_run, tiny_data, capsys):
    before = (straight_run / "metrics.jsonl").read_text()
    fit(tiny_config(tiny_data, straight_run))
    assert "Training already complete" in capsys.readouterr().out
    assert (straight_run / "metrics.jsonl").read_text() == before


def test_changed_schedule_is_refused_on_resume(straight_run, tiny_data):
    with pytest.raises(CheckpointError, match="schedule of 12 steps but this config plans 18"):
        fit(tiny_config(tiny_data, straight_run, train={"epochs": 3}))


def test_initial_weights_are_saved_once_and_reused(tmp_path):
    cfg = tiny_config(tmp_path, tmp_path / "run").train
    log = RunLog(tmp_path / "run", enabled=False)
    torch.manual_seed(0)
    first = build_model(tiny_config(tmp_path, tmp_path).model)
    initial_weights(first, cfg, log)  # saves
    assert (tmp_path / "run" / "initial_model.pth").exists()
    torch.manual_seed(1)  # a different init ...
    second = build_model(tiny_config(tmp_path, tmp_path).model)
    initial_weights(second, cfg, log)  # ... replaced by the saved one
    assert_same_weights(first.state_dict(), second.state_dict())


def test_an_explicit_initial_model_is_read_once(tiny_data, tmp_path, monkeypatch):
    """rn50 train checks train.initial_model_path before any work and trains from what that
    check read: the file is read once."""
    import rn50.checkpoint as checkpoint

    cfg = tiny_config(tiny_data, tmp_path / "run", model={"arch": "resnet18"},
                      train={"epochs": 1})
    start = tmp_path / "start.pth"
    checkpoint.save_checkpoint({"model": build_model(cfg.model).state_dict()}, start)
    reads, real = [], checkpoint.safe_torch_load

    def counted(p, *args, **kwargs):
        reads.append(str(p))
        return real(p, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "safe_torch_load", counted)
    (tmp_path / "run.yaml").write_text(cfg.to_yaml())
    assert main(["train", "-c", str(tmp_path / "run.yaml"),
                 "--set", f"train.initial_model_path={start}"]) == 0
    assert reads.count(str(start)) == 1
    log = next((tmp_path / "run").glob("training_log_*.txt")).read_text()
    assert f"Loaded initial weights from {start}" in log


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_each_precision_trains(tiny_data, tmp_path, precision):
    cfg = tiny_config(
        tiny_data,
        tmp_path / "run",
        train={"epochs": 1, "precision": precision},
        model={"arch": "resnet18", "channels_last": precision != "fp32"},
    )
    record = fit(cfg)
    # fp16's first steps overflow and its scaler skips them; they must leave no trace (fused
    # SGD's momentum once did, and every later loss was NaN).
    assert record["epoch"] == 1 and record["train_images"] == 48
    assert torch.isfinite(torch.tensor([record["train_loss"], record["val_loss"]])).all()
    scaler = load_checkpoint(tmp_path / "run" / "checkpoint_epoch_001.pth")["scaler"]
    assert bool(scaler) == (precision == "fp16")  # only fp16 scales the loss
    saved = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert saved == record


def test_skip_list_leaves_files_out_of_training(tiny_data, tmp_path):
    skip = tmp_path / "skip.txt"
    skip.write_text("# unreadable files\ntrain/class_0/img_000.jpg\ntrain/class_2/img_003.jpg\n"
                    "val/class_1/img_017.jpg\n")
    cfg = tiny_config(tiny_data, tmp_path / "run", data={"skip_list": str(skip)})
    from rn50.train.loaders import load_index

    index = load_index(cfg.data, 3)
    assert (len(index.train), len(index.val)) == (46, 11)
    assert not any(p.endswith("class_0/img_000.jpg") for p, _ in index.train)
