"""What a checkpoint holds, choosing the one to resume from, and restoring a run from it.

A run's state is what the loop's Trainer holds: `module` (the plain network), `ema`,
`optimizer`, `scheduler`, `scaler`, `progress`, `cfg`, `index` and `global_batch`. These
functions read them from, and put them back into, any object with those attributes.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rn50 import distributed as dist
from rn50.checkpoint import (
    load_checkpoint,
    load_resume_state,
    load_weights,
    match_classes,
    plain_state,
    save_checkpoint,
)
from rn50.config import Config, TrainConfig
from rn50.errors import CheckpointError
from rn50.optim import load_optimizer_state


@dataclass
class Progress:
    """Where the run is: last finished epoch and the best validation top-1 (%) so far."""

    epoch: int = 0
    best_top1: float = -1.0
    best_epoch: int = 0


@dataclass
class Resumed:
    """Where a restored run goes on: its progress, the optimizer steps already done in the
    epoch it was saved in (0: a whole epoch was done), and that epoch's meter sums (rank 0)."""

    progress: Progress
    start_step: int
    meter_sums: torch.Tensor | None


class Preloaded:
    """A checkpoint file already read (train.initial_model_path, by the check before any
    work: rn50.cli.common.check_run_files), handed on so that it is read once.

    `take()` gives the state away and keeps no reference to it, so the frames that pass
    this on (the command's, fit's) do not hold the weights for the whole run.
    """

    def __init__(self, path: str | Path, state: dict):
        self.path, self._state = Path(path), state

    def take(self) -> dict | None:
        """The state read from `path`, the first time; None after."""
        state, self._state = self._state, None
        return state


def initial_weights(
    model: nn.Module, cfg: TrainConfig, log, classes=None, preloaded: Preloaded | None = None
) -> None:
    """Load the saved initial weights (train.initial_model_path, default the run dir's
    initial_model.pth), or save these ones on the first start. `classes`: the dataset's
    class ids, which a file that stores its own (a trained checkpoint) must equal.
    `preloaded`: that file, when a check read it already (it is not read again).

    Raises CheckpointError when the file does not fit the model or the classes.
    """
    path = Path(cfg.initial_model_path or Path(cfg.checkpoint_dir) / "initial_model.pth")
    given = preloaded.take() if preloaded is not None else None  # (given away either way)
    if path.exists():
        same = given is not None and preloaded.path == path
        state = given if same else load_checkpoint(path)
        fix = "delete the file or set train.initial_model_path to another path"
        if classes is not None:
            match_classes(state, classes, path, fix)
        load_weights(model, state["model"], path, f"check model.arch/num_classes, or {fix}")
        log.log(f"Loaded initial weights from {path}")
    elif dist.is_main():
        save_checkpoint({"model": model.state_dict()}, path)
        log.log(f"Saved initial weights to {path}")


def find_resume_state(run_dir: Path, warn) -> tuple[Path, dict] | None:
    """The checkpoint to resume from, loaded: rank 0 picks it, every rank loads that same file.

    Raises CheckpointError when another rank cannot read rank 0's choice.
    """
    found = load_resume_state(run_dir, warn) if dist.is_main() else None
    path = dist.broadcast_object(str(found[0]) if found else None)
    if found is not None or path is None:
        return found
    try:
        return Path(path), load_checkpoint(path)
    except CheckpointError:
        raise CheckpointError(
            f"rank {dist.rank()} cannot read '{path}', which rank 0 resumes from; put "
            f"train.checkpoint_dir on a filesystem that every machine of the run shares"
        ) from None


def checkpoint_state(run, epoch: int, step: int, meter_sums: torch.Tensor | None = None) -> dict:
    """Everything needed to continue `run` after `step` optimizer steps of epoch `epoch`
    (step 0: after the whole of epoch `epoch`); `meter_sums`: the epoch's sums over all ranks.

    "model" holds the run's model: the EMA weights when train.ema is on (what eval,
    predict and export read), and then "train_model" the raw weights that training
    continues from.
    """
    ema = run.ema
    weights = {"model": run.module.state_dict()}  # unwrapped: loads anywhere
    if ema is not None:
        weights = {
            "model": ema.module.state_dict(),
            "train_model": run.module.state_dict(),
            "ema_steps": ema.steps,
        }
    return {
        "epoch": epoch,
        "step_in_epoch": step,
        "samples_in_epoch": step * run.global_batch,  # images all ranks together consumed
        "global_batch": run.global_batch,
        "world_size": dist.world_size(),
        "global_step": run.scheduler.last_epoch,  # the scheduler counts optimizer steps
        **weights,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": plain_state(run.scheduler.state_dict()),
        "scaler": run.scaler.state_dict(),
        "meter": meter_sums.cpu() if meter_sums is not None else None,
        "rng": torch.get_rng_state(),
        "best_top1": run.progress.best_top1,
        "best_epoch": run.progress.best_epoch,
        "config": run.cfg.to_dict(),
        "classes": list(run.index.classes),
        "names": list(run.index.names),
    }


def check_global_batch(state: dict, path: Path, cfg: Config, global_batch: int) -> None:
    """A run resumes only with the global batch it was trained with: the schedule and the
    images of every step depend on it, not on how many processes share it.

    Raises CheckpointError naming the setting that restores it.
    """
    saved = state.get("global_batch") or state["config"]["data"]["batch_size"]  # older files
    if saved == global_batch:
        return
    b, world, accum = cfg.data.batch_size, dist.world_size(), cfg.train.accum_steps
    if saved % (b * world) == 0:
        fix = f"set train.accum_steps={saved // (b * world)}"
    elif saved % (world * accum) == 0:
        fix = f"set data.batch_size={saved // (world * accum)}"
    else:
        fix = f"use a number of processes that divides {saved}"
    raise CheckpointError(
        f"'{path}' was trained with a global batch of {saved} images a step but this run's is "
        f"{global_batch} (data.batch_size {b} x {world} process(es) x train.accum_steps "
        f"{accum}); {fix} to resume it, or use a new train.checkpoint_dir"
    )


def restore(run, path: Path, state: dict, log) -> Resumed:
    """Put `run`'s weights, EMA, optimizer, schedule, scaler and RNG back where checkpoint
    `state` (read from `path`) left them (run_files.repair_run_dir then puts the run dir's
    records in line with it).

    Raises CheckpointError for another global batch or another schedule length.
    """
    check_global_batch(state, path, run.cfg, run.global_batch)
    planned, stored = run.scheduler.total_steps, state["scheduler"].get("total_steps")
    if stored != planned:
        raise CheckpointError(
            f"'{path}' belongs to a schedule of {stored} steps but this config plans "
            f"{planned} (train.epochs or the training images changed); restore them or use "
            f"a new train.checkpoint_dir"
        )
    fix = "resume with the config it was trained with, or use a new train.checkpoint_dir"
    load_weights(run.module, state.get("train_model", state["model"]), path, fix)
    restore_ema(run.ema, state, path, log)
    load_optimizer_state(run.optimizer, state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    if state.get("rng") is not None and dist.world_size() == 1:
        torch.set_rng_state(state["rng"])  # rank 0's: under torchrun each keeps its own
    step = state.get("step_in_epoch", 0)
    done = state["epoch"] - 1 if step else state["epoch"]  # epochs fully finished
    progress = Progress(done, state["best_top1"], state["best_epoch"])
    # The meter holds the sums of all ranks: one rank takes them up, or they count twice.
    sums = state.get("meter") if step and dist.is_main() else None
    where = f"epoch {state['epoch']}"
    if step:
        where += f", step {step}/{run.steps_per_epoch}"
    log.log(f"Loaded checkpoint '{path}' ({where})")
    if progress.best_epoch:
        log.log(f"Previous best accuracy: {progress.best_top1:.2f}% (epoch {progress.best_epoch})")
    else:
        log.log("Previous best accuracy: none yet (no epoch finished)")
    return Resumed(progress, step, sums)


def restore_ema(ema, state: dict, path: Path, log) -> None:
    """The average where the checkpoint has one; else it restarts from the raw weights."""
    if ema is None:
        return
    fix = "resume with the config it was trained with, or use a new train.checkpoint_dir"
    load_weights(ema.module, state["model"], path, fix)
    if "train_model" in state:
        ema.steps = state["ema_steps"]
    else:
        log.log("train.ema: the checkpoint has no average; it starts from its weights")


class RollingSaves:
    """When the rolling mid-epoch checkpoint (last.pth) is due: every train.save_every_steps
    optimizer steps and every train.save_every_minutes of wall time (0 turns either off)."""

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int):
        self.every_steps, self.every_minutes = cfg.save_every_steps, cfg.save_every_minutes
        self.steps_per_epoch = steps_per_epoch
        self.last = time.monotonic()

    def saved(self) -> None:
        """Restart the clock (a checkpoint was just written)."""
        self.last = time.monotonic()

    def clock_due(self) -> bool:
        """Whether save_every_minutes have passed since the last save."""
        minutes = (time.monotonic() - self.last) / 60
        return bool(self.every_minutes) and minutes >= self.every_minutes

    def due(self, step: int, clock: bool) -> bool:
        """Whether last.pth is written after `step`; `clock`: save_every_minutes passed."""
        by_steps = self.every_steps and step % self.every_steps == 0
        # The last step of an epoch is saved by the epoch checkpoint instead.
        return bool(by_steps or clock) and step < self.steps_per_epoch
