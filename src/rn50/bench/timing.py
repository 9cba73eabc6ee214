"""The clock of `rn50 bench`: wait for the device before reading the time, and the median of
timed runs."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from rn50.train.runtime import synchronize

sync = synchronize
"""Wait for the device before a clock read (rn50.train.runtime.synchronize)."""


def error_text(e: BaseException) -> str:
    """A failed measurement's "error": "Type: the first line of the message" (200 chars at
    most), e.g. when torch.compile finds no C++ compiler or the device lacks a precision."""
    lines = str(e).splitlines()
    return f"{type(e).__name__}: {(lines[0] if lines else '')[:200]}"


def median(values: Sequence[float]) -> float:
    """The median of `values` (img/s of the repeats); NaN when there are none."""
    return statistics.median(values) if values else float("nan")
