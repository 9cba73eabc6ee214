"""Nothing a user has is lost or overwritten: what a kill leaves in a run dir is put right at
the next start (every window of an epoch's save sequence, constructed and by real SIGKILLs),
temporary files of killed writers are removed (train and prepare), and an unreadable
checkpoint is never written over."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rn50.checkpoint import (
    best_path,
    epoch_path,
    last_path,
    load_checkpoint,
    load_resume_state,
    save_checkpoint,
)
from rn50.cli import main
from rn50.errors import CheckpointError
from rn50.fileio import TEMP_NAME, host_name, pid_alive, stale_temps, temp_path
from rn50.runlog import read_metrics
from rn50.train.loop import Trainer, fit
from tests.conftest import assert_same_run, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def config18(tiny_data, run_dir, epochs=2, **train):
    """ResNet-18 in fp32 on tiny_data (6 steps an epoch), last.pth every 2 steps."""
    return tiny_config(
        tiny_data,
        run_dir,
        model={"arch": "resnet18"},
        train={"epochs": epochs, "save_every_steps": 2, "precision": "fp32", **train},
    )


@pytest.fixture(scope="module")
def run2(tiny_data, tmp_path_factory):
    """A finished 2-epoch ResNet-18 run (its files are copied, never changed)."""
    run_dir = tmp_path_factory.mktemp("run2") / "run"
    fit(config18(tiny_data, run_dir))
    return run_dir


@pytest.fixture(scope="module")
def run1(tiny_data, tmp_path_factory):
    """A finished 1-epoch ResNet-18 run: the reference of the real kills."""
    run_dir = tmp_path_factory.mktemp("run1") / "run"
    fit(config18(tiny_data, run_dir, epochs=1))
    return run_dir


def dead_pid() -> int:
    """The id of a process that has ended (ids are not reused this soon)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def temps_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if TEMP_NAME.match(p.name))


# -- temporary files of killed writers ------------------------------------------------------


def test_temp_names_carry_this_host_and_process():
    path = temp_path("/x/run/checkpoint_epoch_001.pth")
    assert path.parent == Path("/x/run")
    assert path.name == f".checkpoint_epoch_001.pth.tmp-{host_name()}-{os.getpid()}"
    m = TEMP_NAME.match(path.name)
    assert (m["name"], m["host"], int(m["pid"])) == (
        "checkpoint_epoch_001.pth", host_name(), os.getpid()
    )
    assert "/" not in host_name() and host_name()


def test_only_temps_of_dead_writers_on_this_host_are_stale(tmp_path):
    dead = dead_pid()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not pid_alive(dead) and pid_alive(alive.pid) and pid_alive(os.getpid())
        host = host_name()
        stale = [
            f".checkpoint_epoch_001.pth.tmp{dead}",  # written before names had the host
            f".model_best.pth.tmp-{host}-{dead}",
            f".last.pth.tmp-{host}-{dead}",
            f".n01440764_10026.JPEG.tmp{dead}",  # data prepare's
        ]
        kept = [
            f".last.pth.tmp-{host}-{os.getpid()}",  # this process is writing it
            f".summary.json.tmp-{host}-{alive.pid}",  # another live process is
            f".curves.png.tmp{alive.pid}",
            f".metrics.jsonl.tmp-other-node-7-{dead}",  # another machine's: its pid says nothing
            "checkpoint_epoch_001.pth",
            ".hidden",
            f"notes.tmp{dead}",  # not hidden: not a temporary name
            f".config.yaml.tmp-{host}-99999999999999999999",  # no such process id
        ]
        for name in stale + kept:
            (tmp_path / name).write_bytes(b"12345")
        (tmp_path / f".folder.tmp{dead}").mkdir()  # only files are removed
        assert [p.name for p in stale_temps(tmp_path)] == sorted(
            stale + [f".config.yaml.tmp-{host}-99999999999999999999"]
        )
    finally:
        alive.kill()
        alive.wait()


def plant_temps(folder: Path, names: list[str], size: int = 1000) -> list[str]:
    """Files named as killed writers leave them (a dead pid, this host); returns the names."""
    dead = dead_pid()
    planted = []
    for i, name in enumerate(names):
        tmp = folder / (f".{name}.tmp{dead}" if i % 2 else f".{name}.tmp-{host_name()}-{dead}")
        tmp.write_bytes(b"x" * size)
        planted.append(tmp.name)
    return planted


def test_train_start_removes_temps_of_killed_writers_and_says_so(run2, tiny_data, tmp_path,
                                                                  capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(run2, run_dir)
    planted = plant_temps(run_dir, ["checkpoint_epoch_002.pth", "model_best.pth", "last.pth"])
    mine = temp_path(run_dir / "notes.txt")  # this process's: a live writer
    mine.write_bytes(b"{")
    fit(config18(tiny_data, run_dir))  # already complete: the start alone
    out = capsys.readouterr().out
    assert f"Removed 3 temporary file(s) of killed writers (0.0 MB) in {run_dir}: " in out
    assert all(name in out for name in planted)
    assert temps_in(run_dir) == [mine.name]


def test_prepare_start_removes_temps_of_killed_writers_and_says_so(tiny_data, tmp_path, capsys):
    dst = tmp_path / "prepared"
    args = ["data", "prepare", str(tiny_data), str(dst), "--workers", "1"]
    assert main(args) == 0
    folder = dst / "train" / "class_1"
    planted = plant_temps(folder, ["img_003.jpg", "img_004.jpg"], size=250_000)
    planted += plant_temps(dst, ["LOC_synset_mapping.txt"])
    (folder / "img_004.jpg").unlink()  # the file whose write was killed: done again
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"Removed 3 temporary file(s) of killed writers (0.5 MB) in {dst}: " in out
    assert all(name in out for name in planted)
    assert temps_in(dst) == []
    assert (folder / "img_004.jpg").read_bytes() == (tiny_data / "train/class_1/img_004.jpg"
                                                     ).read_bytes()


# -- a kill in each window of an epoch's save sequence, as the files it leaves --------------

def lines_of(run_dir: Path) -> list[str]:
    return (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)


def fake_last(run_dir: Path, epoch: int = 2, step: int = 3) -> None:
    """last.pth as the rolling save of `epoch` step `step` writes it (from epoch 1's file)."""
    state = load_checkpoint(epoch_path(run_dir, 1))
    state.pop("metrics")
    global_step = (epoch - 1) * 6 + step
    state.update(epoch=epoch, step_in_epoch=step, global_step=global_step,
                 samples_in_epoch=step * 8, meter=torch.zeros(5, dtype=torch.float64))
    state["scheduler"].update(last_epoch=global_step, _step_count=global_step + 1)
    save_checkpoint(state, last_path(run_dir))


def half_write(path: Path, data: bytes) -> None:
    """The temporary file of a writer killed halfway through writing `path`."""
    (path.parent / f".{path.name}.tmp-{host_name()}-{dead_pid()}").write_bytes(
        data[: len(data) // 2]
    )


def kill_state(run_dir: Path, window: str, best_epoch: int) -> None:
    """Change a finished 2-epoch run dir, whose best is `best_epoch`, into what a kill in
    `window` of epoch 2 leaves."""
    one, two = lines_of(run_dir)
    ckpt2, best = epoch_path(run_dir, 2), best_path(run_dir)
    shutil.copyfile(epoch_path(run_dir, 1), best)  # model_best.pth before epoch 2's copy
    if window in ("mid_epoch", "metrics_torn", "metrics_torn_no_last", "epoch_checkpoint"):
        ckpt2.unlink()
        (run_dir / "summary.json").unlink()
    if window == "mid_epoch":
        (run_dir / "metrics.jsonl").write_text(one)
    if window in ("metrics_torn", "metrics_torn_no_last"):
        (run_dir / "metrics.jsonl").write_text(one + two[: len(two) // 2])
    if window in ("mid_epoch", "metrics_torn", "epoch_checkpoint", "best_copy", "best_missing",
                  "last_not_removed"):
        fake_last(run_dir)
    if window == "epoch_checkpoint":
        half_write(ckpt2, epoch_path(run_dir, 1).read_bytes())
    if window == "best_copy":
        half_write(best, ckpt2.read_bytes())
    if window == "best_missing":  # the first best copy of a run killed: none at all
        best.unlink()
    if window in ("last_not_removed", "curves", "summary", "metrics_line_missing"):
        shutil.copyfile(epoch_path(run_dir, best_epoch), best)  # epoch 2's copy was made
    if window == "curves":
        half_write(run_dir / "curves.png", (run_dir / "curves.png").read_bytes())
        (run_dir / "curves.png").unlink()
    if window == "summary":
        half_write(run_dir / "summary.json", (run_dir / "summary.json").read_bytes())
        (run_dir / "summary.json").unlink()
    if window == "metrics_line_missing":  # a checkpoint saved before its line
        (run_dir / "metrics.jsonl").write_text(one)
    if window == "nothing_saved":  # killed in epoch 1 after its line, before its checkpoint
        for f in (epoch_path(run_dir, 1), ckpt2, best, run_dir / "summary.json"):
            f.unlink()
        (run_dir / "metrics.jsonl").write_text(one)


# window: (epochs done after the start, the start's lines, last.pth left)
WINDOWS = {
    "mid_epoch": (1, [], True),
    "metrics_torn": (1, ["metrics.jsonl: dropped a line cut short by a kill"], True),
    "metrics_torn_no_last": (1, ["metrics.jsonl: dropped a line cut short by a kill"], False),
    "epoch_checkpoint": (1, ["Removed 1 temporary file(s)", "metrics.jsonl: dropped the "
                             "line(s) of epoch 2, which no checkpoint holds"], True),
    "best_copy": (2, ["Removed 1 temporary file(s)", "Removed {last}: "
                      "'checkpoint_epoch_002.pth' is further along"], False),
    "best_missing": (2, ["Restored {best} from '{source}', epoch {b} (50.00% val top-1 in "
                         "metrics.jsonl): it is missing"], False),
    "last_not_removed": (2, ["Removed {last}: 'checkpoint_epoch_002.pth' is further along"],
                         False),
    "curves": (2, ["Removed 1 temporary file(s)"], False),
    "summary": (2, ["Removed 1 temporary file(s)"], False),
    "metrics_line_missing": (2, ["metrics.jsonl: restored the line of epoch 2 from its "
                                 "checkpoint"], False),
    "nothing_saved": (0, ["metrics.jsonl: dropped the line(s) of epoch 1"], False),
}


@pytest.mark.parametrize("best_epoch", [1, 2])
@pytest.mark.parametrize("window", sorted(WINDOWS))
def test_a_start_repairs_what_a_kill_in_each_window_leaves(
    run2, tiny_data, tmp_path, capsys, window, best_epoch
):
    run_dir = tmp_path / "run"
    shutil.copytree(run2, run_dir)
    # Which epoch metrics.jsonl (and epoch 2's checkpoint) names as best: both cases.
    records = read_metrics(run_dir / "metrics.jsonl")
    for r in records:
        r["val_top1"] = 50.0 if r["epoch"] == best_epoch else 40.0
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    state = load_checkpoint(epoch_path(run_dir, 2))
    state["metrics"]["val_top1"] = records[1]["val_top1"]
    save_checkpoint(state, epoch_path(run_dir, 2))
    full = lines_of(run_dir)
    kill_state(run_dir, window, best_epoch)
    done, said, last_left = WINDOWS[window]
    if window == "best_copy" and best_epoch == 2:  # the issue: the rerun saw nothing to do
        said = [*said, "Restored {best} from '{source}', epoch 2", "it holds epoch 1"]

    trainer = Trainer(config18(tiny_data, run_dir))
    if done == 2:
        trainer.fit()  # "Training already complete": curves.png and summary.json again
    out = capsys.readouterr().out

    assert lines_of(run_dir) == full[:done]
    best = best_path(run_dir)
    if done:
        expected = min(best_epoch, done)
        assert best.read_bytes() == epoch_path(run_dir, expected).read_bytes()
    else:
        assert not best.exists()
    assert last_path(run_dir).exists() == last_left
    assert temps_in(run_dir) == []
    if done == 2:
        assert "Training already complete" in out
        assert (run_dir / "curves.png").stat().st_size > 1000
        assert json.loads((run_dir / "summary.json").read_text())["best_epoch"] == best_epoch
    names = {"last": last_path(run_dir), "best": best, "b": best_epoch,
             "source": epoch_path(run_dir, best_epoch)}
    for line in said:
        assert line.format(**names) in out, out


def test_best_epoch_whose_checkpoint_is_gone_is_reported(run2, tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(run2, run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    records[0]["val_top1"], records[1]["val_top1"] = 60.0, 30.0  # epoch 1 is the best
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    best_path(run_dir).unlink()
    epoch_path(run_dir, 1).unlink()  # a user cleaning up old epochs
    fit(config18(tiny_data, run_dir))
    err = capsys.readouterr().err
    assert (f"model_best.pth should hold epoch 1 (60.00% val top-1 in metrics.jsonl), but "
            f"'{epoch_path(run_dir, 1)}' is gone; model_best.pth is left as it is") in err
    assert not best_path(run_dir).exists()


def test_unreadable_model_best_is_kept_aside_and_copied_again(run2, tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(run2, run_dir)
    best = best_path(run_dir)
    held = load_checkpoint(best)["epoch"]
    best.write_bytes(b"\x00 bit rot")
    fit(config18(tiny_data, run_dir))
    captured = capsys.readouterr()
    assert best.read_bytes() == epoch_path(run_dir, held).read_bytes()
    aside = run_dir / "model_best.pth.unreadable"
    assert aside.read_bytes() == b"\x00 bit rot"
    assert f"kept it as '{aside}'" in captured.err
    assert "it was unreadable" in captured.out


# -- real kills: the process dies in each window of its last epoch's save sequence ----------

CHILD = r"""
import os, signal, sys
import rn50.checkpoint as ckpt, rn50.plots as plots, rn50.record as record
import rn50.runlog as runlog, rn50.train.loop as loop
from rn50.fileio import temp_path

window, config = sys.argv[1], sys.argv[2]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def half(path, data):
    with open(temp_path(path), "wb") as f:
        f.write(data)
        f.flush()
    die()

if window == "epoch_checkpoint":
    save = ckpt.torch.save
    def torch_save(obj, f, *args, **kwargs):
        if "checkpoint_epoch_" in getattr(f, "name", ""):
            f.write(b"PK half a checkpoint")
            f.flush()
            die()
        return save(obj, f, *args, **kwargs)
    ckpt.torch.save = torch_save
elif window == "best_copy":
    def copyfileobj(fin, fout, length=0):
        fout.write(fin.read(100_000))
        fout.flush()
        die()
    ckpt.shutil.copyfileobj = copyfileobj
elif window == "last_not_removed":
    copy = loop.copy_checkpoint
    loop.copy_checkpoint = lambda src, dst: (copy(src, dst), die())
elif window == "metrics_torn":
    def append_metrics(self, record):
        with open(self.metrics_path, "a") as f:
            f.write('{"epoch": 1, "step": 6, "l')
        die()
    runlog.RunLog.append_metrics = append_metrics
elif window == "curves":
    plots.save_curves = lambda metrics, steps, path, title=None: half(path, b"\x89PNG")
elif window == "summary":
    record.write_summary = lambda run_dir, *args, **kwargs: half(run_dir / "summary.json", b"{")

from rn50.cli import main
sys.exit(main(["train", "--config", config]))
"""


@pytest.mark.parametrize(
    "window",
    ["metrics_torn", "epoch_checkpoint", "best_copy", "last_not_removed", "curves", "summary"],
)
def test_sigkill_in_each_save_window_then_rerun_leaves_a_whole_run(run1, tiny_data, tmp_path,
                                                                    window):
    run_dir = tmp_path / "run"
    config_file = tmp_path / "run.yaml"
    config_file.write_text(config18(tiny_data, run_dir, epochs=1).to_yaml())
    killed = subprocess.run([sys.executable, "-c", CHILD, window, str(config_file)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    saved = epoch_path(run_dir, 1).exists()
    assert saved == (window not in ("metrics_torn", "epoch_checkpoint"))

    cmd = [sys.executable, "-m", "rn50", "train", "--config", str(config_file)]
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert ("Training already complete" in rerun.stdout) == saved

    assert_same_run(run_dir, run1)
    assert best_path(run_dir).read_bytes() == epoch_path(run_dir, 1).read_bytes()
    assert not last_path(run_dir).exists()
    assert temps_in(run_dir) == []
    assert (run_dir / "curves.png").exists() and (run_dir / "summary.json").exists()


# -- an unreadable checkpoint is never written over -----------------------------------------

def corrupt(path: Path, kind: str) -> None:
    """Make the checkpoint at `path` unreadable in one of the ways disks and users do."""
    if kind == "garbage":
        path.write_bytes(b"\x00garbage from a dying disk")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign":  # a torch file, not an rn50 checkpoint
        torch.save({"state_dict": {}}, path)


CORRUPTIONS = ["garbage", "truncated", "empty", "foreign"]


@pytest.mark.parametrize("kind", CORRUPTIONS)
@pytest.mark.parametrize("only", ["checkpoint_epoch_001.pth", "last.pth", "both"])
def test_no_readable_checkpoint_is_refused_and_nothing_is_touched(
    run2, tiny_data, tmp_path, capsys, kind, only
):
    run_dir = tmp_path / "run"
    shutil.copytree(run2, run_dir)
    fake_last(run_dir)
    keep = {"checkpoint_epoch_001.pth", "last.pth"} if only == "both" else {only}
    for name in ("checkpoint_epoch_001.pth", "checkpoint_epoch_002.pth", "last.pth",
                 "model_best.pth"):
        if name in keep:
            corrupt(run_dir / name, kind)
        else:
            (run_dir / name).unlink()
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    config_file = tmp_path / "run.yaml"
    config_file.write_text(config18(tiny_data, run_dir).to_yaml())
    rc = main(["train", "--config", str(config_file)])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rn50: error: "), err
    assert "no readable checkpoint is left to resume from" in err
    assert "move the file(s) away to start this run again from scratch, or use a new " \
           "train.checkpoint_dir" in err
    for name in keep:
        assert f"'{run_dir / name}'" in err
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()
             and not p.name.startswith("training_log_")}
    assert after == {k: v for k, v in before.items() if not k.startswith("training_log_")}


@pytest.mark.parametrize("kind", CORRUPTIONS)
@pytest.mark.parametrize("bad", ["checkpoint_epoch_002.pth", "last.pth"])
def test_unreadable_newest_is_kept_aside_and_the_next_readable_resumed(
    run2, tmp_path, kind, bad
):
    run_dir = tmp_path / "run"
    shutil.copytree(run2, run_dir)
    fake_last(run_dir)
    corrupt(run_dir / bad, kind)
    broken = (run_dir / bad).read_bytes()
    warnings: list[str] = []
    path, state = load_resume_state(run_dir, warnings.append)
    # last.pth (epoch 2 step 3) is further along than epoch 1; epoch 2's file than both.
    expected = "last.pth" if bad == "checkpoint_epoch_002.pth" else "checkpoint_epoch_002.pth"
    assert path.name == expected
    aside = run_dir / f"{bad}.unreadable"
    assert aside.read_bytes() == broken and not (run_dir / bad).exists()
    assert len(warnings) == 1
    assert warnings[0].endswith(f"; kept it as '{aside}' and resuming from '{path}'")
    assert "falling back" not in warnings[0]
    # Another bad file of that name later is kept beside the first, not over it.
    (run_dir / bad).write_bytes(b"again")
    load_resume_state(run_dir, warnings.append)
    assert (run_dir / f"{bad}.unreadable.1").read_bytes() == b"again"
    assert aside.read_bytes() == broken


def test_unreadable_newest_epoch_is_not_overwritten_by_the_resumed_run(
    run2, tiny_data, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    shutil.copytree(run2, run_dir)
    corrupt(epoch_path(run_dir, 2), "truncated")
    broken = epoch_path(run_dir, 2).read_bytes()
    cfg = config18(tiny_data, run_dir)
    fit(cfg)  # resumes from epoch 1 and writes epoch 2 again
    captured = capsys.readouterr()
    assert f"Loaded checkpoint '{epoch_path(run_dir, 1)}' (epoch 1)" in captured.out
    assert (run_dir / "checkpoint_epoch_002.pth.unreadable").read_bytes() == broken
    assert load_checkpoint(epoch_path(run_dir, 2))["epoch"] == 2
    assert_same_run(run_dir, run2)


def test_a_stopped_run_names_no_unreadable_file_as_good(tmp_path):
    save_checkpoint({"model": {}, "global_step": 6}, epoch_path(tmp_path, 1))
    corrupt(epoch_path(tmp_path, 1), "garbage")
    with pytest.raises(CheckpointError, match="no readable checkpoint is left"):
        load_resume_state(tmp_path, print)
    assert epoch_path(tmp_path, 1).read_bytes() == b"\x00garbage from a dying disk"


def test_a_fresh_start_never_writes_over_a_run(run2, tiny_data, tmp_path, capsys):
    """train.resume false in a run dir that holds a run: one line, exit 2, every file kept."""
    run_dir = tmp_path / "run"
    shutil.copytree(run2, run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    config = tmp_path / "c.yaml"
    config.write_text(config18(tiny_data, run_dir, resume=False).to_yaml())
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.resume is false" in err, err
    assert "checkpoint_epoch_001.pth" in err and "write over" in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_a_run_dir_trains_one_run_at_a_time(run2, tiny_data, tmp_path, capsys):
    """While one rn50 train holds a run dir, a second is refused with one line and changes
    nothing there; once the first ends, the run dir is free again."""
    from rn50.fileio import lock_run_dir

    run_dir = tmp_path / "run"
    shutil.copytree(run2, run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    config = tmp_path / "c.yaml"
    config.write_text(config18(tiny_data, run_dir).to_yaml())
    held = lock_run_dir(run_dir)
    try:
        assert main(["train", "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is in use by another rn50 run" in err, err
        assert f"process {os.getpid()}" in err
        after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
        assert {k: v for k, v in after.items() if k != ".rn50.lock"} == {
            k: v for k, v in before.items() if k != ".rn50.lock"}
    finally:
        held.close()
    assert main(["train", "--config", str(config)]) == 0  # complete already: nothing to do
    assert "Training already complete" in capsys.readouterr().out
