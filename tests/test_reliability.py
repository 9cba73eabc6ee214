"""A run survives SIGKILL at any moment, SIGTERM, bad images, a full disk and NaN losses."""

import math
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from rn50.checkpoint import last_path, load_checkpoint, load_resume_state, save_checkpoint
from rn50.cli import main
from rn50.errors import StorageError
from rn50.preempt import EXIT_PREEMPTED
from rn50.runlog import read_metrics
from tests.conftest import assert_same_run, tiny_config, write_digit_tree

STEPS = 6  # tiny_data: 48 train images / batch 8


def train_cmd(config_file: Path) -> list[str]:
    return [sys.executable, "-m", "rn50", "train", "--config", str(config_file)]


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )


def wait_for_step(proc: subprocess.Popen, step: int, lines: list[str]) -> None:
    """Read the process's output until it logged global step `step` (1-based)."""
    epoch, in_epoch = divmod(step - 1, STEPS)
    marker = f"epoch {epoch + 1} step {in_epoch + 1}/{STEPS} "
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            return
    tail = "".join(lines[-30:])
    raise AssertionError(f"process ended before step {step}:\n{tail}")


def test_sigkill_at_random_moments_then_resume_is_bit_exact(straight_run, tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        tiny_config(tiny_data, run_dir, train={"save_every_steps": 1, "log_every": 1}).to_yaml()
    )
    cmd = train_cmd(config_file)
    rng = random.Random(7)
    kills = sorted(rng.sample(range(2, 2 * STEPS), 3))  # after these global steps
    for target in kills:
        proc = start(cmd)
        wait_for_step(proc, target, [])
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # Once more, this time while a checkpoint is being written.
    proc = start(cmd)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if list(run_dir.glob(".last.pth.tmp*")) or list(run_dir.glob(".checkpoint_*.tmp*")):
            break
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Loaded checkpoint" in out.stdout
    assert not [p.name for p in run_dir.iterdir() if ".tmp" in p.name]
    assert_same_run(run_dir, straight_run)


def test_sigterm_saves_exits_75_and_resumes(straight_run, tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    config_file = tmp_path / "run.yaml"
    config_file.write_text(tiny_config(tiny_data, run_dir, train={"log_every": 1}).to_yaml())
    proc = start(train_cmd(config_file))
    lines: list[str] = []
    wait_for_step(proc, 3, lines)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    log = "".join(lines) + rest
    assert proc.returncode == EXIT_PREEMPTED, log[-2000:]
    saved = last_path(run_dir)
    line = [x for x in log.splitlines() if x.startswith("Received SIGTERM at epoch 1 step")]
    assert line and line[0].endswith(f": saved {saved}; run the same command to resume"), log
    stopped_at = int(line[0].split(" step ")[1].split(":")[0])
    assert 3 <= stopped_at < STEPS
    assert load_checkpoint(saved)["step_in_epoch"] == stopped_at

    out = subprocess.run(train_cmd(config_file), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"Loaded checkpoint '{saved}' (epoch 1, step {stopped_at}/{STEPS})" in out.stdout
    assert not saved.exists(), "last.pth is superseded by the epoch checkpoint"
    assert_same_run(run_dir, straight_run)


def plant_bad_files(train_dir: Path) -> dict[str, int]:
    """One file of every bad kind in class_0; returns how many are unreadable/convertible."""
    d = train_dir / "class_0"
    good = next(d.glob("*.jpg"))
    data = good.read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.jpg").write_text("<html>not an image</html>")
    img = Image.open(good).convert("RGB")
    img.save(d / "png_named.jpg", format="PNG")
    img.convert("CMYK").save(d / "cmyk.jpg", format="JPEG")
    img.convert("L").save(d / "gray.jpg", format="JPEG")
    deep = (np.asarray(img.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(d / "deep16.png")
    img.convert("RGBA").save(d / "alpha.png")
    return {"unreadable": 3, "convertible": 5}


def test_bad_images_are_skipped_counted_and_named(tmp_path):
    data = write_digit_tree(tmp_path / "data", train_per_class=16)
    kinds = plant_bad_files(data / "train")
    # 48 + 8 = 56 = 7 batches of 8: every file is seen every epoch, so the counts are exact.
    cfg = tiny_config(
        data,
        tmp_path / "run",
        model={"arch": "resnet18"},
        train={"epochs": 1},
        data={"max_bad_fraction": 0.1},
    )
    config_file = tmp_path / "run.yaml"
    config_file.write_text(cfg.to_yaml())
    out = subprocess.run(train_cmd(config_file), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    record = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert record["train_skipped"] == kinds["unreadable"] == 3
    assert record["train_images"] == 56 - 3
    assert "Skipped unreadable images: 3 train, 0 val" in out.stdout
    for name in ("truncated.jpg", "empty.jpg", "notes.jpg"):
        assert f"skipped unreadable image {data / 'train' / 'class_0' / name}" in out.stderr
    # rn50 data check agrees on the count.
    check = subprocess.run(
        [sys.executable, "-m", "rn50", "data", "check", str(data), "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 1
    assert "unreadable" in check.stdout
    from rn50.data.check.scan import check_dataset
    from rn50.data.layout import find_dataset

    report = check_dataset(find_dataset(data), workers=1)
    assert len(report.errors) == kinds["unreadable"]


def test_too_many_bad_images_is_a_clear_error(tmp_path, capsys):
    data = write_digit_tree(tmp_path / "data", train_per_class=16)
    for i in range(16):  # past the floor of 10 files; 48 + 16 = 8 full batches: all are read
        (data / "train" / "class_1" / f"empty_{i}.jpg").write_bytes(b"")
    cfg = tiny_config(
        data, tmp_path / "run", model={"arch": "resnet18"}, data={"max_bad_fraction": 0.01}
    )
    config_file = tmp_path / "run.yaml"
    config_file.write_text(cfg.to_yaml())
    rc = main(["train", "--config", str(config_file)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2
    found = re.search(r"error: (\d+) images could not be decoded this epoch, more than "
                      r"data.max_bad_fraction=0.01 of it \(and more than 10\)", err)
    assert found and 10 < int(found.group(1)) <= 16, err
    assert not (tmp_path / "run" / "checkpoint_epoch_001.pth").exists()


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    tiny_data, tmp_path, monkeypatch, capsys
):
    import rn50.train.loop as engine

    real_build = engine.build_model
    calls = {"n": 0}

    def poisoned(cfg):
        model = real_build(cfg)

        def hook(module, inputs, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] > STEPS + 2:  # from epoch 2, step 3 on
                    return output * float("nan")
            return output

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(engine, "build_model", poisoned)
    cfg = tiny_config(
        tiny_data, tmp_path / "run", model={"arch": "resnet18"}, train={"max_bad_steps": 3}
    )
    config_file = tmp_path / "run.yaml"
    config_file.write_text(cfg.to_yaml())
    rc = main(["train", "--config", str(config_file)])
    err = capsys.readouterr().err
    assert rc == 3
    good = tmp_path / "run" / "checkpoint_epoch_001.pth"
    assert "rn50: error: loss was NaN/inf for 3 steps in a row (epoch 2, step 5, lr " in err, err
    assert f"the last good checkpoint is {good}" in err
    assert err.count("step skipped") == 3
    state = load_checkpoint(good)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not last_path(tmp_path / "run").exists()


def test_unreadable_newest_checkpoint_is_kept_aside_with_a_warning(tmp_path):
    save_checkpoint(
        {"model": {}, "global_step": 6, "epoch": 1}, tmp_path / "checkpoint_epoch_001.pth"
    )
    last_path(tmp_path).write_bytes(b"\x00garbage from a dying disk")
    warnings: list[str] = []
    path, state = load_resume_state(tmp_path, warnings.append)
    assert path.name == "checkpoint_epoch_001.pth" and state["global_step"] == 6
    aside = tmp_path / "last.pth.unreadable"
    assert aside.read_bytes() == b"\x00garbage from a dying disk"
    assert len(warnings) == 1 and warnings[0].startswith(f"'{last_path(tmp_path)}' is not ")
    assert warnings[0].endswith(f"; kept it as '{aside}' and resuming from '{path}'")


def test_last_wins_when_it_is_further_along(tmp_path):
    save_checkpoint({"model": {}, "global_step": 6}, tmp_path / "checkpoint_epoch_001.pth")
    save_checkpoint({"model": {}, "global_step": 9}, last_path(tmp_path))
    assert load_resume_state(tmp_path, print)[0] == last_path(tmp_path)
    save_checkpoint({"model": {}, "global_step": 12}, tmp_path / "checkpoint_epoch_002.pth")
    assert load_resume_state(tmp_path, print)[0].name == "checkpoint_epoch_002.pth"


def test_disk_full_is_one_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    import rn50.checkpoint as ckpt

    target = tmp_path / "checkpoint_epoch_001.pth"
    save_checkpoint({"model": {"w": torch.ones(3)}}, target)
    before = target.read_bytes()

    def full_disk(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos 768 vs 662")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: SimpleNamespace(free=100))
    with pytest.raises(StorageError) as e:
        save_checkpoint({"model": {"w": torch.zeros(1000)}}, target)
    assert "no space left" in str(e.value) and "\n" not in str(e.value)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


# -- a broken run never ends green ----------------------------------------------------------

def poison_after_step(monkeypatch, at_step: int, poison) -> None:
    """After global optimizer step `at_step` (1-based, this process), `poison(module)` breaks
    the weights, as an update with a huge LR does: that step's loss was finite, so the loss
    guard sees nothing until the next step."""
    import rn50.train.loop as engine

    real_step, steps = engine.train_step, {"n": 0}

    def train_step(model, *args):
        result = real_step(model, *args)
        steps["n"] += 1
        if steps["n"] == at_step:
            with torch.no_grad():
                poison(getattr(model, "module", model))
        return result

    monkeypatch.setattr(engine, "train_step", train_step)


def nan_weight(module):
    module.fc.weight.fill_(float("nan"))


def inf_statistics(module):
    module.bn1.running_var.fill_(float("inf"))


def nan_every_training_loss(monkeypatch):
    import rn50.train.loop as engine

    real_build = engine.build_model

    def build(cfg):
        model = real_build(cfg)
        model.register_forward_hook(
            lambda module, inputs, out: out * float("nan") if module.training else out
        )
        return model

    monkeypatch.setattr(engine, "build_model", build)


def inf_val_loss(monkeypatch):
    import rn50.train.loop as engine

    real = engine.evaluate
    monkeypatch.setattr(engine, "evaluate", lambda *a, **k: {**real(*a, **k), "loss": math.inf})


# case: (epochs, train settings, how it breaks, what the line says)
BROKEN = {
    "weights NaN in the run's last step": (
        1, {}, lambda mp: poison_after_step(mp, STEPS, nan_weight),
        "epoch 1: 1 tensor(s) of the weights hold NaN/inf (fc.weight); the validation loss is "
        "nan; its checkpoint was not written and there is no earlier checkpoint",
    ),
    "weights NaN in the last step of epoch 2": (
        2, {}, lambda mp: poison_after_step(mp, 2 * STEPS, nan_weight),
        "epoch 2: 1 tensor(s) of the weights hold NaN/inf (fc.weight); the validation loss is "
        "nan; its checkpoint was not written and the last good checkpoint is {run}"
        "/checkpoint_epoch_001.pth",
    ),
    "BatchNorm statistics inf": (
        1, {}, lambda mp: poison_after_step(mp, STEPS, inf_statistics),
        # inf variances scale every input of the layer to 0: only the weights' check sees it
        "epoch 1: 1 tensor(s) of the weights hold NaN/inf (bn1.running_var); its checkpoint",
    ),
    "EMA weights NaN": (
        1, {"ema": True}, lambda mp: poison_after_step(mp, STEPS, nan_weight),
        "epoch 1: 1 tensor(s) of the weights hold NaN/inf (fc.weight); 1 tensor(s) of the EMA "
        "weights hold NaN/inf (fc.weight); the validation loss is nan; the raw weights' "
        "validation loss is nan",
    ),
    "validation loss inf, weights finite": (
        1, {}, inf_val_loss, "epoch 1: the validation loss is inf; its checkpoint was not "
        "written",
    ),
    "every loss NaN, fewer steps than max_bad_steps": (
        1, {"max_bad_steps": 20}, nan_every_training_loss,
        "epoch 1: no step was applied (every loss was NaN/inf); its checkpoint was not written",
    ),
    "weights NaN at a rolling save": (
        1, {"save_every_steps": 1}, lambda mp: poison_after_step(mp, 3, nan_weight),
        "epoch 1 step 3: 1 tensor(s) of the weights hold NaN/inf (fc.weight); last.pth was not "
        "written and the last good checkpoint is {run}/last.pth",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_run_exits_3_and_saves_nothing_broken(tiny_data, tmp_path, monkeypatch, capsys,
                                                       case):
    epochs, train, breaks, said = BROKEN[case]
    run_dir = tmp_path / "run"
    cfg = tiny_config(tiny_data, run_dir, model={"arch": "resnet18"},
                      train={"epochs": epochs, "precision": "fp32", **train})
    config_file = tmp_path / "run.yaml"
    config_file.write_text(cfg.to_yaml())
    breaks(monkeypatch)
    rc = main(["train", "--config", str(config_file)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3
    assert err[-1].startswith("rn50: error: ") and "Traceback" not in "\n".join(err)
    assert said.format(run=run_dir) in err[-1], err[-1]
    assert err[-1].endswith("; lower optim.max_lr or use bf16/fp32")
    # Nothing broken was saved: no checkpoint of the broken epoch, and every file a resume or
    # predict would read holds finite weights.
    assert not (run_dir / f"checkpoint_epoch_{epochs:03d}.pth").exists()
    metrics = run_dir / "metrics.jsonl"
    saved = read_metrics(metrics) if metrics.exists() else []
    assert [r["epoch"] for r in saved] == list(range(1, epochs))
    best = run_dir / "model_best.pth"
    assert best.exists() == (epochs > 1)
    for path in [best, *run_dir.glob("checkpoint_epoch_*.pth"), last_path(run_dir)]:
        if path.exists():
            state = load_checkpoint(path)
            for key in ("model", "train_model"):
                assert all(torch.isfinite(t).all() for t in state.get(key, {}).values()
                           if t.is_floating_point()), (path, key)


def test_nan_streak_goes_on_across_an_epoch_end(tiny_data, tmp_path, monkeypatch, capsys):
    import rn50.train.loop as engine

    real_build, calls = engine.build_model, {"n": 0}

    def poisoned(cfg):
        model = real_build(cfg)

        def hook(module, inputs, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] > STEPS - 2:  # from epoch 1, step 5 on
                    return output * float("nan")
            return output

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(engine, "build_model", poisoned)
    cfg = tiny_config(tiny_data, tmp_path / "run", model={"arch": "resnet18"},
                      train={"max_bad_steps": 4, "precision": "fp32"})
    config_file = tmp_path / "run.yaml"
    config_file.write_text(cfg.to_yaml())
    rc = main(["train", "--config", str(config_file)])
    err = capsys.readouterr().err
    assert rc == 3
    # Steps 5 and 6 of epoch 1, then 1 and 2 of epoch 2: four in a row.
    assert "rn50: error: loss was NaN/inf for 4 steps in a row (epoch 2, step 2, lr " in err, err
    assert (tmp_path / "run" / "checkpoint_epoch_001.pth").exists()  # 4 steps applied: saved
