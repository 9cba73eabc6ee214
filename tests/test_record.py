"""What a run leaves to look at: run_info.json, summary.json, steps.jsonl, TensorBoard events,
and progress output with no carriage returns when it goes to a pipe."""

import json
import subprocess
import sys

import pytest
import torch
import torchvision

from rn50 import __version__
from rn50.optim import build_optimizer, build_scheduler, current_lr, current_momentum
from rn50.record import git_state, summarize, write_run_info
from rn50.runlog import read_metrics
from tests.conftest import tiny_config

PRICE = 2.5


@pytest.fixture(scope="module")
def piped_run(tmp_path_factory, tiny_data):
    """A 2-epoch resnet18 run in a subprocess whose stdout and stderr are pipes (not a
    terminal), with TensorBoard, a price and a progress line every 2 steps."""
    tmp = tmp_path_factory.mktemp("piped")
    run_dir = tmp / "run"
    cfg = tiny_config(
        tiny_data,
        run_dir,
        model={"arch": "resnet18"},
        train={"log_every": 2, "tensorboard": True, "price_per_gpu_hour": PRICE},
    )
    config_file = tmp / "run.yaml"
    config_file.write_text(cfg.to_yaml())
    out = subprocess.run(
        [sys.executable, "-m", "rn50", "train", "--config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp,  # not a git checkout
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return run_dir, out


def test_piped_output_has_plain_progress_lines_and_no_carriage_returns(piped_run):
    _, out = piped_run
    assert "\r" not in out.stdout and "\r" not in out.stderr
    steps = [line.split("  loss")[0] for line in out.stdout.splitlines() if " step " in line]
    epoch = ["  epoch {e} step 2/6", "  epoch {e} step 4/6", "  epoch {e} step 6/6"]
    val = ["  val step 1/1"]  # 12 val images: one batch
    assert steps == [x.format(e=1) for x in epoch] + val + [x.format(e=2) for x in epoch] + val
    last = [line for line in out.stdout.splitlines() if line.startswith("  epoch 2 step 6/6")][0]
    record = read_metrics(piped_run[0] / "metrics.jsonl")[1]
    # The last line of an epoch shows the epoch's running means: its Train Loss and Top-1.
    assert f"loss {record['train_loss']:.4f}  top1 {record['train_top1']:.2f}%" in last
    assert "Summary: best val top-1 " in out.stdout


def best_of(records: list[dict]) -> dict:
    """The highest val top-1, the earliest of equals (computed here, not by rn50)."""
    top = max(r["val_top1"] for r in records)
    return next(r for r in records if r["val_top1"] == top)


def test_summary_equals_what_metrics_jsonl_says(straight_run):
    records = read_metrics(straight_run / "metrics.jsonl")
    s = json.loads((straight_run / "summary.json").read_text())
    best = best_of(records)
    assert (s["best_epoch"], s["best_top1"], s["best_top5"]) == (
        best["epoch"],
        best["val_top1"],
        best["val_top5"],
    )
    assert (s["final_top1"], s["final_top5"]) == (records[-1]["val_top1"], records[-1]["val_top5"])
    assert s["epochs"] == 2
    assert s["total_time_s"] == pytest.approx(sum(r["epoch_time_s"] for r in records))
    assert s["images_per_s"] == pytest.approx(96 / sum(r["train_time_s"] for r in records))
    assert s["devices"] == 1
    assert s["cost"] is None and s["price_per_gpu_hour"] is None  # no price: no cost


def test_summary_cost_is_hours_times_price_times_devices(piped_run):
    run_dir, _ = piped_run
    records = read_metrics(run_dir / "metrics.jsonl")
    s = json.loads((run_dir / "summary.json").read_text())
    hours = sum(r["epoch_time_s"] for r in records) / 3600
    assert s["cost"] == pytest.approx(hours * PRICE)
    assert s["price_per_gpu_hour"] == PRICE
    assert summarize(records, devices=8, price_per_gpu_hour=PRICE)["cost"] == pytest.approx(
        hours * PRICE * 8
    )


def test_run_info_names_the_command_versions_device_and_commit(straight_run, piped_run):
    info = json.loads((piped_run[0] / "run_info.json").read_text())
    assert info["argv"][1:3] == ["train", "--config"]
    assert info["versions"]["torch"] == torch.__version__
    assert info["versions"]["torchvision"] == torchvision.__version__
    assert info["versions"]["rn50"] == __version__
    assert info["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["device"]["type"] == "cpu" and info["device"]["count"] == 1
    assert info["device"]["name"]
    assert "git_commit" not in info  # it ran in a folder that is no git checkout
    assert info["resumed_from"] is None
    # The straight run ran in this process, in the test's working directory: its commit is
    # HEAD, or an ancestor of it when a commit landed while the tests ran.
    here = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    info = json.loads((straight_run / "run_info.json").read_text())
    if here.returncode == 0:
        sha = info["git_commit"]
        assert len(sha) == 40 and isinstance(info["git_dirty"], bool)
        ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", sha, "HEAD"])
        assert sha == here.stdout.strip() or ancestor.returncode == 0
    else:
        assert "git_commit" not in info


def test_git_state_of_a_checkout(tmp_path):
    assert git_state(tmp_path) == {}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "f.txt").write_text("a")
    subprocess.run([*git, "add", "f.txt"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "m"], cwd=tmp_path, check=True)
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True
    ).stdout.strip()
    assert git_state(tmp_path) == {"git_commit": sha, "git_dirty": False}
    (tmp_path / "f.txt").write_text("b")
    assert git_state(tmp_path) == {"git_commit": sha, "git_dirty": True}


def test_a_later_start_keeps_the_earlier_ones(tmp_path):
    write_run_info(tmp_path, {"argv": ["first"]})
    write_run_info(tmp_path, {"argv": ["second"]})
    write_run_info(tmp_path, {"argv": ["third"]})
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["argv"] == ["third"]
    assert [p["argv"] for p in info["previous"]] == [["first"], ["second"]]


def test_steps_jsonl_holds_the_lr_and_momentum_each_step_used(straight_run, tiny_data):
    steps = read_metrics(straight_run / "steps.jsonl")
    assert [r["step"] for r in steps] == list(range(1, 13))
    # Replay the schedule on a throwaway optimizer: step k used the values after k-1 moves.
    cfg = tiny_config(tiny_data, straight_run)
    opt = build_optimizer(torch.nn.Linear(2, 2), cfg.optim)
    sched = build_scheduler(opt, cfg.optim, 12)
    expected = []
    for _ in range(12):
        expected.append((current_lr(opt), current_momentum(opt)))
        opt.step()
        sched.step()
    assert [r["lr"] for r in steps] == pytest.approx([lr for lr, _ in expected])
    assert [r["momentum"] for r in steps] == pytest.approx([m for _, m in expected])
    o = cfg.optim
    assert steps[0]["lr"] == pytest.approx(o.max_lr / o.div_factor)  # the cycle's start
    assert steps[-1]["lr"] == pytest.approx(o.max_lr / o.div_factor / o.final_div_factor)


def scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_hold_the_expected_tags_and_steps(piped_run):
    run_dir, _ = piped_run
    found = scalars(run_dir)
    step_tags = {
        f"step/{k}" for k in ("loss", "top1", "lr", "momentum", "images_per_s", "data_wait")
    }
    epoch_tags = {
        f"epoch/{k}"
        for k in (
            "train_loss",
            "train_top1",
            "train_top5",
            "val_loss",
            "val_top1",
            "val_top5",
            "lr",
            "momentum",
            "images_per_s",
            "epoch_time_s",
            "data_wait",
        )
    }
    assert set(found) == step_tags | epoch_tags  # no GPU memory on a CPU
    for tag in step_tags:
        assert [e.step for e in found[tag]] == [2, 4, 6, 8, 10, 12], tag  # every log_every
    records = read_metrics(run_dir / "metrics.jsonl")
    for tag in epoch_tags:
        assert [e.step for e in found[tag]] == [6, 12], tag  # at each epoch's last step
    assert [e.value for e in found["epoch/val_top1"]] == pytest.approx(
        [r["val_top1"] for r in records]
    )
    lrs = {r["step"]: r["lr"] for r in read_metrics(run_dir / "steps.jsonl")}
    assert [e.value for e in found["step/lr"]] == pytest.approx(
        [lrs[s] for s in (2, 4, 6, 8, 10, 12)], rel=1e-6
    )
    assert all(0 <= e.value <= 1 for e in found["step/data_wait"])


def test_a_resumed_board_drops_the_points_a_killed_run_logged_after_its_checkpoint(tmp_path):
    from rn50.progress import Snapshot
    from rn50.tb import Board

    def snap(v):
        return Snapshot(1, 1, v, v, v, v, v, 0.0, 0.0)

    first = Board(tmp_path, True)
    for s in range(1, 11):
        first.step(s, snap(float(s)), 0.1, 0.9)
    first.close()
    again = Board(tmp_path, True, purge_step=6)  # resumed after 5 steps
    for s in range(6, 9):
        again.step(s, snap(100.0 + s), 0.1, 0.9)
    again.close()
    loss = scalars(tmp_path)["step/loss"]
    assert [(e.step, e.value) for e in loss] == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 4.0),
        (5, 5.0),
        (6, 106.0),
        (7, 107.0),
        (8, 108.0),
    ]


def test_tensorboard_missing_is_one_clear_error(tmp_path, monkeypatch):
    from rn50.errors import ConfigError
    from rn50.tb import Board

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ConfigError, match="tensorboard package is not installed"):
        Board(tmp_path, True)
    Board(tmp_path, False).close()  # off: never imported
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.progress=fancy", "train.progress must be one of auto, bar, lines, off"),
        ("train.price_per_gpu_hour=-1", "train.price_per_gpu_hour must be 0 (unknown) or more"),
        ("train.log_every_seconds=-5", "train.log_every_seconds must be 0 or more"),
    ],
)
def test_new_config_keys_are_checked(override, message):
    from rn50.config import load_config
    from rn50.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_summary_line_counts_epochs_in_words():
    from rn50.record import format_summary

    s = {"best_top1": 20.5, "best_top5": 58.9, "best_epoch": 1, "epochs": 1,
         "total_time_s": 24.0, "images_per_s": 61.0}  # fmt: skip
    assert ", 1 epoch in " in format_summary(s)
    assert ", 2 epochs in " in format_summary({**s, "epochs": 2})
