"""What a run was and what it achieved: run_info.json at each start, summary.json at the end.

run_info.json: the command line, working directory, git commit of the working directory
(when it is a git checkout), versions of Python, PyTorch, torchvision and rn50, and the device
name and count. A resumed run rewrites it and keeps the earlier starts under "previous".

summary.json: computed from metrics.jsonl alone, so the two always agree: the best epoch (the
highest val top-1, the earliest of equals: model_best.pth), its top-1 and top-5, the last
epoch's, the time trained (train + validation, summed over epochs; set-up, the LR finder and
time between a kill and its resume are not included), images/s, and the cost when
train.price_per_gpu_hour is set: hours x price x devices.
"""

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rn50 import __version__
from rn50.fileio import atomic_write_text
from rn50.runlog import best_record, read_metrics

GIT_TIMEOUT_S = 5


def git_state(cwd: str | os.PathLike) -> dict[str, Any]:
    """{"git_commit": sha, "git_dirty": bool} of the checkout holding `cwd`; {} when there is
    none (or git is missing or too slow)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
        )
        if head.returncode != 0:
            return {}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    state: dict[str, Any] = {"git_commit": head.stdout.strip()}
    if status.returncode == 0:
        state["git_dirty"] = bool(status.stdout.strip())  # tracked files changed since the commit
    return state


def versions() -> dict[str, str]:
    """{package: version} of Python, torch, torchvision, numpy, rn50, and CUDA and cuDNN where
    present."""
    import numpy
    import torchvision

    v = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "rn50": __version__,
    }
    if torch.version.cuda:
        v["cuda"] = torch.version.cuda
    if torch.backends.cudnn.is_available():
        v["cudnn"] = str(torch.backends.cudnn.version())
    return v


def device_info(device: torch.device, world: int) -> dict[str, Any]:
    """The device this rank trains on and how many train together (one per rank)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = cpu_name()
    return {"type": device.type, "name": name, "count": world}


def cpu_name() -> str:
    """The CPU model ("AMD EPYC 7B13"), where the OS says; else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def run_info(device: torch.device, world: int, resumed_from: dict | None = None) -> dict:
    """What run_info.json holds: start time, command, working folder, git state, versions, the
    device of `world` processes, host, and `resumed_from` (where a resumed run goes on, else
    None)."""
    cwd = os.getcwd()
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": shlex.join(sys.argv),
        "argv": list(sys.argv),
        "cwd": cwd,
        **git_state(cwd),
        "versions": versions(),
        "device": device_info(device, world),
        "host": platform.node(),
        "resumed_from": resumed_from,
    }


def write_run_info(run_dir: str | os.PathLike, info: dict) -> Path:
    """Write run_info.json; an earlier start's record moves into info["previous"]."""
    path = Path(run_dir) / "run_info.json"
    previous: list = []
    if path.exists():
        try:
            old = json.loads(path.read_text())
            previous = old.pop("previous", []) + [old]
        except (json.JSONDecodeError, AttributeError):
            previous = []  # unreadable: start the history afresh rather than fail the run
    atomic_write_text(path, json.dumps({**info, "previous": previous}, indent=1) + "\n")
    return path


def summarize(metrics: list[dict], devices: int, price_per_gpu_hour: float = 0.0) -> dict:
    """The summary.json numbers from metrics.jsonl records."""
    if not metrics:
        return {"epochs": 0}
    best = best_record(metrics)
    last = metrics[-1]
    train_s = sum(r["train_time_s"] for r in metrics)
    total_s = sum(r["epoch_time_s"] for r in metrics)
    device_hours = total_s / 3600 * devices
    return {
        "epochs": last["epoch"],
        "best_epoch": best["epoch"],
        "best_top1": best["val_top1"],
        "best_top5": best["val_top5"],  # of the best-top-1 epoch: model_best.pth's
        "final_top1": last["val_top1"],
        "final_top5": last["val_top5"],
        "total_time_s": total_s,
        "train_time_s": train_s,
        "images_per_s": sum(r["train_images"] for r in metrics) / max(train_s, 1e-9),
        "devices": devices,
        "device_hours": device_hours,
        "price_per_gpu_hour": price_per_gpu_hour or None,
        "cost": device_hours * price_per_gpu_hour if price_per_gpu_hour else None,
    }


def write_summary(
    run_dir: str | os.PathLike, devices: int, price_per_gpu_hour: float, device_name: str = ""
) -> dict:
    """Read metrics.jsonl, write summary.json beside it, return the summary."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    summary = summarize(read_metrics(path) if path.exists() else [], devices, price_per_gpu_hour)
    if device_name:
        summary["device_name"] = device_name
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def format_duration(seconds: float) -> str:
    """296.4 -> '4m56s', 7325 -> '2h02m'."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s"


def format_summary(s: dict) -> str:
    """One line for the end of a run's log."""
    if not s.get("epochs"):
        return "Summary: no epoch finished yet"
    text = (
        f"Summary: best val top-1 {s['best_top1']:.2f}% top-5 {s['best_top5']:.2f}% (epoch "
        f"{s['best_epoch']}), {s['epochs']} epoch{'' if s['epochs'] == 1 else 's'} in "
        f"{format_duration(s['total_time_s'])} at {s['images_per_s']:.0f} img/s"
    )
    if s.get("cost") is not None:
        text += f", cost {s['cost']:.2f} ({s['device_hours']:.2f} device-hours)"
    return text
