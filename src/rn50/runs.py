"""`rn50 runs`: the runs under a folder as a table, and their curves overlaid in one PNG.

A run is a folder holding metrics.jsonl. Every number is computed from its metrics.jsonl
(through rn50.record.summarize, as summary.json is), the planned epochs and price from its
config.yaml and the device count from its run_info.json, so a run still in progress or killed
shows what it has done so far.
"""

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rn50.errors import UserError, excerpt
from rn50.record import format_duration, summarize
from rn50.runlog import read_metrics


@dataclass
class Run:
    """One run directory as `rn50 runs` sees it: path, name, metrics.jsonl records, planned epochs
    (None: unknown) and summary.json."""
    path: Path
    name: str
    metrics: list[dict]
    planned_epochs: int | None
    summary: dict


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Folders at or under `root` that hold a metrics.jsonl, sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"no such directory '{root}'; pass the folder holding your run dirs")
    return sorted(p.parent for p in root.rglob("metrics.jsonl"))


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, not UTF-8, not JSON
        return {}
    return value if isinstance(value, dict) else {}


# What the table and the plots read from each metrics.jsonl record (rn50.record.summarize,
# rn50.plots.save_comparison): every record must have them, as numbers.
RECORD_KEYS = ("epoch", "val_top1", "val_top5", "val_loss", "train_loss", "train_time_s",
               "epoch_time_s", "train_images")


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_records(path: Path, records: list) -> None:
    """UserError naming the file, the record and the key when a record lacks a number."""
    for i, r in enumerate(records, 1):
        if not isinstance(r, dict):
            raise UserError(f"{path}: record {i} is not a JSON object ({excerpt(r)})")
        for key in RECORD_KEYS:
            if not _is_number(r.get(key)):
                got = "has none" if key not in r else f"has {excerpt(r[key])}"
                raise UserError(f"{path}: record {i} (epoch {excerpt(r.get('epoch'))}) needs a "
                                f"number for {key}, {got}")


def _config_numbers(path: Path) -> tuple[int | None, float]:
    """(train.epochs, train.price_per_gpu_hour) of a run's config.yaml; (None, 0.0) for what
    is missing or not a sane number. Read as a config is (no YAML aliases, bounded size)."""
    from rn50.config import MAX_CONFIG_BYTES, parse_yaml

    try:
        if (path / "config.yaml").stat().st_size > MAX_CONFIG_BYTES:
            return None, 0.0
        config = parse_yaml((path / "config.yaml").read_text(), "config.yaml")
    except (OSError, UnicodeDecodeError, UserError):
        return None, 0.0
    train = config.get("train") if isinstance(config, dict) else None
    train = train if isinstance(train, dict) else {}

    def number(key: str, kind: type) -> float | None:
        try:
            value = kind(str(train.get(key))[:40])
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) and value >= 0 else None

    return number("epochs", int), number("price_per_gpu_hour", float) or 0.0


def load_run(path: str | os.PathLike, name: str | None = None) -> Run:
    """A run dir's records and summary; UserError when its metrics.jsonl cannot be used."""
    path = Path(path)
    metrics_file = path / "metrics.jsonl"
    if not metrics_file.is_file():
        raise UserError(f"'{path}' is not a run dir (it has no metrics.jsonl)")
    try:
        metrics = read_metrics(metrics_file)
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{metrics_file} cannot be read ({excerpt(str(e))})") from None
    _check_records(metrics_file, metrics)
    epochs, price = _config_numbers(path)
    device = _read_json(path / "run_info.json").get("device")
    devices = device.get("count", 1) if isinstance(device, dict) else 1
    devices = devices if isinstance(devices, int) and devices >= 1 else 1
    summary = summarize(metrics, devices, price)
    return Run(path, name or path.name, metrics, epochs, summary)


def load_runs(root: str | os.PathLike, warn: Callable[[str], None] | None = None) -> list[Run]:
    """Every run under `root`, named by its path relative to `root`.

    A run that cannot be read (a record without val_top1, a binary metrics.jsonl) raises
    UserError, or with `warn` is left out and `warn` gets one line naming it and why.
    """
    root = Path(root)
    runs = []
    for p in find_runs(root):
        try:
            runs.append(load_run(p, str(p.relative_to(root)) if p != root else p.name))
        except UserError as e:
            if warn is None:
                raise
            warn(f"left out {p}: {e}")
    return runs


COLUMNS = ("run", "epochs", "best top-1", "top-5", "time", "img/s", "cost")


def table_rows(runs: list[Run]) -> list[tuple[str, ...]]:
    """One row of text cells per run, in the columns of `rn50 runs`' table."""
    rows = []
    for r in runs:
        s = r.summary
        epochs = f"{s.get('epochs', 0)}/{r.planned_epochs}" if r.planned_epochs else "?"
        if s.get("epochs"):
            best = f"{s['best_top1']:.2f}% (ep {s['best_epoch']})"
            top5 = f"{s['best_top5']:.2f}%"
            time_ = format_duration(s["total_time_s"])
            rate = f"{s['images_per_s']:.0f}"
        else:
            best = top5 = time_ = rate = "-"
        cost = f"{s['cost']:.2f}" if s.get("cost") is not None else "-"
        rows.append((r.name, epochs, best, top5, time_, rate, cost))
    return rows


def format_table(runs: list[Run]) -> str:
    """A fixed-width table: text columns left-aligned, numbers right-aligned."""
    rows = [COLUMNS, *table_rows(runs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def plot_runs(paths: list[str], out: str | os.PathLike) -> Path:
    """Overlay the per-epoch curves of the runs at `paths` in one PNG."""
    from rn50.plots import save_comparison

    runs = [load_run(p) for p in paths]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # same folder name in different places: use the paths
        names = [str(r.path) for r in runs]
    return save_comparison(dict(zip(names, (r.metrics for r in runs), strict=True)), out)
