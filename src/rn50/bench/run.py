"""The whole benchmark: the plan's parts measured in turn (model step, data path, end to end,
lower resolutions of progressive resizing), and the projection, as one JSON-able result."""

from __future__ import annotations

import dataclasses
import os
import platform
import tempfile
from pathlib import Path

import torch

from rn50.bench.data_path import bench_data, bench_files, ratios
from rn50.bench.end_to_end import bench_end_to_end
from rn50.bench.model_step import bench_model
from rn50.bench.plan import BenchPlan, epoch_resolutions
from rn50.bench.projection import fastest, project
from rn50.bench.report import decode_label
from rn50.resources import available_cpus


def run_bench(plan: BenchPlan, log=None) -> dict:
    """Measure what `plan` asks for; returns the JSON-able result (see README: Speed).

    `log` is called with a line of text before each measurement (None: silent). torch's CPU
    thread count is set to plan.threads while it runs and restored after.
    """
    threads = torch.get_num_threads()
    if plan.threads:
        torch.set_num_threads(plan.threads)
    try:
        return _run(plan, log or (lambda _msg: None))
    finally:
        torch.set_num_threads(threads)  # the caller's process keeps its setting


def _run(plan: BenchPlan, say) -> dict:
    result: dict = {
        "device": _device_name(plan.device),
        "torch": torch.__version__,
        "cores": available_cpus(),
        "threads": torch.get_num_threads() if not plan.threads else plan.threads,
        "load_avg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "plan": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(plan).items()
            if k != "device"
        },
    }
    if "model" in plan.parts:
        result["model"] = []
        for bs in plan.batch_sizes:
            for precision in plan.precisions:
                for cl in plan.channels_last:
                    for compiled in plan.compile:
                        say(f"model: batch {bs} {precision} channels_last={cl} compile={compiled}")
                        result["model"].append(bench_model(plan, bs, precision, cl, compiled))
    best = fastest(result.get("model", []))  # the setting end to end and lower sizes run with
    with tempfile.TemporaryDirectory(prefix="rn50-bench-") as tmp:
        samples = None
        if "data" in plan.parts or "e2e" in plan.parts:
            samples, source = bench_files(plan, Path(tmp))
            result["data_source"] = source
        if "data" in plan.parts:
            say(f"data: modes {', '.join(plan.modes)}; workers {plan.workers}")
            result["data"] = bench_data(plan, samples)
            result["data_vs_torchvision"] = ratios(result["data"])
        if "e2e" in plan.parts:
            precision = best["precision"] if best else plan.precisions[0]
            cl = best["channels_last"] if best else True
            compiled = best["compile"] if best else plan.compile[-1]
            say(f"end to end: decode {decode_label(plan.decode, plan.decode_ahead)}, "
                f"{plan.e2e_workers} worker(s)")
            result["end_to_end"] = bench_end_to_end(plan, samples, precision, cl, compiled)
        lower = sorted(set(epoch_resolutions(plan)) - {plan.resolution})
        if lower and best:
            result["progressive"] = _bench_lower(plan, lower, best, samples, say)
    result["load_avg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    try:
        projected = project(result, plan)
    except ValueError as e:  # a lower resolution's measurement failed
        say(f"no projection: {e}")
        projected = None
    if projected:
        result["projection"] = projected
    return result


def _bench_lower(plan: BenchPlan, resolutions, best: dict, samples, say) -> list[dict]:
    """The best model setting, and the end-to-end run, at each lower training resolution."""
    out = []
    for res in resolutions:
        at = dataclasses.replace(plan, resolution=res, batch_sizes=(best["batch_size"],))
        say(f"progressive resizing: {res} px")
        record = bench_model(
            at, best["batch_size"], best["precision"], best["channels_last"], best["compile"]
        )
        if samples is not None and "e2e" in plan.parts:
            e2e = bench_end_to_end(
                at, samples, best["precision"], best["channels_last"], best["compile"]
            )
            record["end_to_end_img_s"] = e2e["img_s"]
        if "img_s" in record:
            out.append(record)
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {available_cpus()} cores)"
