"""The clock of `rn50 bench`: wait for the device before reading the time, and the median of
timed runs."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch


def sync(device: torch.device) -> None:
    """Wait until `device` has run the work queued on it (CUDA runs it asynchronously, so a
    clock read without this measures the queueing); nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: Sequence[float]) -> float:
    """The median of `values` (img/s of the repeats); NaN when there are none."""
    return statistics.median(values) if values else float("nan")
