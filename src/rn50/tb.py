"""TensorBoard scalars of a run, written to the run dir itself (train.tensorboard; rank 0).

`tensorboard --logdir runs/` then shows each run dir as one run. Every scalar's step is the
global optimizer step, per-epoch ones included, so the two share one x axis. A resumed run
starts its event file with a purge at the step it resumed from: TensorBoard drops what the
killed process had logged after that point, and the curves stay single-valued.

Tags:
  step/loss, step/top1          mean over the steps since the previous point (every log_every)
  step/lr, step/momentum        the optimizer's values after that step
  step/images_per_s             all ranks, since the previous point
  step/data_wait                share of that time spent waiting for the data loader
  step/gpu_memory_gb            allocated now (CUDA only)
  epoch/{train,val}_{loss,top1,top5}, epoch/lr, epoch/momentum, epoch/images_per_s,
  epoch/epoch_time_s, epoch/data_wait, epoch/gpu_memory_peak_gb (CUDA only)
"""

import os

import torch

from rn50.errors import ConfigError

EPOCH_KEYS = (
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
)


class Board:
    """A SummaryWriter when enabled; every method is a no-op otherwise."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        enabled: bool,
        purge_step: int = 0,
        device: torch.device | None = None,
    ):
        self.writer = None
        self.cuda = device if device is not None and device.type == "cuda" else None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "train.tensorboard is true but the tensorboard package is not installed; "
                "pip install tensorboard, or set train.tensorboard=false"
            ) from None
        # flush_secs: a killed run loses at most this many seconds of points.
        self.writer = SummaryWriter(str(run_dir), purge_step=purge_step, flush_secs=30)

    def step(self, step: int, snap, lr: float, momentum: float) -> None:
        """Per-step points from a progress Snapshot."""
        if self.writer is None:
            return
        w = self.writer
        w.add_scalar("step/loss", snap.interval_loss, step)
        w.add_scalar("step/top1", snap.interval_top1, step)
        w.add_scalar("step/lr", lr, step)
        w.add_scalar("step/momentum", momentum, step)
        w.add_scalar("step/images_per_s", snap.images_per_s, step)
        w.add_scalar("step/data_wait", snap.data_wait, step)
        if self.cuda is not None:
            w.add_scalar("step/gpu_memory_gb", torch.cuda.memory_allocated(self.cuda) / 2**30, step)

    def epoch(self, record: dict, data_wait: float | None = None) -> None:
        """Per-epoch points from a metrics.jsonl record, at its global step."""
        if self.writer is None:
            return
        w, step = self.writer, record["step"]
        for key in EPOCH_KEYS:
            w.add_scalar(f"epoch/{key}", record[key], step)
        if data_wait is not None:
            w.add_scalar("epoch/data_wait", data_wait, step)
        if self.cuda is not None:
            peak = torch.cuda.max_memory_allocated(self.cuda) / 2**30
            w.add_scalar("epoch/gpu_memory_peak_gb", peak, step)
        w.flush()

    def close(self) -> None:
        """Flush and close the event file (nothing to do when TensorBoard is off)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
