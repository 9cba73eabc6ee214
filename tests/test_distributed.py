"""Training under torchrun: real 2-rank runs (gloo, CPU) against 1-process runs on the demo
dataset (48 of its training images and 12 of its validation images: the demo48 fixture).

Known answers: a 2-rank evaluation equals a 1-process one exactly; 2 ranks and 1 process
accumulating 2 micro-batches take the same first step (to float tolerance); a 2-rank
checkpoint resumes on 2 ranks bit for bit and on 1 process to float tolerance; a rank
killed mid-epoch under --max-restarts=1 ends in the same weights as a run never killed.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rn50.checkpoint import last_path, load_checkpoint
from rn50.cli import main
from rn50.config import from_dict
from rn50.errors import CheckpointError
from rn50.runlog import read_metrics
from rn50.train.evaluate import evaluate_checkpoint
from rn50.train.loop import fit
from tests.conftest import assert_same_weights, demo48_config, without_timing

STEPS = 3  # demo48: 48 train images / global batch 16 (8 a rank x 2 ranks)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 ranks on 2 cores: one thread each


@pytest.fixture(autouse=True)
def one_thread():
    """In-process runs compute like each rank (one thread): with batches of 4, BatchNorm turns
    the float differences of another thread count into different weights within 12 steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(dataset: tuple[Path, Path], run_dir: Path, **sections):
    """demo48_config (`dataset`: demo48's root and skip list) with ResNet-18 in fp32 (exact
    comparisons), overridable per section."""
    base = {"model": {"arch": "resnet18"}, "train": {"precision": "fp32"}}
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    return demo48_config(dataset, run_dir, **base)


def write_config(tmp_path: Path, cfg) -> Path:
    path = tmp_path / f"{Path(cfg.train.checkpoint_dir).name}.yaml"
    path.write_text(cfg.to_yaml())
    return path


def torchrun(*args: str, nproc: int = 2, max_restarts: int = 0) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", f"--max-restarts={max_restarts}", "-m", "rn50", *args,
    ]  # fmt: skip


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def params(path: Path) -> dict[str, torch.Tensor]:
    """The trained parameters of a checkpoint. BatchNorm's running statistics are left out:
    they follow every forward pass, so they depend on how a step was split."""
    state = load_checkpoint(path)["model"]
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return {k: v for k, v in state.items() if not k.endswith(buffers)}


def assert_close_weights(a: dict, b: dict, rtol: float = 1e-4) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=1e-5, msg=k)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, demo48) -> Path:
    """A 2-epoch run on 2 ranks with batch 8 each: global batch 16, 3 steps an epoch."""
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = config(demo48, tmp / "run")
    out = run(torchrun("train", "--config", str(write_config(tmp, cfg))))
    (tmp / "run" / "stdout.txt").write_text(out.stdout)
    return tmp / "run"


def test_rank_0_alone_writes_and_every_image_counts_once(two_ranks):
    stdout = (two_ranks / "stdout.txt").read_text()
    assert "Global batch: 16 (data.batch_size 8 x 2 process(es) x train.accum_steps 1)" in stdout
    assert "Processes: 2 (torchrun, gloo backend)" in stdout
    assert stdout.count("Saved checkpoint to:") == 2  # printed once, not once a rank
    assert len(list(two_ranks.glob("training_log_*.txt"))) == 1
    records = read_metrics(two_ranks / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["step"] for r in records] == [STEPS, 2 * STEPS]
    assert all(r["train_images"] == 48 and r["val_images"] == 12 for r in records)
    state = load_checkpoint(two_ranks / "checkpoint_epoch_002.pth")
    assert state["global_batch"] == 16 and state["world_size"] == 2
    assert not [k for k in state["model"] if k.startswith(("module.", "_orig_mod."))]


def test_two_rank_validation_equals_one_process_evaluation(two_ranks, capsys):
    for r in read_metrics(two_ranks / "metrics.jsonl"):
        path = two_ranks / f"checkpoint_epoch_{r['epoch']:03d}.pth"
        state = load_checkpoint(path)
        one = evaluate_checkpoint(state, str(path), from_dict(state["config"]))
        # Every image once, losses summed per image, rank 0's BatchNorm statistics: the same
        # counts exactly. The loss is equal here too with torch 2.14; older releases' CPU
        # convolutions may round an image's logits differently in a batch of another size
        # (seen with 2.4: 2e-8 relative), so the loss is compared to float tolerance.
        assert (one["top1"], one["top5"], one["count"]) == (
            r["val_top1"], r["val_top5"], r["val_images"]
        )  # fmt: skip
        assert one["loss"] == pytest.approx(r["val_loss"], rel=1e-6, abs=0)
    # rn50 eval under torchrun: sharded, summed, printed once, the same numbers.
    best = str(two_ranks / "model_best.pth")
    out = run(torchrun("eval", "--checkpoint", best)).stdout
    capsys.readouterr()
    assert main(["eval", "--checkpoint", best]) == 0
    single = capsys.readouterr().out
    summary = [line for line in single.splitlines() if line.startswith(("Val ", "Checkpoint"))]
    assert len(summary) == 3 and "Val images: 12" in summary
    for line in summary:
        assert out.count(line) == 1, out


def test_two_ranks_take_the_step_of_one_process_accumulating_two(demo48, tmp_path):
    # One step an epoch (global batch 48 = all images), plain SGD: the weights move by -LR x
    # the gradient, so comparing the moves compares the first step's gradients. The LR of 1000
    # lifts the moves far above the float rounding of the weights they are added to.
    sgd = {"max_lr": 1000.0, "div_factor": 1.0, "momentum": 0.0, "cycle_momentum": False,
           "weight_decay": 0.0}  # fmt: skip
    two = config(demo48, tmp_path / "two", data={"batch_size": 24}, optim=sgd,
                 train={"epochs": 1})  # fmt: skip
    run(torchrun("train", "--config", str(write_config(tmp_path, two))))
    one = config(demo48, tmp_path / "one", data={"batch_size": 24}, optim=sgd,
                 train={"epochs": 1, "accum_steps": 2})  # fmt: skip
    fit(one)
    start = params(tmp_path / "two" / "initial_model.pth")
    assert_same_weights(start, params(tmp_path / "one" / "initial_model.pth"))
    moved = {}
    for name in ("one", "two"):
        end = params(tmp_path / name / "checkpoint_epoch_001.pth")
        moved[name] = {k: end[k] - start[k] for k in start if end[k].is_floating_point()}
    assert max(d.abs().max().item() for d in moved["two"].values()) > 1e-2  # a real step
    assert_close_weights(moved["one"], moved["two"], rtol=1e-3)
    # The same images in one batch of 48 normalize differently: the test tells them apart.
    whole = config(demo48, tmp_path / "whole", data={"batch_size": 48}, optim=sgd,
                   train={"epochs": 1})  # fmt: skip
    fit(whole)
    end = params(tmp_path / "whole" / "checkpoint_epoch_001.pth")
    with pytest.raises(AssertionError):
        whole_moved = {k: end[k] - start[k] for k in moved["two"]}
        assert_close_weights(whole_moved, moved["two"], rtol=1e-3)


def resume_copy(run_dir: Path, dest: Path) -> Path:
    """`run_dir` as it was after epoch 1: the epoch 2 checkpoint is gone."""
    shutil.copytree(run_dir, dest)
    (dest / "checkpoint_epoch_002.pth").unlink()
    return dest


def test_two_rank_checkpoint_resumes_on_two_ranks_and_on_one(two_ranks, demo48, tmp_path):
    again = resume_copy(two_ranks, tmp_path / "again")
    out = run(torchrun("train", "--config", str(write_config(tmp_path, config(demo48, again)))))
    assert f"Loaded checkpoint '{again}/checkpoint_epoch_001.pth' (epoch 1)" in out.stdout
    assert_same_weights(
        load_checkpoint(again / "checkpoint_epoch_002.pth")["model"],
        load_checkpoint(two_ranks / "checkpoint_epoch_002.pth")["model"],
    )
    one = resume_copy(two_ranks, tmp_path / "one")
    with pytest.raises(CheckpointError, match=r"global batch of 16 .* set train.accum_steps=2"):
        fit(config(demo48, one))
    fit(config(demo48, one, train={"accum_steps": 2}))
    assert_close_weights(
        params(one / "checkpoint_epoch_002.pth"), params(two_ranks / "checkpoint_epoch_002.pth")
    )
    a, b = read_metrics(one / "metrics.jsonl"), read_metrics(two_ranks / "metrics.jsonl")
    assert a[0] == b[0] and a[1]["step"] == b[1]["step"] == 2 * STEPS


def test_sigterm_stops_every_rank_at_one_step_and_resumes_on_one_process(demo48, tmp_path):
    # Batch 4 a rank: 6 steps an epoch, time for the signal to land mid-epoch.
    data, every_step = {"batch_size": 4}, {"log_every": 1}
    cfg = config(demo48, tmp_path / "run", data=data, train=every_step)
    proc = subprocess.Popen(
        torchrun("train", "--config", str(write_config(tmp_path, cfg))),
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
    )  # fmt: skip
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "epoch 1 step 1/6" in line:
            proc.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
            break
    t0 = time.monotonic()
    rest, _ = proc.communicate(timeout=120)
    # torchrun SIGKILLs workers still running 30 s after passing the signal on: a rank that
    # waited for another in a collective would take that long.
    assert time.monotonic() - t0 < 25
    log = "".join(lines) + rest
    stopped = [x for x in log.splitlines() if x.startswith("Received SIGTERM at epoch 1 step")]
    assert len(stopped) == 1, log[-3000:]  # one line: rank 0's
    step = int(stopped[0].split(" step ")[1].split(":")[0])
    assert 1 <= step < 6
    assert load_checkpoint(last_path(tmp_path / "run"))["step_in_epoch"] == step

    # The 2-rank mid-epoch checkpoint goes on in 1 process accumulating 2 micro-batches, and
    # ends where 1 process doing so from the start ends.
    accum = {"accum_steps": 2, **every_step}
    resumed = fit(config(demo48, tmp_path / "run", data=data, train=accum))
    straight = fit(config(demo48, tmp_path / "straight", data=data, train=accum))
    assert resumed["train_images"] == straight["train_images"] == 48
    assert_close_weights(
        params(tmp_path / "run" / "checkpoint_epoch_002.pth"),
        params(tmp_path / "straight" / "checkpoint_epoch_002.pth"),
    )


def worker_pid(parent: int, rank: int) -> int | None:
    """The PID of the worker torchrun (`parent`) started as `rank`, from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0") if ppid == parent else []
        except (OSError, IndexError, ValueError):
            continue
        if f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds workers in /proc")
def test_killed_rank_restarts_the_group_which_finishes_the_run(two_ranks, demo48, tmp_path):
    cfg = config(demo48, tmp_path / "run", train={"save_every_steps": 1, "log_every": 1})
    proc = subprocess.Popen(
        torchrun("train", "--config", str(write_config(tmp_path, cfg)), max_restarts=1),
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
    )  # fmt: skip
    lines, killed = [], None
    for line in proc.stdout:
        lines.append(line)
        if killed is None and f"epoch 1 step 2/{STEPS}" in line:
            killed = worker_pid(proc.pid, rank=1)
            os.kill(killed, signal.SIGKILL)
    proc.wait(timeout=120)
    log = "".join(lines)
    assert killed is not None, log[-3000:]
    assert proc.returncode == 0, log[-3000:]
    assert "Loaded checkpoint" in log and "(epoch 1, step " in log  # resumed mid-epoch
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [without_timing(r) for r in records] == [
        without_timing(r) for r in read_metrics(two_ranks / "metrics.jsonl")
    ]
    assert_same_weights(
        load_checkpoint(tmp_path / "run" / "checkpoint_epoch_002.pth")["model"],
        load_checkpoint(two_ranks / "checkpoint_epoch_002.pth")["model"],
    )


def test_half_set_torchrun_environment_is_one_clear_error(demo48, tmp_path, monkeypatch, capsys):
    for name in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    path = write_config(tmp_path, config(demo48, tmp_path / "run"))
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "rn50: error: RANK, WORLD_SIZE are set but LOCAL_RANK, MASTER_ADDR, MASTER_PORT are "
        "not; launch with torchrun (e.g. torchrun --nproc_per_node=8 -m rn50 train ...), which "
        "sets them all, or unset them for a single process"
    ]
    assert not (tmp_path / "run").exists()


def test_sync_bn_on_cpus_is_refused_and_compile_keeps_plain_weights(tmp_path, monkeypatch):
    import rn50.train.loop as engine
    from rn50.errors import ConfigError

    cfg = config((tmp_path, ""), tmp_path / "run", model={"sync_bn": True})
    rt = engine.make_runtime(cfg)
    model = engine.build_model(cfg.model)
    assert engine.parallelize(model, cfg, rt) == (model, model)  # one process: no effect
    monkeypatch.setattr(engine.dist, "world_size", lambda: 2)
    with pytest.raises(ConfigError, match="model.sync_bn needs CUDA devices"):
        engine.parallelize(model, cfg, rt)
    # Compiling ResNet-18 takes minutes on 2 CPU cores, so only the wiring is checked here:
    # in place, before DDP, leaving the state_dict keys plain.
    monkeypatch.setattr(engine.dist, "world_size", lambda: 1)
    calls = []
    monkeypatch.setattr(model, "compile", lambda **options: calls.append(options))
    cfg.train.compile, cfg.model.sync_bn = True, False
    # static shapes: one graph per resolution, never dynamic ones
    assert engine.parallelize(model, cfg, rt) == (model, model) and calls == [{"dynamic": False}]


def test_scale_lr_follows_the_per_256_rule(tmp_path):
    from rn50.errors import ConfigError
    from rn50.optim import scaled_lr
    from rn50.runlog import ConsoleLog

    cfg = config((tmp_path, ""), tmp_path / "run", optim={"max_lr": 0.1, "scale_lr": True})
    assert scaled_lr(cfg.optim, 1024, ConsoleLog()).max_lr == pytest.approx(0.4)
    assert scaled_lr(cfg.optim, 64, ConsoleLog()).max_lr == pytest.approx(0.025)
    cfg.optim.scale_lr = False
    assert scaled_lr(cfg.optim, 1024, ConsoleLog()).max_lr == 0.1
    with pytest.raises(ConfigError, match="optim.scale_lr must be false with optim.max_lr: auto"):
        config((tmp_path, ""), tmp_path / "run", optim={"max_lr": "auto", "scale_lr": True})


def test_collective_tensors_outlive_the_process_group():
    # torch 2.4's gloo can deadlock in the group's teardown when one of its worker threads
    # drops the last reference to a reduced tensor that Python had let go of (it then waits
    # for the GIL that the tearing-down thread holds): rn50 keeps the latest ones alive.
    import weakref

    from rn50 import distributed
    from rn50.metrics import Meter

    torch.distributed.init_process_group(
        "gloo", store=torch.distributed.HashStore(), rank=0, world_size=1
    )
    try:
        t = torch.ones(3)
        ref = weakref.ref(t)
        assert distributed.all_reduce(t) is t and distributed.any_each(True, False) == [True, False]
        meter = Meter(torch.device("cpu"))
        sums = weakref.ref(meter.all_reduce().sums)
        del t, meter
        assert ref() is not None and sums() is not None
    finally:
        torch.distributed.destroy_process_group()
