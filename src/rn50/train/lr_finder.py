"""LR range test: sweep the LR exponentially over real training steps and suggest max_lr.

The sweep runs the same `train_step` as training (model, data pipeline, precision,
channels_last, loss scaling, SGD settings) on a copy of the model, so the weights the run
starts from are never touched. Steps whose fp16 gradients overflowed were not applied by the
scaler; they are left out of the curve instead of being drawn as spikes.

Suggestion rules (`lr_finder.rule`):
- steepest: the LR where the smoothed loss falls fastest per decade of LR, looking only at
  the stretch before the loss minimum. The raw losses first go through a running median of
  5, so a lone spike (a bad batch, an early BatchNorm transient) cannot become the
  "steepest" point, and the moving average is run forward and backward so that it does not
  shift the curve to higher LRs.
- minimum: the LR of the lowest smoothed loss, divided by `min_divisor` (10).
- edge: the last LR before the loss (running median of 5) rises `edge_rise` (10%) above the
  lowest value it has reached: where training stops being stable.
- divergence: the LR at which the sweep diverged (smoothed loss above `diverge_factor` x its
  best, the stopping rule) divided by `divergence_divisor` (3).

From-scratch runs often show no descent at all within a short sweep (the network needs more
steps than the sweep has before its loss falls): the curve is flat, then climbs, and only
the last two rules read something real from it. README.md compares the rules on real runs.
"""

import copy
import csv
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from rn50.config import Config, LRFinderConfig
from rn50.data.batch import to_device
from rn50.optim import build_optimizer
from rn50.train.loaders import load_index, train_loader, warn_about_index
from rn50.train.resume import Preloaded, initial_weights
from rn50.train.runtime import Runtime, make_runtime
from rn50.train.step import allow_skipped_steps, train_step

SKIP_START = 0.1  # the first 10% of the sweep sits on the flat start of the curve


def sweep_lr(step: int, cfg: LRFinderConfig) -> float:
    """LR at sweep step `step` (0-based): start_lr * (end_lr/start_lr)^(step/(num_iter-1))."""
    return cfg.start_lr * (cfg.end_lr / cfg.start_lr) ** (step / (cfg.num_iter - 1))


def smooth(losses: list[float], beta: float) -> list[float]:
    """Exponential moving average with bias correction (so early values are not pulled to 0)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def zero_lag(values: list[float], beta: float) -> list[float]:
    """smooth() run forward, then backward over its output.

    A causal moving average lags: with beta 0.98 a feature of the curve shows up ~50 steps
    late, i.e. at a several times higher LR. Running it back over its own output cancels the
    shift, so the suggestion is read where the loss really fell.
    """
    return smooth(smooth(values, beta)[::-1], beta)[::-1]


def running_median(values: list[float], window: int = 5) -> list[float]:
    """Median of each value and its neighbours (window centred, shrunk at the ends)."""
    half = window // 2
    out = []
    for i in range(len(values)):
        part = sorted(values[max(0, i - half) : i + half + 1])
        out.append(part[len(part) // 2])
    return out


def finite_prefix(lrs: list[float], losses: list[float]) -> tuple[list[float], list[float]]:
    """The curve up to (not including) its first NaN or infinite loss."""
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            return lrs[:i], losses[:i]
    return lrs, losses


def first_rise(curve: list[float], factor: float) -> int:
    """Index of the first point above `factor` x the lowest value before it (else the last)."""
    best = math.inf
    for i, value in enumerate(curve):
        if value > factor * best:
            return i
        best = min(best, value)
    return len(curve) - 1


def suggest(lrs: list[float], losses: list[float], cfg: LRFinderConfig) -> tuple[float, int]:
    """The suggested max_lr and the index of the curve point it was read from.

    `losses` are raw per-step losses; a NaN/inf tail is cut off first.
    """
    lrs, losses = finite_prefix(lrs, losses)
    if len(losses) < 5:
        raise ValueError("the LR sweep has fewer than 5 usable points; lower lr_finder.start_lr")
    smoothed = zero_lag(running_median(losses), cfg.smooth_beta)
    i_min = min(range(len(smoothed)), key=smoothed.__getitem__)
    if cfg.rule == "minimum":
        return lrs[i_min] / cfg.min_divisor, i_min
    if cfg.rule == "edge":
        # The median alone: a moving average would pull the later blow-up back onto the edge.
        i = first_rise(running_median(losses), 1 + cfg.edge_rise)
        return lrs[max(i - 1, 0)], max(i - 1, 0)
    if cfg.rule == "divergence":
        i = first_rise(smooth(losses, cfg.smooth_beta), cfg.diverge_factor)
        return lrs[i] / cfg.divergence_divisor, i
    start = min(int(len(smoothed) * SKIP_START), max(i_min - 1, 0))
    if i_min - start < 2:  # no descent to speak of: fall back to the minimum rule
        return lrs[i_min] / cfg.min_divisor, i_min
    logs = [math.log10(lr) for lr in lrs]
    # d(loss)/d(log10 lr) by central differences inside [start, i_min].
    slopes = {
        i: (smoothed[i + 1] - smoothed[i - 1]) / (logs[i + 1] - logs[i - 1])
        for i in range(max(start, 1), min(i_min, len(smoothed) - 2) + 1)
    }
    best = min(slopes, key=slopes.__getitem__)
    return lrs[best], best


@dataclass
class Sweep:
    """What the range test measured: one point per applied step."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    skipped: int = 0  # fp16 steps the scaler did not apply (overflowing gradients)
    stop_reason: str = "finished"

    def smoothed(self, beta: float) -> list[float]:
        """The losses after the bias-corrected moving average of factor `beta`."""
        return smooth(self.losses, beta)


def range_test(model: nn.Module, loader, cfg: Config, rt: Runtime) -> Sweep:
    """Run the sweep on a copy of `model`; `model` itself is left exactly as it was."""
    f = cfg.lr_finder
    work = copy.deepcopy(model)
    work.train()
    optimizer = build_optimizer(work, cfg.optim, lr=f.start_lr, loss_scaling=rt.use_scaler)
    # The peak of a one-cycle run is taken at base_momentum; sweep with the same momentum.
    momentum = cfg.optim.base_momentum if cfg.optim.cycle_momentum else cfg.optim.momentum
    for group in optimizer.param_groups:
        group["momentum"] = momentum
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: sweep_lr(step, f) / f.start_lr
    )
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.use_scaler)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    sweep, best, avg = Sweep(), math.inf, 0.0
    allow_skipped_steps()
    for images, targets, _bad in itertools.islice(endless(loader), f.num_iter):
        if len(targets) < 2:  # a batch of undecodable files: nothing to measure
            continue
        images, targets = to_device(images, targets, rt.device, rt.channels_last)
        lr = optimizer.param_groups[0]["lr"]
        scale = scaler.get_scale() if rt.use_scaler else 1.0
        step = train_step(work, [(images, targets)], criterion, optimizer, scaler, scheduler, rt)
        loss = step.loss.item()
        if rt.use_scaler and scaler.get_scale() < scale:
            sweep.skipped += 1  # the scaler found inf/NaN gradients and did not step
            continue
        if not math.isfinite(loss):
            sweep.stop_reason = f"loss became {loss} at lr {lr:.3g}"
            break
        sweep.lrs.append(lr)
        sweep.losses.append(loss)
        # The same bias-corrected average as smooth(), kept incrementally.
        avg = f.smooth_beta * avg + (1 - f.smooth_beta) * loss
        current = avg / (1 - f.smooth_beta ** len(sweep.losses))
        best = min(best, current)
        if current > f.diverge_factor * best:
            sweep.stop_reason = (
                f"smoothed loss {current:.3g} > {f.diverge_factor:g} x best {best:.3g}"
            )
            break
    return sweep


def endless(loader):
    """Batches from `loader`, epoch after epoch (negative epochs: never a training epoch's data)."""
    epoch = -1
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch -= 1


def artifact_stem(cfg: LRFinderConfig, stamp: str | None = None) -> str:
    """lr_finder_<timestamp>_start<start>_end<end>_iter<n> (the reference run's naming)."""
    stamp = stamp or time.strftime("%Y%m%d_%H%M%S")
    return f"lr_finder_{stamp}_start{cfg.start_lr:g}_end{cfg.end_lr:g}_iter{cfg.num_iter}"


def save_csv(sweep: Sweep, beta: float, path: Path) -> Path:
    """The raw curve: step, lr, loss, smoothed loss."""
    from rn50.fileio import atomic_open

    with atomic_open(path, "w") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "lr", "loss", "smoothed_loss"])
        for i, (lr, loss, sm) in enumerate(
            zip(sweep.lrs, sweep.losses, sweep.smoothed(beta), strict=True)
        ):
            w.writerow([i, f"{lr:.6g}", f"{loss:.6f}", f"{sm:.6f}"])
    return path


def save_plot(
    sweep: Sweep,
    cfg: LRFinderConfig,
    suggestion: float,
    path: Path,
    others: dict[str, float] | None = None,
) -> Path:
    """Loss against LR on a log axis, raw and smoothed, with the suggestion marked (and the
    LRs in `others`, e.g. what the other rules would suggest, in lighter lines)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    from rn50.fileio import atomic_open

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    ax.plot(sweep.lrs, sweep.losses, color="0.75", lw=1, label="loss")
    ax.plot(sweep.lrs, sweep.smoothed(cfg.smooth_beta), color="C0", lw=2, label="smoothed loss")
    ax.axvline(suggestion, color="C3", ls="--", label=f"suggested max_lr {suggestion:.3g}")
    for i, (name, lr) in enumerate((others or {}).items()):
        ax.axvline(lr, color=f"C{i + 4}", ls=":", lw=1.5, label=f"{name}: {lr:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test ({cfg.rule} rule): {len(sweep.lrs)} steps, {sweep.stop_reason}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return path


@dataclass
class Result:
    """A range test's suggestion and where its plot and curve were written."""

    max_lr: float
    plot: Path
    csv: Path
    sweep: Sweep


def find_max_lr(model: nn.Module, loader, cfg: Config, rt: Runtime, out_dir: Path, log) -> Result:
    """Range test + suggestion + plot and CSV in `out_dir`; logs what it chose and why."""
    f = cfg.lr_finder
    log.log(
        f"LR range test: {f.num_iter} steps from {f.start_lr:g} to {f.end_lr:g} "
        f"(batch {cfg.data.batch_size})"
    )
    sweep = range_test(model, loader, cfg, rt)
    try:
        lr, _ = suggest(sweep.lrs, sweep.losses, f)
    except ValueError as e:
        from rn50.errors import ConfigError

        raise ConfigError(f"LR range test failed: {e}") from None
    stem = artifact_stem(f)
    plot = save_plot(sweep, f, lr, out_dir / f"{stem}.png")
    table = save_csv(sweep, f.smooth_beta, out_dir / f"{stem}.csv")
    extra = f", {sweep.skipped} fp16 steps skipped" if sweep.skipped else ""
    log.log(f"LR range test: {len(sweep.lrs)} points ({sweep.stop_reason}{extra})")
    log.log(f"Suggested max_lr: {lr:.4g} ({f.rule} rule)")
    if f.rule == "divergence" and sweep.stop_reason == "finished":
        # The rule reads where the loss blew up; a sweep that never did gives its last LR.
        log.warn(
            f"the loss did not diverge up to lr_finder.end_lr={f.end_lr:g}, so the suggestion "
            f"is only end_lr / {f.divergence_divisor:g}; raise lr_finder.end_lr or "
            f"lr_finder.num_iter, or set optim.max_lr yourself"
        )
    log.log(f"LR finder plot: {plot}")
    log.log(f"LR finder curve: {table}")
    return Result(lr, plot, table, sweep)


def lr_find(cfg: Config, preloaded: Preloaded | None = None) -> Result:
    """`rn50 lr-find`: the range test for a training config, artifacts in its run dir.

    The initial weights are the run's own (initial_model_path, saved here if new), so the
    training that follows starts from exactly the weights the sweep started from.
    `preloaded`: the file at train.initial_model_path, when a check read it already.
    """
    from rn50.data.auto import resolve_data
    from rn50.model import build_model
    from rn50.runlog import ConsoleLog

    rt = make_runtime(cfg)
    index = load_index(cfg.data, cfg.model.num_classes)
    log = ConsoleLog()
    warn_about_index(index, log.warn, val=False)
    data = resolve_data(cfg.data, rt.device, cfg.train.compile, say=log.log)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    initial_weights(model, cfg.train, log, index.classes, preloaded)
    model.to(rt.device, memory_format=rt.memory_format)
    loader = train_loader(data, index, cfg.train.seed, rt)
    return find_max_lr(model, loader, cfg, rt, Path(cfg.train.checkpoint_dir), log)


def choose_max_lr(cfg: Config, saved: dict | None, model, loader, rt: Runtime, log) -> float:
    """optim.max_lr: auto -> the resumed run's value (`saved`: its checkpoint), or a fresh
    range test's suggestion (artifacts in the run dir)."""
    if saved is not None:
        lr = saved["config"]["optim"]["max_lr"]
        log.log(f"max_lr: auto -> {lr:.4g} (chosen when this run started)")
        return lr
    return find_max_lr(model, loader, cfg, rt, Path(cfg.train.checkpoint_dir), log).max_lr
