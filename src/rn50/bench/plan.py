"""What `rn50 bench` measures: the plan (`BenchPlan`), its defaults for a config and a device,
the run's resolution per epoch, and the comma-separated lists of its flags."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from rn50 import resources
from rn50.config import Config, DataConfig

DATA_MODES = ("torchvision", "pil", "cpu", "gpu")  # torchvision: the baseline, not an rn50 mode
PRECISIONS = ("fp32", "bf16", "fp16")
PARTS = ("model", "data", "e2e", "sync", "stages")  # sync, stages: asked for with --only
COMPILE_MODES = ("default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead")
STEP_TARGET_IMG_S = 8000.0  # the model step's goal at 224 px on an H200 (MLPerf's per GPU)


@dataclasses.dataclass
class BenchPlan:
    """What to measure. Lists are crossed: every combination is one measurement.

    Resolutions are in pixels (the square side of a training image), batch sizes in images,
    steps and repeats are counts, the price is per GPU-hour in any currency. `parts` names the
    measurements to run: "model", "data", "e2e" (end to end), "sync" (the step's host wait,
    rn50.bench.sync_cost), "stages" (the gpu decode path stage by stage, gpu_stages).
    """

    device: torch.device
    arch: str = "resnet50"
    num_classes: int = 1000
    blurpool: bool = False  # model.blurpool
    resolution: int = 224
    batch_sizes: Sequence[int] = (32,)
    precisions: Sequence[str] = ("fp32", "bf16")
    channels_last: Sequence[bool] = (True, False)
    compile: Sequence[bool] = (False,)
    compile_modes: Sequence[str] = ("default",)  # torch.compile modes of the compiled settings
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
    gpu_decoder: str = DataConfig.gpu_decoder  # decode gpu: the device's JPEG decoder
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
    cores: int = 0  # measure as if the process had this many cores (affinity); 0: all


def default_plan(
    cfg: Config, device: torch.device, full: bool = False, say: Callable[[str], None] | None = None
) -> BenchPlan:
    """The matrix for `cfg` on `device`: small on a CPU (its steps are slow), all of it with
    `full` (fp16 on a CPU is emulated and slow; compilation takes minutes). The end-to-end
    run's workers and decode mode are the config's, `auto` resolved as training resolves it
    (rn50.data.auto; each choice's line through `say`)."""
    from rn50.data.auto import resolve_data

    cores = resources.available_cpus()
    data = resolve_data(cfg.data, device, cfg.train.compile, say)
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
        e2e_workers=min(data.workers, cores),
        # decode gpu on a CPU runs the device half on the host: tested, but slow and beside
        # the point there, so only the full matrix measures it.
        modes=DATA_MODES if cuda or full else tuple(m for m in DATA_MODES if m != "gpu"),
        decode=data.decode,
        decode_ahead=cfg.data.decode_ahead,
        gpu_decoder=cfg.data.gpu_decoder,
        min_scale=cfg.data.min_scale,
        epochs=cfg.train.epochs,
        min_resolution=cfg.data.min_resolution,
        ramp_start_epoch=cfg.data.ramp_start_epoch,
        ramp_end_epoch=cfg.data.ramp_end_epoch,
        price_per_gpu_hour=cfg.train.price_per_gpu_hour,
    )


def uses_gpu_decoder(plan: BenchPlan) -> bool:
    """Whether the plan decodes on the device (so data.gpu_decoder must be there): the stage
    breakdown, the data path's gpu mode, or an end-to-end run in decode gpu."""
    parts = set(plan.parts)
    return (
        "stages" in parts
        or ("data" in parts and "gpu" in plan.modes)
        or ("e2e" in parts and plan.decode == "gpu")
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


def parse_list(text: str, kind: type, name: str, choices: Sequence[str] = ()) -> tuple:
    """'16,32' -> (16, 32) for a --flag LIST, each item converted by `kind` (int, str).

    Raises UserError naming the flag `name` for an item `kind` cannot convert, one not in
    `choices` (when given), or an int below 1 (below 0 for --workers).
    """
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
