"""The loader a run trains and validates with, for each `data.decode` mode.

- `cpu` (default): workers read, decode (DCT-scaled to the crop), crop, resize and flip to
  uint8; the main process copies the batch to the device, which normalizes it.
- `gpu`: workers read the bytes, parse the header and draw the crop; the main process decodes
  the batch on the device, which crops, resizes, flips and normalizes it.
- `pil`: workers decode with PIL and apply torchvision's transforms (uint8); as `cpu` after.

Every mode yields the same label stream and, for one seed, the same crop boxes and flips
(rn50.data.decode.sample_crop follows torchvision's draws) and the same data.auto_augment
operations (rn50.data.augment: in the workers for cpu and pil, on the device for gpu); they
differ only in resampling details (within a level or two of 255 at full decoding scale).
data.ra_reps is the sampler's (rn50.data.loader.ShardedSampler); random erasing and
MixUp/CutMix act on the batch in the training loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rn50.config import DECODE_MODES
from rn50.data.auto import resolve_data
from rn50.data.decode import FastEvalTransform, FastTrainTransform, read_bytes
from rn50.data.gpu import DeviceDecodeLoader, GpuEvalPrep, GpuTrainPrep, collate_encoded
from rn50.data.image import load_rgb
from rn50.data.loader import Sample, build_loader, collate_skipping_bad
from rn50.data.transforms import EvalTransform, TrainTransform

# mode -> (what a worker reads, train transform, eval transform, collate)
MODES = {
    "pil": (load_rgb, TrainTransform, EvalTransform, collate_skipping_bad),
    "cpu": (read_bytes, FastTrainTransform, FastEvalTransform, collate_skipping_bad),
    "gpu": (read_bytes, GpuTrainPrep, GpuEvalPrep, collate_encoded),
}


def transforms_for(
    mode: str,
    train: bool,
    resolution: int,
    min_scale: float = 0.08,
    hflip: bool = True,
    crop_ratio: float = 0.875,
    auto_augment: str = "none",
):
    """(read, transform, collate) of a mode: what a worker does with a path."""
    if mode not in MODES:
        raise ValueError(f"unknown data.decode mode {mode!r}; one of {', '.join(DECODE_MODES)}")
    read, train_cls, eval_cls, collate = MODES[mode]
    if train:
        return read, train_cls(resolution, min_scale, hflip, auto_augment), collate
    return read, eval_cls(resolution, crop_ratio), collate


def make_loader(
    cfg,
    samples: Sequence[Sample],
    *,
    train: bool,
    batch_size: int,
    device: torch.device,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    accum: int = 1,
    resolution: int | None = None,
):
    """The loader of `samples` for `cfg` (a DataConfig): a DataLoader of uint8 Batches, or
    for decode gpu a DeviceDecodeLoader whose Batches are already on `device`.

    Either way the training loop iterates Batch(images, targets, bad) and calls
    `loader.sampler.set_epoch(...)`; `rn50.data.batch.to_device` copies (a no-op for gpu)
    and normalizes. `resolution` overrides cfg.resolution (progressive resizing, a separate
    validation resolution). data.workers and data.decode `auto` are resolved by
    rn50.data.auto (the commands resolve them first, with train.compile, and log the choice).
    """
    cfg = resolve_data(cfg, device)
    read, transform, collate = transforms_for(
        cfg.decode,
        train,
        resolution or cfg.resolution,
        cfg.min_scale,
        cfg.hflip,
        cfg.crop_ratio,
        cfg.auto_augment,
    )
    loader = build_loader(
        samples,
        transform,
        batch_size,
        cfg.workers,
        train=train,
        seed=seed,
        rank=rank,
        world=world,
        # Pinned host memory makes the copy to a GPU asynchronous; the gpu mode copies only
        # file bytes, which its decoder reads from pageable memory anyway.
        pin_memory=device.type == "cuda" and cfg.decode != "gpu",
        accum=accum,
        read=read,
        collate=collate,
        reps=cfg.ra_reps,
    )
    if cfg.decode == "gpu":
        return DeviceDecodeLoader(loader, device, cfg.decode_ahead, cfg.gpu_decoder)
    return loader
