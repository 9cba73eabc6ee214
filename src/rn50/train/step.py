"""One optimizer step (`train_step`) and the guards around it: the BatchNorm statistics of
a skipped step put back, a streak of non-finite losses counted, non-finite weights found,
undecodable files budgeted."""

import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rn50 import distributed as dist
from rn50.errors import DataError
from rn50.train.runtime import Runtime, autocast

MIN_BAD_BUDGET = 10  # undecodable files an epoch may skip whatever data.max_bad_fraction says


def allow_skipped_steps() -> None:
    """Silence torch's warning that the scheduler stepped without the optimizer.

    That happens when fp16's scaler skips an overflowing step, and it is intended here: the
    LR schedule counts batches, applied or not.
    """
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")


class StepResult(NamedTuple):
    """What `train_step` returns."""

    loss: torch.Tensor  # mean loss of this rank's micro-batches (detached, 0-dim)
    logits: torch.Tensor  # of all of them, concatenated (detached, N x classes)
    applied: bool  # False: a loss was NaN/inf on some rank, and no rank changed a weight


def grad_sync(model: nn.Module, last: bool):
    """DDP all-reduces gradients in every backward unless told not to; a step needs it only in
    the backward of its last micro-batch (the others accumulate locally)."""
    if last or not isinstance(model, DistributedDataParallel):
        return nullcontext()
    return model.no_sync()


def train_step(model, batches, criterion, optimizer, scaler, scheduler, rt: Runtime) -> StepResult:
    """One optimizer step over `batches`, a list of (images N x 3 x H x W, targets N)
    micro-batches already on rt.device.

    Each micro-batch's loss is divided by their number, so the accumulated gradient is that of
    their mean; DDP then averages it over the ranks. A non-finite loss on any rank changes no
    weight on any rank (the LR schedule still advances a step).
    """
    optimizer.zero_grad(set_to_none=True)
    losses, logits = [], []
    for i, (images, targets) in enumerate(batches):
        with grad_sync(model, last=i == len(batches) - 1):
            with autocast(rt):
                out = model(images)
                loss = criterion(out, targets)
            scaler.scale(loss / len(batches)).backward()  # fp16: scaled against underflow
        losses.append(loss.detach())
        logits.append(out.detach())
    loss = torch.stack(losses).mean()
    # One host sync a step: a NaN must never reach the weights. DDP's replicas decide together,
    # or they would drift apart.
    finite = torch.isfinite(loss)
    applied = dist.all_true(finite) if isinstance(model, DistributedDataParallel) else bool(finite)
    if applied:
        scaler.step(optimizer)  # unscales first; skips the update if a gradient is inf/NaN
        scaler.update()  # lowers the scale after a skipped step, raises it after calm ones
    scheduler.step()  # one-cycle moves every optimizer step, applied or not
    return StepResult(loss, torch.cat(logits), applied)


def micro_batches(loader: Iterable, n: int) -> Iterator[list]:
    """The loader's batches in lists of `n`: the micro-batches of one optimizer step each
    (a last incomplete list is dropped)."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == n:
            yield group
            group = []


class BufferGuard:
    """A copy of the BatchNorm running statistics from before the last step.

    A forward pass that produced NaN has already folded it into the running statistics;
    putting them back keeps one bad batch from breaking every later evaluation.
    """

    def __init__(self, model: nn.Module):
        self.buffers = [b for b in model.buffers() if b.is_floating_point()]
        self.saved = [b.detach().clone() for b in self.buffers]

    def save(self) -> None:
        """Remember the statistics (call before each step)."""
        for dst, src in zip(self.saved, self.buffers, strict=True):
            dst.copy_(src)

    def restore(self) -> None:
        """Put the remembered statistics back (after a skipped step)."""
        for dst, src in zip(self.buffers, self.saved, strict=True):
            dst.copy_(src)


class NonFiniteStreak:
    """Counts optimizer steps skipped in a row for a non-finite loss (train.max_bad_steps);
    one counter for the whole run, so a streak goes on across an epoch's end."""

    def __init__(self, limit: int):
        self.limit, self.count = limit, 0

    def update(self, applied: bool) -> bool:
        """Count one step; True when `limit` steps in a row were skipped (the run diverged)."""
        self.count = 0 if applied else self.count + 1
        return self.count >= self.limit


def non_finite_tensors(module: nn.Module) -> list[str]:
    """Names of `module`'s floating-point parameters and buffers (BatchNorm statistics) that
    hold a NaN or an inf, in module order. One pass over the weights and one host sync: meant
    for once an epoch or once a save, not every step."""
    named = [
        (name, t)
        for name, t in [*module.named_parameters(), *module.named_buffers()]
        if t.is_floating_point()
    ]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in named]).tolist()
    return [name for (name, _), ok in zip(named, finite, strict=True) if not ok]


class BadFileBudget:
    """Undecodable files an epoch may skip: each one is counted and named with `warn`; more
    than `limit` (at least MIN_BAD_BUDGET) raises DataError, since so many are an error in the
    dataset, not noise."""

    def __init__(self, limit: float, max_bad_fraction: float, root, warn: Callable[[str], None]):
        self.limit = max(limit, MIN_BAD_BUDGET)
        self.fraction, self.root, self.warn = max_bad_fraction, root, warn

    def note(self, bad: list[str], meter) -> None:
        """Count `bad` (paths) in `meter` and name each; raises DataError over the budget."""
        if not bad:
            return
        meter.skip(bad)
        for path in bad:
            self.warn(f"skipped unreadable image {path}")
        if meter.skipped > self.limit:
            raise DataError(
                f"{meter.skipped} images could not be decoded this epoch, more than "
                f"data.max_bad_fraction={self.fraction:g} of it (and more than "
                f"{MIN_BAD_BUDGET}); run 'rn50 data check {self.root}' to find them"
            )
