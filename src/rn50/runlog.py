"""The run directory's records: text log, metrics.jsonl, steps.jsonl and the resolved config.

Only the process that owns the run dir (rank 0) writes; the others get a RunLog that
neither prints nor writes, so calling code needs no rank checks.
"""

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rn50.fileio import atomic_write_text


class RunLog:
    """Prints each message and appends it to training_log_<timestamp>.txt in the run dir."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.log_path: Path | None = None
        self._file = None
        self._steps = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d_%H%M%S")
            self.log_path = self.run_dir / f"training_log_{stamp}.txt"
            self._file = open(self.log_path, "a", buffering=1)  # line-buffered: survives a kill

    @property
    def metrics_path(self) -> Path:
        """run_dir/metrics.jsonl: one line per finished epoch."""
        return self.run_dir / "metrics.jsonl"

    @property
    def steps_path(self) -> Path:
        """run_dir/steps.jsonl: the LR and momentum of every optimizer step."""
        return self.run_dir / "steps.jsonl"

    def log(self, message: str = "") -> None:
        """A line on stdout and in the training log (rank 0)."""
        if not self.enabled:
            return
        _print(message, sys.stdout)
        self._file.write(message + "\n")

    def record(self, message: str) -> None:
        """Write to the log file only (what a progress bar shows on the terminal instead)."""
        if self.enabled:
            self._file.write(message + "\n")

    def warn(self, message: str) -> None:
        """A `warning:` line on stderr and in the training log (rank 0)."""
        if self.enabled:
            _print(f"warning: {message}", sys.stderr)
            self._file.write(f"warning: {message}\n")

    def write_config(self, yaml_text: str) -> None:
        """The resolved config as run_dir/config.yaml, written atomically (rank 0)."""
        if self.enabled:
            atomic_write_text(self.run_dir / "config.yaml", yaml_text)

    def append_metrics(self, record: dict[str, Any]) -> None:
        """One JSON object per line; flushed and fsynced so a killed run keeps it."""
        if not self.enabled:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def append_step(self, record: dict[str, Any]) -> None:
        """One line of steps.jsonl (per-step LR and momentum), written through at once: a
        kill loses no step before the checkpoint a resume starts from."""
        if not self.enabled:
            return
        if self._steps is None:
            self._steps = open(self.steps_path, "a", buffering=1)
        self._steps.write(json.dumps(record) + "\n")

    def drop_steps_after(self, step: int) -> None:
        """On resume at global step N, forget the steps after it (they will be trained again)."""
        if not self.enabled or not self.steps_path.exists():
            return
        kept = [r for r in read_metrics(self.steps_path) if r.get("step", 0) <= step]
        atomic_write_text(self.steps_path, "".join(json.dumps(r) + "\n" for r in kept))

    def close(self) -> None:
        """Close the training log file."""
        for f in (self._file, self._steps):
            if f is not None:
                f.close()
        self._file = self._steps = None


class ConsoleLog:
    """The RunLog interface for commands that only print (e.g. rn50 lr-find)."""

    def log(self, message: str = "") -> None:
        """A line on stdout."""
        _print(message, sys.stdout)

    def record(self, message: str) -> None:
        """A line on stdout (there is no log file to keep it in)."""
        pass

    def warn(self, message: str) -> None:
        """A `warning:` line on stderr."""
        _print(f"warning: {message}", sys.stderr)


def _print(message: str, stream) -> None:
    # A live progress bar shares the terminal: tqdm clears it, the line prints, it redraws
    # below, so messages never land in the middle of the bar.
    from tqdm import tqdm

    with tqdm.external_write_mode(file=stream):
        print(message, file=stream, flush=True)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of metrics.jsonl; a torn last line (a kill mid-write) is ignored."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def best_record(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch with the highest val top-1, the earliest of equals (as model_best.pth)."""
    best = None
    for r in records:
        if best is None or r["val_top1"] > best["val_top1"]:
            best = r
    return best
