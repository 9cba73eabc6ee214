"""Progress of a training or validation loop, shown while it runs.

On a terminal: a tqdm bar on stderr with loss, running top-1, images/s, data-wait share and
the ETA. Otherwise (CI, nohup, a pipe, a log file): a plain line every `every_steps` steps or
`every_seconds` seconds, with no carriage returns, through `log` (the run log: stdout and
training_log_*.txt):

    epoch 3 step 150/5004  loss 4.1234  top1 12.34%  lr 0.6  2890 img/s  data 4%  eta 0:23:10

- loss, top1: running means over the loop so far (this rank's images); the last line of an
  epoch equals the epoch's "Train Loss / Top-1".
- img/s: all ranks together, since the previous line; data: the share of that time the loop
  spent waiting for the loader (near 0 when the GPU is the bottleneck, as it should be).
With a bar, the same lines still go to the run's log file (`record`), so the file reads the
same whatever the terminal. Only rank 0 reports.

The displayed numbers come from the device-side Meter, read (one host sync) only at a line or
about once a second for the bar, never every step.
"""

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from rn50 import distributed as dist

MODES = ("auto", "bar", "lines", "off")
BAR_REFRESH_S = 1.0  # how often the bar's numbers are re-read from the device


@dataclass
class Snapshot:
    """The loop at one report point (a plain line's numbers)."""

    pos: int  # steps done in this loop (1-based; counts from `start` when resumed)
    total: int
    loss: float  # running mean over the loop so far
    top1: float  # %, running
    interval_loss: float  # mean over the steps since the previous snapshot
    interval_top1: float
    images_per_s: float  # all ranks, since the previous snapshot
    data_wait: float  # fraction of the time since the previous snapshot spent in the loader
    eta_s: float  # seconds left in this loop at the mean step time so far


def format_eta(seconds: float) -> str:
    """3725.2 -> '1:02:05'."""
    s = max(int(round(seconds)), 0)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def isatty(stream: IO[str]) -> bool:
    """Whether `stream` is an interactive terminal (False where it cannot tell)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Reporter:
    """Times a loop's loader, counts its steps and shows them (see the module docstring).

    Use:  for batch in report.wrap(loader, meter): ...; report.step(images_in_batch, lr=...)
    `meter` is the loop's rn50.metrics.Meter; `step` returns a Snapshot at each plain-line
    point (whatever the mode, so TensorBoard can use the same points), else None.
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        start: int = 0,
        mode: str = "auto",
        every_steps: int = 50,
        every_seconds: float = 60.0,
        log: Callable[[str], None] = print,
        record: Callable[[str], None] | None = None,
        stream: IO[str] | None = None,
    ):
        self.label, self.total, self.start = label, total, start
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.log, self.record = log, record
        self.enabled = dist.is_main()
        self.world = dist.world_size()
        stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if isatty(stream) else "lines"
        self.mode = mode if self.enabled else "off"
        self.pos = start
        self.meter = None
        self.extra: dict[str, float] = {}
        now = time.perf_counter()
        self.t_start = self.t_last = self.t_bar = now
        self.t_end: float | None = None  # when the loop ran out of items
        self.pos_last = start
        self.images = 0  # this rank's images since the last snapshot
        self.wait = self.wait_total = 0.0  # seconds in the loader: since the last snapshot, all
        self.sums_last = (0.0, 0.0, 0.0)  # meter's (loss x n, top-1 hits, n) at the last snapshot
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=start,
                desc=label,
                unit="step",
                file=stream,
                dynamic_ncols=True,
                leave=True,
            )

    # -- the loop --------------------------------------------------------------------------

    def wrap(self, iterable: Iterable, meter) -> Iterable:
        """`iterable`, timing how long each item takes to arrive."""
        if not self.enabled:
            return iterable
        self.meter = meter
        self.sums_last = self._sums()
        return self._timed(iterable)

    def _timed(self, iterable: Iterable) -> Iterator:
        it = iter(iterable)
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    self.t_end = time.perf_counter()
                    return
                waited = time.perf_counter() - t0
                self.wait += waited
                self.wait_total += waited
                self.pos += 1  # counted here so skipped batches (no step call) still count
                yield item
        finally:
            self.close()

    def step(self, images: int, **extra: float) -> Snapshot | None:
        """After a batch of `images` (this rank's); `extra` values (e.g. lr) are shown too."""
        if not self.enabled:
            return None
        self.images += images
        self.extra = extra
        now = time.perf_counter()
        due = self._line_due(now)
        snap = self._snapshot(now) if due else None
        if self.bar is not None:
            if snap is None and now - self.t_bar >= BAR_REFRESH_S:
                snap_for_bar = self._peek(now)
            else:
                snap_for_bar = snap
            if snap_for_bar is not None:
                self.t_bar = now
                self.bar.set_postfix_str(self._numbers(snap_for_bar, eta=False), refresh=False)
            self.bar.update(self.pos - self.bar.n)
        if snap is not None:
            line = self.format_line(snap)
            if self.mode == "lines":
                self.log(line)
            elif self.mode == "bar" and self.record is not None:
                self.record(line)
        return snap

    def close(self) -> None:
        """End the display (the progress bar's last line stays)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    @property
    def data_wait_share(self) -> float:
        """Share of the whole loop's time (so far, or until it ended) spent in the loader."""
        end = self.t_end if self.t_end is not None else time.perf_counter()
        return self.wait_total / max(end - self.t_start, 1e-9)

    # -- numbers ---------------------------------------------------------------------------

    def _line_due(self, now: float) -> bool:
        by_steps = self.every_steps and (
            self.pos // self.every_steps > self.pos_last // self.every_steps
            or self.pos == self.total
        )
        by_time = self.every_seconds and now - self.t_last >= self.every_seconds
        return bool(by_steps or by_time) and self.pos > self.pos_last

    def _sums(self) -> tuple[float, float, float]:
        if self.meter is None:
            return (0.0, 0.0, 0.0)
        loss_sum, top1, _top5, n, _skipped = self.meter.sums.tolist()  # the one host sync
        return loss_sum, top1, n

    def _peek(self, now: float, sums: tuple[float, float, float] | None = None) -> Snapshot:
        """The numbers now (meter sums `sums`, read when not given); starts no new interval."""
        loss_sum, top1, n = sums if sums is not None else self._sums()
        l0, t0, n0 = self.sums_last
        dn = max(n - n0, 1.0)
        dt = max(now - self.t_last, 1e-9)
        done = self.pos - self.start
        return Snapshot(
            pos=self.pos,
            total=self.total,
            loss=loss_sum / max(n, 1.0),
            top1=100.0 * top1 / max(n, 1.0),
            interval_loss=(loss_sum - l0) / dn,
            interval_top1=100.0 * (top1 - t0) / dn,
            images_per_s=self.images * self.world / dt,
            data_wait=min(self.wait / dt, 1.0),
            eta_s=(now - self.t_start) / max(done, 1) * (self.total - self.pos),
        )

    def _snapshot(self, now: float) -> Snapshot:
        """The numbers now; the next interval starts here."""
        sums = self._sums()
        snap = self._peek(now, sums)
        self.sums_last = sums
        self.t_last, self.pos_last, self.images, self.wait = now, self.pos, 0, 0.0
        return snap

    def _numbers(self, s: Snapshot, eta: bool = True) -> str:
        parts = [f"loss {s.loss:.4f}", f"top1 {s.top1:.2f}%"]
        parts += [f"{k} {v:.4g}" for k, v in self.extra.items()]
        parts += [f"{s.images_per_s:.0f} img/s", f"data {s.data_wait:.0%}"]
        if eta:
            parts.append(f"eta {format_eta(s.eta_s)}")
        return "  ".join(parts)

    def format_line(self, s: Snapshot) -> str:
        """One plain-text progress line of snapshot `s`: step, rates, ETA."""
        return f"  {self.label} step {s.pos}/{s.total}  {self._numbers(s)}"


def make_reporter(
    cfg,
    label: str,
    total: int,
    start: int = 0,
    log: Callable[[str], None] = print,
    record: Callable[[str], None] | None = None,
) -> Reporter:
    """A Reporter set up from a TrainConfig (progress, log_every, log_every_seconds)."""
    return Reporter(
        label,
        total,
        start=start,
        mode=cfg.progress,
        every_steps=cfg.log_every,
        every_seconds=cfg.log_every_seconds,
        log=log,
        record=record,
    )
