"""`rn50 runs`: the runs under a folder as a table, and their curves overlaid in one PNG.

A run is a folder holding metrics.jsonl. Every number is computed from its metrics.jsonl
(through rn50.record.summarize, as summary.json is), the planned epochs and price from its
config.yaml and the device count from its run_info.json, so a run still in progress or killed
shows what it has done so far.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from rn50.errors import UserError
from rn50.record import format_duration, summarize
from rn50.runlog import read_metrics


@dataclass
class Run:
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
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def load_run(path: str | os.PathLike, name: str | None = None) -> Run:
    path = Path(path)
    if not (path / "metrics.jsonl").is_file():
        raise UserError(f"'{path}' is not a run dir (it has no metrics.jsonl)")
    metrics = read_metrics(path / "metrics.jsonl")
    try:
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    train = config.get("train", {}) if isinstance(config, dict) else {}
    devices = _read_json(path / "run_info.json").get("device", {}).get("count", 1)
    summary = summarize(metrics, devices, float(train.get("price_per_gpu_hour") or 0.0))
    return Run(path, name or path.name, metrics, train.get("epochs"), summary)


def load_runs(root: str | os.PathLike) -> list[Run]:
    """Every run under `root`, named by its path relative to `root`."""
    root = Path(root)
    return [load_run(p, str(p.relative_to(root)) if p != root else p.name) for p in find_runs(root)]


COLUMNS = ("run", "epochs", "best top-1", "top-5", "time", "img/s", "cost")


def table_rows(runs: list[Run]) -> list[tuple[str, ...]]:
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
