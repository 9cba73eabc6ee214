"""`rn50 bench`: throughput of the model step, of the data path and of both together, and what
an ImageNet-1k run would take and cost at those rates.

- model: training steps (forward, backward, SGD) on synthetic data already on the device, for
  each precision, channels_last on/off, torch.compile on/off and batch size asked for;
- data: the loader alone, on ImageNet-like JPEG files (real photos, rn50.data.photos) or the
  train files of a dataset, for each decode mode and worker count, against torchvision's
  ImageFolder with the classic ImageNet transforms (RandomResizedCrop, flip, ToTensor,
  Normalize) as the baseline; for decode gpu the device's decoding is included;
- end to end: the model step fed by the loader (the config's decode mode and workers).

Each figure is the median of `repeats` timed runs (after warm-up steps, or after the first
batch of a loader, so compilation and worker start-up are not counted); the data modes take
turns within each repeat, so a change in the machine's load hits them alike.

The projection: an epoch of ImageNet-1k (1,281,167 images) takes 1,281,167 / min(data, model)
seconds, with the fastest model setting and the fastest rn50 data mode measured; a run of
`epochs` epochs on `gpus` devices costs hours x price per GPU-hour x gpus (assuming linear
scaling across devices, validation not counted).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from rn50.config import Config, DataConfig, ModelConfig

IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DATA_MODES = ("torchvision", "pil", "cpu", "gpu")  # torchvision: the baseline, not an rn50 mode
PRECISIONS = ("fp32", "bf16", "fp16")
_AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass
class BenchPlan:
    """What to measure. Lists are crossed: every combination is one measurement."""

    device: torch.device
    arch: str = "resnet50"
    num_classes: int = 1000
    blurpool: bool = False  # model.blurpool
    resolution: int = 224
    batch_sizes: Sequence[int] = (32,)
    precisions: Sequence[str] = ("fp32", "bf16")
    channels_last: Sequence[bool] = (True, False)
    compile: Sequence[bool] = (False,)
    steps: int = 5  # timed model steps per repeat
    warmup: int = 2  # untimed model steps first (compilation happens here)
    repeats: int = 3
    modes: Sequence[str] = DATA_MODES
    workers: Sequence[int] = (1,)
    images: int = 512  # ImageNet-like files written for the data benchmark
    data_batch_size: int = 32  # at most; fewer when there are few files (4+ batches a pass)
    data_dir: str = ""  # a dataset to read instead of the generated files
    e2e_steps: int = 10
    e2e_workers: int = 1
    decode: str = "cpu"  # the end-to-end run's mode
    decode_ahead: int = DataConfig.decode_ahead  # decode gpu: batches decoded ahead in a thread
    min_scale: float = 0.08
    parts: Sequence[str] = ("model", "data", "e2e")
    epochs: int = 14
    # Progressive resizing (data.min_resolution ...): the run trains at lower resolutions
    # early; the best model setting and the end-to-end run are measured at each of them too.
    min_resolution: int = 0
    ramp_start_epoch: int = 0
    ramp_end_epoch: int = 0
    price_per_gpu_hour: float = 0.0
    gpus: int = 1
    threads: int = 0  # torch's CPU threads in this process; 0: torch's default


def default_plan(cfg: Config, device: torch.device, full: bool = False) -> BenchPlan:
    """The matrix for `cfg` on `device`: small on a CPU (its steps are slow), all of it with
    `full` (fp16 on a CPU is emulated and slow; compilation takes minutes)."""
    cores = available_cores()
    cuda = device.type == "cuda"
    precisions = list(PRECISIONS if full else ("fp32", "bf16"))
    if cuda and not torch.cuda.is_bf16_supported():  # e.g. a T4: fp16 is its fast format
        precisions = [p for p in precisions if p != "bf16"] + ([] if full else ["fp16"])
    return BenchPlan(
        device=device,
        arch=cfg.model.arch,
        num_classes=cfg.model.num_classes,
        blurpool=cfg.model.blurpool,
        resolution=cfg.data.resolution,
        batch_sizes=(cfg.data.batch_size, 2 * cfg.data.batch_size)
        if full and cuda
        else ((cfg.data.batch_size,) if cuda else (16,)),
        precisions=tuple(precisions),
        compile=(False, True) if full else (False,),
        workers=tuple(sorted({1, cores} if not full else {1, cores, *_powers_of_two(cores)})),
        steps=5 if cuda else 3,
        warmup=2 if cuda else 1,
        data_batch_size=min(cfg.data.batch_size, 32),
        e2e_steps=20 if cuda else 4,
        e2e_workers=min(cfg.data.workers, cores),
        # decode gpu on a CPU runs the device half on the host: tested, but slow and beside
        # the point there, so only the full matrix measures it.
        modes=DATA_MODES if cuda or full else tuple(m for m in DATA_MODES if m != "gpu"),
        decode=cfg.data.decode,
        decode_ahead=cfg.data.decode_ahead,
        min_scale=cfg.data.min_scale,
        epochs=cfg.train.epochs,
        min_resolution=cfg.data.min_resolution,
        ramp_start_epoch=cfg.data.ramp_start_epoch,
        ramp_end_epoch=cfg.data.ramp_end_epoch,
        price_per_gpu_hour=cfg.train.price_per_gpu_hour,
    )


def epoch_resolutions(plan: BenchPlan) -> list[int]:
    """The training resolution of each epoch of the projected run (rn50.data.schedule)."""
    from rn50.data.schedule import resolution_at

    data = DataConfig(
        resolution=plan.resolution,
        min_resolution=plan.min_resolution,
        ramp_start_epoch=plan.ramp_start_epoch,
        ramp_end_epoch=plan.ramp_end_epoch,
    )
    return [resolution_at(e, data) for e in range(1, plan.epochs + 1)]


def _powers_of_two(n: int) -> list[int]:
    return [2**k for k in range(n.bit_length()) if 2**k <= n]


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _decode_label(mode: str, ahead: int | None) -> str:
    """'gpu, 2 batches ahead' / 'gpu, between steps' / 'cpu': the end-to-end run's mode."""
    if mode != "gpu" or ahead is None:
        return mode
    return f"gpu, {ahead} batches ahead" if ahead > 0 else "gpu, between steps"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------------------------------------
# Model step


def _train_step(model, images, targets, optimizer, scaler, criterion, device, amp_dtype):
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss = criterion(model(images), targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def _training_setup(plan: BenchPlan, precision: str, channels_last: bool):
    """(model, scaler, criterion, memory_format) for timing training steps: the plan's arch
    on its device, seeded, loss scaling for fp16."""
    from rn50.model import build_model

    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(
        ModelConfig(arch=plan.arch, num_classes=plan.num_classes, blurpool=plan.blurpool)
    )
    model.to(plan.device, memory_format=memory_format).train()
    scaler = torch.amp.GradScaler(plan.device.type, enabled=precision == "fp16")
    return model, scaler, nn.CrossEntropyLoss(), memory_format


def _compiled(model: nn.Module) -> nn.Module:
    """torch.compile(model), compiled afresh for this shape. Compiled code is cached per Python
    function, not per model: a second model at another resolution or batch would otherwise be
    recompiled for dynamic shapes, slower to compile and not what a run at one size gets."""
    import torch._dynamo

    torch._dynamo.reset()
    return torch.compile(model)


def bench_model(
    plan: BenchPlan, batch_size: int, precision: str, channels_last: bool, compiled: bool
) -> dict:
    """Training img/s of one setting on synthetic data: {..., img_s, runs} or {..., error}."""
    record = {
        "arch": plan.arch,
        "blurpool": plan.blurpool,
        "resolution": plan.resolution,
        "batch_size": batch_size,
        "precision": precision,
        "channels_last": channels_last,
        "compile": compiled,
    }
    device, amp_dtype = plan.device, _AMP[precision]
    model, scaler, criterion, memory_format = _training_setup(plan, precision, channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch_size, 3, plan.resolution, plan.resolution, device=device)
    images = images.contiguous(memory_format=memory_format)
    targets = torch.randint(0, plan.num_classes, (batch_size,), device=device)
    step_model = _compiled(model) if compiled else model
    try:
        for _ in range(plan.warmup):
            _train_step(
                step_model, images, targets, optimizer, scaler, criterion, device, amp_dtype
            )
        _sync(device)
        runs = []
        for _ in range(plan.repeats):
            t0 = time.perf_counter()
            for _ in range(plan.steps):
                _train_step(
                    step_model, images, targets, optimizer, scaler, criterion, device, amp_dtype
                )
            _sync(device)
            runs.append(batch_size * plan.steps / (time.perf_counter() - t0))
    except Exception as e:  # no C++ compiler for torch.compile, a precision the device lacks
        return {**record, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    return {**record, "img_s": _median(runs), "runs": runs}


# ---------------------------------------------------------------------------------------------
# Data path


def bench_files(plan: BenchPlan, tmp: Path) -> tuple[list[tuple[str, int]], str]:
    """(samples, where they come from): the dataset's first train files, or generated ones."""
    if plan.data_dir:
        from rn50.data.index_cache import load_dataset_index

        index = load_dataset_index(plan.data_dir)
        return list(index.train[: plan.images]), f"{plan.data_dir} (first {plan.images} files)"
    from rn50.data.layout import find_dataset
    from rn50.data.photos import write_imagenet_like

    root = write_imagenet_like(tmp / "photos", plan.images)
    return list(find_dataset(root).train), (
        f"{plan.images} ImageNet-like JPEGs (500x375, quality 90, real photos)"
    )


def _data_batch(plan: BenchPlan, samples) -> int:
    return max(1, min(plan.data_batch_size, len(samples) // 4))


def _torchvision_loader(samples, plan: BenchPlan, workers: int):
    """The baseline: torchvision's ImageFolder and the classic ImageNet training transforms."""
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision import transforms as T

    class Listed(datasets.ImageFolder):
        # ImageFolder as it is, but over these files: its own scan of a real dataset's
        # train folder would take minutes and read files the benchmark does not time.
        def find_classes(self, directory):
            labels = sorted({label for _, label in samples})
            return [str(k) for k in labels], {str(k): k for k in labels}

        def make_dataset(self, directory, class_to_idx, *args, **kwargs):
            return list(samples)

    transform = T.Compose(
        [
            T.RandomResizedCrop(plan.resolution, scale=(plan.min_scale, 1.0)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    dataset = Listed(str(Path(samples[0][0]).parent), transform=transform)
    return DataLoader(
        dataset,
        batch_size=_data_batch(plan, samples),
        shuffle=True,
        num_workers=workers,
        drop_last=True,
    )


def _rn50_loader(samples, plan: BenchPlan, mode: str, workers: int):
    from rn50.data.pipeline import make_loader

    batch_size = _data_batch(plan, samples)
    cfg = DataConfig(
        resolution=plan.resolution,
        workers=workers,
        decode=mode,
        decode_ahead=plan.decode_ahead,
        min_scale=plan.min_scale,
        batch_size=batch_size,
    )
    loader = make_loader(
        cfg, samples, train=True, batch_size=batch_size, device=plan.device, seed=0
    )
    loader.sampler.set_epoch(1)
    return loader


def time_loader(loader, device: torch.device) -> tuple[float, int]:
    """(img/s, images timed) over one pass, from the first batch's arrival (worker start-up
    and the first batch not counted) to the last's."""
    count, t0 = 0, None
    for batch in loader:
        images = batch[0]
        if t0 is None:
            _sync(device)
            t0 = time.perf_counter()
            continue
        count += images.shape[0]
    _sync(device)
    elapsed = time.perf_counter() - t0 if t0 is not None else 0.0
    return (count / elapsed if elapsed > 0 else float("nan")), count


def bench_data(plan: BenchPlan, samples) -> list[dict]:
    """img/s of each (mode, workers), the modes taking turns within each repeat."""
    combos = [(m, w) for w in plan.workers for m in plan.modes]
    runs: dict[tuple[str, int], list[float]] = {c: [] for c in combos}
    for _ in range(plan.repeats):
        for mode, workers in combos:
            if mode == "torchvision":
                loader = _torchvision_loader(samples, plan, workers)
            else:
                loader = _rn50_loader(samples, plan, mode, workers)
            rate, _ = time_loader(loader, plan.device)
            runs[(mode, workers)].append(rate)
            del loader
    out = []
    for mode, workers in combos:
        rate = _median(runs[(mode, workers)])
        out.append(
            {
                "mode": mode,
                "workers": workers,
                "img_s": rate,
                "img_s_per_worker": rate / max(workers, 1),
                "runs": runs[(mode, workers)],
            }
        )
    return out


def ratios(data: list[dict]) -> list[dict]:
    """Each rn50 mode's img/s over the torchvision baseline's at the same worker count."""
    base = {r["workers"]: r["img_s"] for r in data if r["mode"] == "torchvision"}
    return [
        {
            "mode": r["mode"],
            "workers": r["workers"],
            "vs_torchvision": r["img_s"] / base[r["workers"]],
        }
        for r in data
        if r["mode"] != "torchvision" and r["workers"] in base and base[r["workers"]] > 0
    ]


# ---------------------------------------------------------------------------------------------
# End to end


def bench_end_to_end(
    plan: BenchPlan, samples, precision: str, channels_last: bool, compiled: bool = False
) -> dict:
    """Training img/s with the loader feeding the model (the plan's decode mode and workers),
    stepped as training steps it: rn50.engine.train_step with rn50.optim's SGD and
    one-cycle schedule. That step waits once for the GPU (its check for a non-finite loss),
    so what the loop does between steps, such as decoding the next batch on the GPU, is
    counted as training does it. `compiled`: torch.compile'd, as train.compile trains (its
    compilation falls in the untimed first step)."""
    from rn50.config import OptimConfig
    from rn50.data.batch import to_device
    from rn50.data.loader import PREFETCH_FACTOR
    from rn50.data.pipeline import make_loader
    from rn50.engine import Runtime, train_step
    from rn50.optim import build_optimizer, build_scheduler

    device = plan.device
    batch_size = plan.batch_sizes[0]
    model, scaler, criterion, _ = _training_setup(plan, precision, channels_last)
    optim_cfg = OptimConfig(max_lr=0.1)
    rt = Runtime(device, _AMP[precision], channels_last)
    optimizer = build_optimizer(model, optim_cfg, loss_scaling=rt.use_scaler)
    step_model = _compiled(model) if compiled else model
    # Untimed: the first step (start-up, the workers' start), then as many batches as the
    # workers can have prepared meanwhile. Timed from a full queue, a short run would
    # measure the model alone however slow the data path is.
    warmup = 1 + plan.e2e_workers * PREFETCH_FACTOR
    steps = warmup + plan.e2e_steps
    scheduler = build_scheduler(optimizer, optim_cfg, steps)
    cfg = DataConfig(
        resolution=plan.resolution,
        workers=plan.e2e_workers,
        decode=plan.decode,
        decode_ahead=plan.decode_ahead,
        min_scale=plan.min_scale,
        batch_size=batch_size,
    )
    # Labels of the benchmark files go up to the class count of the files, below num_classes.
    repeat = math.ceil(steps * batch_size / max(len(samples), 1))
    loader = make_loader(
        cfg, list(samples) * repeat, train=True, batch_size=batch_size, device=device, seed=0
    )
    loader.sampler.set_epoch(1)
    count, t0 = 0, None
    for step, (images, targets, _bad) in enumerate(loader):
        if step >= steps:
            break
        images, targets = to_device(images, targets, device, channels_last)
        targets = targets % plan.num_classes
        train_step(step_model, [(images, targets)], criterion, optimizer, scaler, scheduler, rt)
        if step + 1 == warmup:
            _sync(device)
            t0 = time.perf_counter()
        elif t0 is not None:
            count += images.shape[0]
    _sync(device)
    elapsed = time.perf_counter() - t0 if t0 is not None else 0.0
    return {
        "resolution": plan.resolution,
        "decode": plan.decode,
        "decode_ahead": plan.decode_ahead if plan.decode == "gpu" else None,
        "workers": plan.e2e_workers,
        "batch_size": batch_size,
        "precision": precision,
        "channels_last": channels_last,
        "compile": compiled,
        "img_s": count / elapsed if elapsed > 0 else float("nan"),
        "images": count,
        "warmup_steps": warmup,
    }


# ---------------------------------------------------------------------------------------------
# The whole benchmark


def projection(
    model_img_s: float,
    data_img_s: float,
    epochs: int,
    price: float,
    gpus: int,
    schedule: Sequence[tuple[int, float, float | None]] = (),
    end_to_end_img_s: float | None = None,
) -> dict:
    """Epoch time and run cost of ImageNet-1k at the slowest of the measured rates: the model
    step's, the data path's and, where there is one, the end-to-end run's (the loader
    feeding rn50's training step, which also shows what the two alone cannot: the workers
    and the training process sharing the CPU, the step waiting for its data).

    `schedule`: with progressive resizing, (resolution, model img/s, end-to-end img/s or None)
    of each epoch; the run's time is then the sum of its epochs' (epoch_s stays the
    full-resolution epoch).
    """
    rates = {"model": model_img_s, "data": data_img_s, "end to end": end_to_end_img_s}
    rate = _slowest(*rates.values())
    bottleneck = next(name for name, value in rates.items() if value == rate)
    epoch_s = IMAGENET_TRAIN_IMAGES / (rate * gpus)
    run_s = epoch_s * epochs
    if schedule:
        run_s = sum(
            IMAGENET_TRAIN_IMAGES / (_slowest(m, data_img_s, e) * gpus) for _, m, e in schedule
        )
    hours = run_s / 3600
    return {
        "images_per_epoch": IMAGENET_TRAIN_IMAGES,
        "model_img_s": model_img_s,
        "data_img_s": data_img_s,
        "end_to_end_img_s": end_to_end_img_s,
        "bottleneck": bottleneck,
        "img_s": rate,
        "gpus": gpus,
        "epoch_s": epoch_s,
        "epochs": epochs,
        "hours": hours,
        "resolutions": [r for r, _, _ in schedule],
        "price_per_gpu_hour": price,
        "cost": hours * price * gpus,
    }


def _slowest(*rates: float | None) -> float:
    """The lowest of the rates that were measured (None: not run; NaN: the run failed)."""
    return min(r for r in rates if r is not None and math.isfinite(r))


def run_bench(plan: BenchPlan, log=None) -> dict:
    """Measure what `plan` asks for; returns the JSON-able result (see README: Speed)."""
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
        "cores": available_cores(),
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
    best = _best(result.get("model", []))  # the setting end to end and lower sizes run with
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
            say(f"end to end: decode {_decode_label(plan.decode, plan.decode_ahead)}, "
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


def project(result: dict, plan: BenchPlan) -> dict | None:
    """The projection of `plan`'s run (its epochs, resolution schedule, GPUs and price) from
    the measurements in `result` (run_bench's, or one read back from its JSON): the fastest
    model setting, the fastest rn50 data mode, and the model rate at each lower resolution.
    None without a model and a data figure; ValueError when a resolution of the schedule,
    or the full resolution itself, was not measured."""
    best_model = _best(result.get("model", []))
    best_data = _best([r for r in result.get("data", []) if r["mode"] != "torchvision"])
    if not (best_model and best_data):
        return None
    arch = result.get("plan", {}).get("arch", plan.arch)
    if arch != plan.arch:
        raise ValueError(f"the measurements are of {arch}, the run trains {plan.arch}")
    blurpool = result.get("plan", {}).get("blurpool", False)  # older files: none measured
    if blurpool != plan.blurpool:
        raise ValueError(
            f"the measurements are {'with' if blurpool else 'without'} model.blurpool, the run "
            f"trains {'with' if plan.blurpool else 'without'} it"
        )
    measured = best_model.get("resolution", plan.resolution)
    if plan.resolution != measured:
        raise ValueError(
            f"the model step was measured at {measured} px, the run trains at "
            f"{plan.resolution} px"
        )
    progressive = [r for r in result.get("progressive", []) if "img_s" in r]
    rates = {r["resolution"]: r["img_s"] for r in progressive}
    rates[measured] = best_model["img_s"]
    # The end-to-end runs: at the full resolution (older results do not say which: theirs)
    # and at each lower one.
    whole = {r["resolution"]: r.get("end_to_end_img_s") for r in progressive}
    if result.get("end_to_end"):
        whole[result["end_to_end"].get("resolution", measured)] = result["end_to_end"]["img_s"]
    wanted = epoch_resolutions(plan)
    missing = sorted(set(wanted) - set(rates))
    if missing:
        raise ValueError(
            f"no model figure at {', '.join(map(str, missing))} px "
            f"(measured at {', '.join(map(str, sorted(rates)))} px)"
        )
    schedule = [(r, rates[r], whole.get(r)) for r in wanted] if len(set(wanted)) > 1 else []
    out = projection(
        best_model["img_s"],
        best_data["img_s"],
        plan.epochs,
        plan.price_per_gpu_hour,
        plan.gpus,
        schedule,
        whole.get(measured),
    )
    out["model_setting"] = {
        k: best_model[k] for k in ("batch_size", "precision", "channels_last", "compile")
    }
    out["data_setting"] = {k: best_data[k] for k in ("mode", "workers")}
    return out


def reproject(result: dict, plan: BenchPlan, source: str) -> dict:
    """`result` (an earlier `rn50 bench --json`, read from `source`) with the projection of
    `plan`'s run instead of its own: another recipe, price or GPU count, nothing measured
    again. A UserError when the measurements cannot answer for `plan`."""
    from rn50.errors import UserError

    try:
        projected = project(result, plan)
    except ValueError as e:
        raise UserError(f"{source}: {e}; run rn50 bench with this config instead") from None
    if projected is None:
        raise UserError(
            f"{source}: needs a model and a data measurement (it was run with --only)"
        )
    return {**result, "projection": projected, "projected_from": source}


def read_result(path: str) -> dict:
    """An `rn50 bench --json` output file; a UserError naming what is wrong with it."""
    from rn50.errors import UserError

    try:
        result = json.loads(Path(path).read_text())
    except OSError as e:
        raise UserError(f"--from: cannot read {path}: {e.strerror or e}") from None
    except ValueError:
        raise UserError(f"--from: {path} is not JSON (write it with rn50 bench --json)") from None
    if not isinstance(result, dict) or "plan" not in result or "device" not in result:
        raise UserError(f"--from: {path} is not the output of rn50 bench --json")
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


def _best(records: list[dict]) -> dict | None:
    ok = [r for r in records if "img_s" in r and math.isfinite(r["img_s"])]
    return max(ok, key=lambda r: r["img_s"]) if ok else None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {available_cores()} cores)"


def format_report(result: dict) -> str:
    """The readable tables of a run_bench result."""
    lines = [
        f"device: {result['device']}  torch {result.get('torch', '?')}  "
        f"load average at start {_load(result.get('load_avg_start'))}, "
        f"at end {_load(result.get('load_avg_end'))}"
    ]
    if result.get("model"):
        lines += [
            "",
            "Model step (synthetic data on the device"
            + (", model.blurpool" if result.get("plan", {}).get("blurpool") else "")
            + "), images/s:",
            f"  {'batch':>5}  {'precision':<9}  {'channels_last':<13}  {'compile':<7}  "
            f"{'img/s':>9}",
        ]
        for r in result["model"]:
            value = f"{r['img_s']:9.1f}" if "img_s" in r else f"  {r['error']}"
            lines.append(
                f"  {r['batch_size']:>5}  {r['precision']:<9}  "
                f"{'on' if r['channels_last'] else 'off':<13}  "
                f"{'on' if r['compile'] else 'off':<7}  {value}"
            )
    if result.get("data"):
        vs = {
            (r["mode"], r["workers"]): r["vs_torchvision"]
            for r in result.get("data_vs_torchvision", [])
        }
        lines += [
            "",
            f"Data path alone, {result.get('data_source', '?')}, images/s:",
            f"  {'mode':<12}  {'workers':>7}  {'img/s':>9}  {'per worker':>10}  "
            f"{'vs torchvision':>14}",
        ]
        for r in result["data"]:
            ratio = vs.get((r["mode"], r["workers"]))
            lines.append(
                f"  {r['mode']:<12}  {r['workers']:>7}  {r['img_s']:9.1f}  "
                f"{r['img_s_per_worker']:10.1f}  "
                f"{(f'{ratio:.2f}x' if ratio else '-'):>14}"
            )
    if result.get("end_to_end"):
        e = result["end_to_end"]
        lines += [
            "",
            f"End to end (decode {_decode_label(e['decode'], e.get('decode_ahead'))}, "
            f"{e['workers']} worker(s), batch "
            f"{e['batch_size']}, {e['precision']}{', compiled' if e.get('compile') else ''}): "
            f"{e['img_s']:.1f} images/s",
        ]
    if result.get("progressive"):
        lines += ["", "Progressive resizing: the best model setting at each lower resolution:"]
        for r in result["progressive"]:
            e2e = r.get("end_to_end_img_s")
            lines.append(
                f"  {r['resolution']:>4} px  model {r['img_s']:9.1f} img/s"
                + (f"  end to end {e2e:9.1f} img/s" if e2e is not None else "")
            )
    if result.get("projection"):
        p = result["projection"]
        if result.get("projected_from"):
            lines += ["", f"Projected from the measurements in {result['projected_from']}."]
        rates = f"data {p['data_img_s']:.1f}, model {p['model_img_s']:.1f}"
        if p.get("end_to_end_img_s") is not None:
            rates += f", end to end {p['end_to_end_img_s']:.1f}"
        lines += [
            "",
            f"ImageNet-1k projection: {p['images_per_epoch']:,} images / min({rates}) img/s "
            f"x {p['gpus']} GPU(s) = {_duration(p['epoch_s'])} per epoch "
            f"({p['bottleneck']} bound); {p['epochs']} epochs = {p['hours']:.1f} h"
            + (
                f" (progressive resizing {min(p['resolutions'])}-{max(p['resolutions'])} px)"
                if p.get("resolutions")
                else ""
            ),
        ]
        if p["price_per_gpu_hour"]:
            lines.append(f"  cost at {p['price_per_gpu_hour']:g}/GPU-hour: {p['cost']:.2f}")
    return "\n".join(lines)


def _load(values) -> str:
    return "/".join(f"{v:.2f}" for v in values) if values else "?"


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def to_json(result: dict) -> str:
    return json.dumps(result, indent=1)


def parse_list(text: str, kind: type, name: str, choices: Sequence[str] = ()) -> tuple:
    """'16,32' -> (16, 32) for a --flag LIST; a bad item is a UserError naming the flag."""
    from rn50.errors import UserError

    items = []
    for item in text.split(","):
        item = item.strip()
        try:
            value = kind(item)
        except ValueError:
            raise UserError(
                f"{name} takes a comma-separated list of {kind.__name__}s, got {text!r}"
            ) from None
        if choices and value not in choices:
            raise UserError(f"{name}: {value!r} is not one of {', '.join(choices)}")
        if kind is int and value < (0 if name == "--workers" else 1):
            raise UserError(f"{name}: {value} is too small")
        items.append(value)
    return tuple(items)
