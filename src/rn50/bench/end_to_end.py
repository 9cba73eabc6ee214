"""End to end: training img/s with the loader feeding the model, stepped as training steps it."""

from __future__ import annotations

import math
import time

from rn50 import resources
from rn50.bench.model_step import compile_model, training_setup
from rn50.bench.plan import BenchPlan
from rn50.bench.timing import sync
from rn50.config import DataConfig


def bench_end_to_end(
    plan: BenchPlan,
    samples,
    precision: str,
    channels_last: bool,
    compiled: bool = False,
    mode: str | None = None,
) -> dict:
    """Training img/s with the loader feeding the model (the plan's decode mode and workers),
    stepped as training steps it: rn50.train.step.train_step with rn50.optim's SGD and
    one-cycle schedule. That step waits once for the GPU (its check for a non-finite loss),
    so what the loop does between steps, such as decoding the next batch on the GPU, is
    counted as training does it. `compiled`: torch.compile'd, as train.compile trains (its
    compilation falls in the untimed first step), in torch.compile `mode`.

    Batches are plan.batch_sizes[0] images at plan.resolution px; `samples` ((path, label),
    repeated as needed) feed plan.e2e_steps timed steps after the warm-up. Returns the
    setting with "img_s" (NaN when nothing was timed), "images" timed and "warmup_steps".
    """
    from rn50.config import OptimConfig
    from rn50.data.batch import to_device
    from rn50.data.loader import PREFETCH_FACTOR
    from rn50.data.pipeline import make_loader
    from rn50.optim import build_optimizer, build_scheduler
    from rn50.train.step import train_step

    device = plan.device
    batch_size = plan.batch_sizes[0]
    rt, model, scaler, criterion = training_setup(plan, precision, channels_last)
    optim_cfg = OptimConfig(max_lr=0.1)
    optimizer = build_optimizer(model, optim_cfg, loss_scaling=rt.use_scaler)
    step_model = compile_model(model, mode) if compiled else model
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
        gpu_decoder=plan.gpu_decoder,
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
            sync(device)
            t0 = time.perf_counter()
        elif t0 is not None:
            count += images.shape[0]
    sync(device)
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
        "compile_mode": (mode or "default") if compiled else None,
        "cores": resources.available_cpus(),
        "img_s": count / elapsed if elapsed > 0 else float("nan"),
        "images": count,
        "warmup_steps": warmup,
    }
