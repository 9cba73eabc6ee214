"""The whole benchmark: the plan's parts measured in turn (model step, data path, end to end,
lower resolutions of progressive resizing), and the projection, as one JSON-able result."""

from __future__ import annotations

import dataclasses
import os
import platform
import tempfile
from pathlib import Path

import torch

from rn50 import resources
from rn50.bench.data_path import bench_data, bench_files, ratios
from rn50.bench.end_to_end import bench_end_to_end
from rn50.bench.gpu_stages import bench_gpu_stages
from rn50.bench.model_step import bench_model
from rn50.bench.plan import STEP_TARGET_IMG_S, BenchPlan, epoch_resolutions
from rn50.bench.projection import fastest, project
from rn50.bench.report import decode_label
from rn50.bench.sync_cost import bench_sync
from rn50.preempt import exit_on_sigterm


def run_bench(plan: BenchPlan, log=None) -> dict:
    """Measure what `plan` asks for; returns the JSON-able result (see README: Speed).

    `log` is called with a line of text before each measurement (None: silent). torch's CPU
    thread count is set to plan.threads while it runs and restored after. SIGTERM stops it
    with SystemExit(143) after removing its temporary files (rn50.preempt.exit_on_sigterm).
    """
    threads = torch.get_num_threads()
    affinity = _limit_cores(plan.cores)
    if plan.threads or plan.cores:
        torch.set_num_threads(plan.threads or plan.cores)
    try:
        # SIGTERM unwinds (SystemExit), so that the temporary folder of JPEGs is removed.
        with exit_on_sigterm("bench"):
            result = _run(plan, log or (lambda _msg: None))
        result["cores_limit"] = plan.cores or None
        return result
    finally:
        torch.set_num_threads(threads)  # the caller's process keeps its setting
        if affinity is not None:
            os.sched_setaffinity(0, affinity)


def _limit_cores(cores: int) -> set[int] | None:
    """--cores N: this process (and the loader workers it starts, which inherit it) may run
    on N of its cores only, the first N it may use now; returns the set to restore (None
    when nothing was changed). ValueError when it has fewer than N or cannot be limited."""
    if not cores:
        return None
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError("--cores needs os.sched_setaffinity (Linux)")
    allowed = os.sched_getaffinity(0)
    if cores > len(allowed):
        raise ValueError(f"--cores {cores}: this process may use only {len(allowed)} cores")
    os.sched_setaffinity(0, sorted(allowed)[:cores])
    return allowed


def _run(plan: BenchPlan, say) -> dict:
    result: dict = {
        "device": _device_name(plan.device),
        "torch": torch.__version__,
        "cores": resources.available_cpus(),
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
                        for mode in plan.compile_modes if compiled else (None,):
                            say(f"model: batch {bs} {precision} channels_last={cl} "
                                f"compile={mode if compiled else False}")
                            result["model"].append(
                                bench_model(plan, bs, precision, cl, compiled, mode)
                            )
        result["step_target"] = step_target(result["model"])
    # The setting end to end and the lower sizes run with: the fastest compiled one when one
    # was measured (training compiles with train.compile; the figures asked for are those),
    # else the fastest.
    models = result.get("model", [])
    best = fastest([r for r in models if r["compile"]]) or fastest(models)
    with tempfile.TemporaryDirectory(prefix="rn50-bench-") as tmp:
        samples = None
        if {"data", "e2e", "stages"} & set(plan.parts):
            samples, source = bench_files(plan, Path(tmp))
            result["data_source"] = source
        if "data" in plan.parts:
            say(f"data: modes {', '.join(plan.modes)}; workers {plan.workers}")
            result["data"] = bench_data(plan, samples)
            result["data_vs_torchvision"] = ratios(result["data"])
        if "stages" in plan.parts:
            say("decode gpu, stage by stage")
            result["gpu_stages"] = bench_gpu_stages(plan, samples)
        if "e2e" in plan.parts:
            precision = best["precision"] if best else plan.precisions[0]
            cl = best["channels_last"] if best else True
            compiled = best["compile"] if best else plan.compile[-1]
            mode = best.get("compile_mode") if best else plan.compile_modes[0]
            say(f"end to end: decode {decode_label(plan.decode, plan.decode_ahead)}, "
                f"{plan.e2e_workers} worker(s)")
            result["end_to_end"] = bench_end_to_end(plan, samples, precision, cl, compiled, mode)
        lower = sorted(set(epoch_resolutions(plan)) - {plan.resolution})
        if lower and best:
            result["progressive"] = _bench_lower(plan, lower, best, samples, say)
    if "sync" in plan.parts:
        result["sync"] = []
        for compiled in plan.compile:
            say(f"the step's host wait: compile={compiled}")
            result["sync"].append(
                bench_sync(plan, plan.batch_sizes[0], plan.precisions[0], compiled)
            )
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
        setting = (best["precision"], best["channels_last"], best["compile"],
                   best.get("compile_mode"))  # fmt: skip
        record = bench_model(at, best["batch_size"], *setting)
        if samples is not None and "e2e" in plan.parts:
            e2e = bench_end_to_end(at, samples, *setting)
            record["end_to_end_img_s"] = e2e["img_s"]
        if "img_s" in record:
            out.append(record)
    return out


def step_target(records: list[dict], target: float = STEP_TARGET_IMG_S) -> dict | None:
    """The fastest model setting against the step's target: {"target_img_s", "img_s",
    "fraction" (img_s / target), "setting" (batch, precision, layout, compile mode, LR)};
    None when no setting ran."""
    best = fastest(records)
    if best is None:
        return None
    keys = ("batch_size", "precision", "channels_last", "compile", "compile_mode", "lr",
            "resolution")  # fmt: skip
    return {
        "target_img_s": target,
        "img_s": best["img_s"],
        "fraction": best["img_s"] / target,
        "setting": {k: best.get(k) for k in keys},
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {resources.available_cpus()} cores)"
