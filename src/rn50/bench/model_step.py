"""The model step alone: training img/s (forward, backward, SGD) on synthetic data already on
the device, for one batch size, precision, memory format and compile setting."""

from __future__ import annotations

import time

import torch
from torch import nn

from rn50.bench.plan import BenchPlan
from rn50.bench.timing import error_text, median, sync
from rn50.config import ModelConfig

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""precision name -> autocast dtype (None: fp32, no autocast)."""


def _train_step(model, images, targets, optimizer, scaler, criterion, device, amp_dtype):
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss = criterion(model(images), targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def training_setup(plan: BenchPlan, precision: str, channels_last: bool):
    """(rt, model, scaler, criterion) for timing training steps: the Runtime of `precision`
    (a key of AMP_DTYPES) and `channels_last` on the plan's device, the plan's arch there in
    train mode and rt's memory format, seeded (torch.manual_seed(0)), a GradScaler that
    scales the loss where rt needs it (fp16), and cross-entropy."""
    from rn50.model import build_model
    from rn50.train.runtime import Runtime

    rt = Runtime(plan.device, AMP_DTYPES[precision], channels_last)
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(arch=plan.arch, num_classes=plan.num_classes, blurpool=plan.blurpool)
    )
    model.to(plan.device, memory_format=rt.memory_format).train()
    scaler = torch.amp.GradScaler(plan.device.type, enabled=rt.use_scaler)
    return rt, model, scaler, nn.CrossEntropyLoss()


def synthetic_batch(plan: BenchPlan, batch_size: int, rt) -> tuple[torch.Tensor, torch.Tensor]:
    """(images batch_size x 3 x R x R in rt's memory format, targets batch_size) of random
    values on the plan's device, R the plan's resolution."""
    images = torch.randn(batch_size, 3, plan.resolution, plan.resolution, device=plan.device)
    targets = torch.randint(0, plan.num_classes, (batch_size,), device=plan.device)
    return images.contiguous(memory_format=rt.memory_format), targets


def compile_model(model: nn.Module, mode: str | None = None) -> nn.Module:
    """torch.compile(model) for static shapes, as train.compile compiles (rn50.train.compiled),
    compiled afresh: compiled code is cached per Python function, not per model, and a
    second model at another resolution or batch would otherwise reuse the first's cache
    entries and limits. `mode`: torch.compile's (None or "default": its default)."""
    import torch._dynamo

    from rn50.train.compiled import COMPILE_OPTIONS

    torch._dynamo.reset()
    options = dict(COMPILE_OPTIONS)
    if mode and mode != "default":
        options["mode"] = mode
    return torch.compile(model, **options)


def scaled_lr(batch_size: int, base: float = 0.1) -> float:
    """The linear scaling rule (Goyal et al. 2017): `base` per 256 images."""
    return base * batch_size / 256


def bench_model(
    plan: BenchPlan,
    batch_size: int,
    precision: str,
    channels_last: bool,
    compiled: bool,
    mode: str | None = None,
) -> dict:
    """Training img/s of one setting on synthetic data (batch_size x 3 x R x R images, R the
    plan's resolution; plan.warmup untimed steps, then plan.repeats runs of plan.steps), SGD
    at the LR scaled to the batch (`scaled_lr`); `mode`: the torch.compile mode when
    `compiled`.

    Returns the setting with "img_s" (the median) and "runs" (img/s of each run), or with
    "error" ("Type: first line of the message") when the step fails (no C++ compiler for
    torch.compile, a precision the device lacks): a failed setting does not stop the others.
    """
    record = {
        "arch": plan.arch,
        "blurpool": plan.blurpool,
        "resolution": plan.resolution,
        "batch_size": batch_size,
        "precision": precision,
        "channels_last": channels_last,
        "compile": compiled,
        "compile_mode": (mode or "default") if compiled else None,
        "lr": scaled_lr(batch_size),
    }
    device, amp_dtype = plan.device, AMP_DTYPES[precision]
    rt, model, scaler, criterion = training_setup(plan, precision, channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=record["lr"], momentum=0.9)
    images, targets = synthetic_batch(plan, batch_size, rt)
    try:
        step_model = compile_model(model, mode) if compiled else model
        for _ in range(plan.warmup):
            _train_step(
                step_model, images, targets, optimizer, scaler, criterion, device, amp_dtype
            )
        sync(device)
        runs = []
        for _ in range(plan.repeats):
            t0 = time.perf_counter()
            for _ in range(plan.steps):
                _train_step(
                    step_model, images, targets, optimizer, scaler, criterion, device, amp_dtype
                )
            sync(device)
            runs.append(batch_size * plan.steps / (time.perf_counter() - t0))
    except Exception as e:  # no C++ compiler for torch.compile, a precision the device lacks
        return {**record, "error": error_text(e)}
    return {**record, "img_s": median(runs), "runs": runs}
