"""What the training step's host wait costs: rn50.train.step.train_step on synthetic data with
each way of refusing a NaN/inf loss (train.sync_check), eager and compiled.

- `step`: the loss's finiteness read on the host every step (a wait for the device);
- `deferred`: decided on the device (DeviceGuard: a copy of the state before, a
  conditional restore after), never waiting;
- `unchecked`: no check at all, never waiting (not a mode of rn50: the floor both are
  compared with).

`sync_cost` = 1 - step / unchecked, `deferred_cost` = 1 - deferred / unchecked (fractions
of the step's rate; negative means faster than the floor, i.e. noise).
"""

from __future__ import annotations

import time

import torch

from rn50.bench.model_step import compile_model, synthetic_batch, training_setup
from rn50.bench.plan import BenchPlan
from rn50.bench.timing import error_text, median, sync

VARIANTS = ("step", "deferred", "unchecked")


class _NoGuard:
    """A DeviceGuard that keeps nothing: train_step's deferred path without its restore."""

    def save(self) -> None:
        pass

    def restore_unless(self, finite: torch.Tensor) -> None:
        pass


def bench_sync(plan: BenchPlan, batch_size: int, precision: str, compiled: bool) -> dict:
    """img/s of train_step for each of VARIANTS (channels_last; plan.warmup untimed steps, then
    plan.repeats runs of plan.steps, the variants taking turns within each repeat); returns
    the setting, "img_s" {variant: median}, "runs" and `sync_ratios`' fields, or "error"."""
    from rn50.config import OptimConfig
    from rn50.optim import build_optimizer, build_scheduler
    from rn50.train.step import DeviceGuard, allow_skipped_steps, train_step

    record = {"batch_size": batch_size, "precision": precision, "compile": compiled,
              "resolution": plan.resolution}  # fmt: skip
    device = plan.device
    rt, model, scaler, criterion = training_setup(plan, precision, True)
    optimizer = build_optimizer(model, OptimConfig(max_lr=0.1), loss_scaling=rt.use_scaler)
    total = (plan.warmup + plan.repeats * plan.steps) * len(VARIANTS) + 1
    scheduler = build_scheduler(optimizer, OptimConfig(max_lr=0.1), total)
    allow_skipped_steps()
    images, targets = synthetic_batch(plan, batch_size, rt)
    guards = {"step": None, "deferred": DeviceGuard(model, optimizer), "unchecked": _NoGuard()}

    step_model = model

    def run(variant: str, steps: int) -> None:
        guard = guards[variant]
        for _ in range(steps):
            if guard is not None:
                guard.save()
            train_step(step_model, [(images, targets)], criterion, optimizer, scaler,
                       scheduler, rt, guard)  # fmt: skip

    runs: dict[str, list[float]] = {v: [] for v in VARIANTS}
    try:
        step_model = compile_model(model) if compiled else model
        for variant in VARIANTS:
            run(variant, plan.warmup)
        for _ in range(plan.repeats):
            for variant in VARIANTS:
                sync(device)
                t0 = time.perf_counter()
                run(variant, plan.steps)
                sync(device)
                runs[variant].append(batch_size * plan.steps / (time.perf_counter() - t0))
    except Exception as e:  # no C++ compiler for torch.compile, a precision the device lacks
        return {**record, "error": error_text(e)}
    rates = {v: median(runs[v]) for v in VARIANTS}
    return {**record, "img_s": rates, "runs": runs, **sync_ratios(rates)}


def sync_ratios(rates: dict[str, float]) -> dict:
    """{"sync_cost": 1 - step/unchecked, "deferred_cost": 1 - deferred/unchecked,
    "deferred_vs_step": deferred/step} from img/s of each variant."""
    return {
        "sync_cost": 1 - rates["step"] / rates["unchecked"],
        "deferred_cost": 1 - rates["deferred"] / rates["unchecked"],
        "deferred_vs_step": rates["deferred"] / rates["step"],
    }
