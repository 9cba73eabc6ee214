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

DEFERRED_CHECK_EVERY = 50  # train.sync_check deferred: steps between host reads (no log_every)
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
    # False: a loss was NaN/inf on some rank, and no rank changed a weight. With a
    # DeviceGuard (train.sync_check: deferred) a 0-dim bool tensor on the device, not read.
    applied: bool | torch.Tensor


def grad_sync(model: nn.Module, last: bool):
    """DDP all-reduces gradients in every backward unless told not to; a step needs it only in
    the backward of its last micro-batch (the others accumulate locally)."""
    if last or not isinstance(model, DistributedDataParallel):
        return nullcontext()
    return model.no_sync()


def train_step(
    model, batches, criterion, optimizer, scaler, scheduler, rt: Runtime, guard=None
) -> StepResult:
    """One optimizer step over `batches`, a list of (images N x 3 x H x W, targets N)
    micro-batches already on rt.device.

    Each micro-batch's loss is divided by their number, so the accumulated gradient is that of
    their mean; DDP then averages it over the ranks. A non-finite loss on any rank changes no
    weight on any rank (the LR schedule still advances a step).

    train.sync_check: step (guard None) reads the loss's finiteness on the host, which waits
    for the device once a step, and skips the update. deferred (`guard`, a DeviceGuard saved
    before the step) never waits: the update always runs, and the guard then puts back, on
    the device, every weight, momentum buffer and BatchNorm statistic it changed where the
    loss was not finite; `applied` is then that flag as a device tensor, read later.
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
    finite = torch.isfinite(loss)
    if guard is not None:
        if isinstance(model, DistributedDataParallel):  # all ranks' gradients are averaged
            finite = _all_finite_on_device(finite)
        scaler.step(optimizer)  # fp16: the scaler itself waits for its overflow check
        scaler.update()
        guard.restore_unless(finite)
        scheduler.step()
        return StepResult(loss, torch.cat(logits), finite)
    # One host sync a step: a NaN must never reach the weights. DDP's replicas decide together,
    # or they would drift apart.
    applied = dist.all_true(finite) if isinstance(model, DistributedDataParallel) else bool(finite)
    if applied:
        scaler.step(optimizer)  # unscales first; skips the update if a gradient is inf/NaN
        scaler.update()  # lowers the scale after a skipped step, raises it after calm ones
    scheduler.step()  # one-cycle moves every optimizer step, applied or not
    return StepResult(loss, torch.cat(logits), applied)


def _all_finite_on_device(finite: torch.Tensor) -> torch.Tensor:
    """Whether `finite` holds on every rank, as a device tensor (an all-reduce queued on the
    device, never read on the host)."""
    flag = finite.to(torch.int32).reshape(1)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return flag[0].bool()


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


class DeviceGuard:
    """train.sync_check: deferred. A copy, on the device, of everything a step may change
    (parameters, the optimizer's momentum buffers, BatchNorm running statistics), and its
    conditional restore, without a host sync.

    Each group of same-dtype tensors is copied with one `torch.cat` into a flat buffer
    (`save`, before the step's forward pass) and put back with one `torch.where` and one
    `torch._foreach_copy_` (`restore_unless`): a few kernels, not one per tensor (ResNet-50
    has about 480 such tensors, and launching 480 kernels would cost more than the wait it
    replaces). Values are selected, never computed: a NaN written by the step cannot leak
    through (0 x NaN would). A momentum buffer the step created (the first) is zeroed
    where the step is refused, which SGD (dampening 0) treats as no buffer.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer
        self.groups: list[tuple[list[torch.Tensor], list[int], torch.Tensor]] = []
        self.count = -1
        # The parameters that had no momentum buffer when the groups were made: the step may
        # create theirs (the first step does), which the groups do not hold.
        self.unbuffered: list[torch.Tensor] = []

    def _tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(every tensor a step may change, the parameters without a momentum buffer)."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        momenta = [self._momentum(p) for p in params]
        norms = [b for b in self.model.buffers() if b.is_floating_point()]
        tensors = [t for t in params + momenta + norms if t is not None]
        return tensors, [p for p, m in zip(params, momenta, strict=True) if m is None]

    def _momentum(self, p: torch.Tensor) -> torch.Tensor | None:
        state = self.optimizer.state.get(p)  # (.get: the state is a defaultdict)
        return None if state is None else state.get("momentum_buffer")

    def save(self) -> None:
        """Copy the state (call before each step)."""
        tensors, unbuffered = self._tensors()
        if len(tensors) != self.count:  # the first step creates the momentum buffers
            self.count, self.unbuffered = len(tensors), unbuffered
            by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
            for t in tensors:
                by_dtype.setdefault(t.dtype, []).append(_flat(t))
            self.groups = [
                (views, [v.numel() for v in views],
                 views[0].new_empty(sum(v.numel() for v in views)))
                for views in by_dtype.values()
            ]  # fmt: skip
        for views, _, flat in self.groups:
            torch.cat(views, out=flat)

    @torch.no_grad()
    def restore_unless(self, finite: torch.Tensor) -> None:
        """Put the saved state back where `finite` (0-dim bool on the device) is False: the
        tensors `save` grouped, and the momentum buffers this step created."""
        for views, sizes, flat in self.groups:
            chosen = torch.where(finite, torch.cat(views), flat)
            torch._foreach_copy_(views, list(chosen.split(sizes)))
        for p in self.unbuffered:  # none after the first step (with SGD's momentum)
            t = self._momentum(p)
            if t is not None:
                t.copy_(torch.where(finite, t, torch.zeros_like(t)))


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of all of a dense tensor's elements, in memory order (contiguous or
    channels_last alike), through which a flat copy is written back."""
    if not (t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(
            memory_format=torch.channels_last))):  # fmt: skip
        raise ValueError(f"train.sync_check deferred needs dense tensors, got {t.stride()}")
    return t.detach().as_strided((t.numel(),), (1,), t.storage_offset())


class PendingChecks:
    """train.sync_check: deferred. The steps whose flags are still on the device: read on the
    host together (one wait) every `every` steps, before a checkpoint and at the epoch's end,
    where skipped steps are named and counted (NonFiniteStreak, train.max_bad_steps).

    train.sync_check: step uses it with `every` 1 and host flags (bool): those are kept as
    they are, and read without a tensor or a wait.
    """

    def __init__(self, every: int):
        self.every = max(1, every)
        self.steps: list[int] = []
        self.flags: list[bool | torch.Tensor] = []
        self.losses: list[torch.Tensor] = []

    def add(self, step: int, applied: bool | torch.Tensor, loss: torch.Tensor) -> None:
        """Keep step `step`'s flag (a device tensor, or a bool already on the host) and loss
        until the next read."""
        self.steps.append(step)
        self.flags.append(applied)
        self.losses.append(loss)

    def due(self) -> bool:
        """Whether `every` steps are waiting to be read."""
        return len(self.steps) >= self.every

    def read(self) -> list[tuple[int, bool, float]]:
        """(step, applied, loss) of each pending step, in order; the list is emptied."""
        if not self.steps:
            return []
        flags = _host_flags(self.flags)
        # A loss is read only for a skipped step (its warning): reading them all would wait
        # a second time, for the work queued since.
        losses = [
            float("nan") if ok else loss.item()
            for ok, loss in zip(flags, self.losses, strict=True)
        ]
        out = list(zip(self.steps, flags, losses, strict=True))
        self.steps, self.flags, self.losses = [], [], []
        return out


def _host_flags(flags: list[bool | torch.Tensor]) -> list[bool]:
    """`flags` as bools: the device tensors among them read together (the one wait)."""
    on_device = [f for f in flags if isinstance(f, torch.Tensor)]
    if not on_device:
        return [bool(f) for f in flags]
    read = iter(torch.stack(on_device).tolist())
    return [bool(next(read)) if isinstance(f, torch.Tensor) else bool(f) for f in flags]


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


def note_unreadable(bad: list[str], meter, warn: Callable[[str], None] | None) -> None:
    """Count the unreadable files `bad` (paths left out of a batch) in `meter`, and name each
    with `warn` (when given) in the words training and validation share."""
    meter.skip(bad)
    if warn is not None:
        for path in bad:
            warn(f"skipped unreadable image {path}")


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
        note_unreadable(bad, meter, self.warn)
        if meter.skipped > self.limit:
            raise DataError(
                f"{meter.skipped} images could not be decoded this epoch, more than "
                f"data.max_bad_fraction={self.fraction:g} of it (and more than "
                f"{MIN_BAD_BUDGET}); run 'rn50 data check {self.root}' to find them"
            )
