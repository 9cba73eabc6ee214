"""`rn50 data show`: the first training images of a run, as the model sees them.

They come from the loader the trainer builds (rn50.data.pipeline.make_loader: the same
data.decode mode, seed, epoch-1 resolution, crops and flips), are normalized exactly as on the
training device, then mapped back to pixels for display, so the picture is what the first
optimizer step is fed, not what is on disk.
"""

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import torch

from rn50.config import Config
from rn50.data.auto import resolve_data
from rn50.data.batch import channel_statistics, to_device
from rn50.data.pipeline import make_loader
from rn50.data.schedule import resolution_at
from rn50.errors import DataError, UserError
from rn50.resources import note
from rn50.train.loaders import load_index, warn_about_index


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """normalize()'s inverse: float (N, 3, H, W) -> uint8 pixels."""
    mean, std = channel_statistics(x.device)
    return (x.float() * std + mean).round().clamp(0, 255).to(torch.uint8)


def warn(message: str) -> None:
    """One warning line on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def draw_samples(cfg: Config, count: int) -> tuple[torch.Tensor, list[int], tuple[str, ...]]:
    """(model input (N, 3, R, R) float, labels, class names): the first `count` training
    samples of epoch 1 (fewer when the dataset is smaller or some files are unreadable,
    which are named in warnings on stderr, as are entries indexing set aside)."""
    if count < 1:
        raise UserError(f"--count must be at least 1, got {count}")
    # Training's own index (cached, less the skip list) and its warnings about what it set aside.
    index = load_index(cfg.data, None)
    warn_about_index(index, warn, val=False)
    if not index.train:
        raise DataError(f"no training images in {index.root}")
    # decode auto as training resolves it (rn50.data.auto, with the run's workers); then one
    # batch, in this process: starting worker processes would take longer than decoding it.
    def say(line: str) -> None:
        if line.startswith("data.decode"):  # the workers are not this command's
            note(line)

    cuda = torch.cuda.is_available() and cfg.train.device != "cpu"
    data = resolve_data(cfg.data, torch.device("cuda" if cuda else "cpu"), cfg.train.compile,
                        say)
    data = dataclasses.replace(data, workers=0)
    gpu = data.decode == "gpu" and torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    loader = make_loader(
        data,
        index.train,
        train=True,
        batch_size=min(count, len(index.train)),
        device=device,
        seed=cfg.train.seed,
        resolution=resolution_at(1, data),
    )
    loader.sampler.set_epoch(1)  # the trainer's first epoch
    images, targets, bad = next(iter(loader))
    for path in bad:
        warn(f"skipped unreadable image {path}")
    if not len(targets):
        raise DataError(f"none of the first {len(bad)} training images of {index.root} decodes; "
                        f"run 'rn50 data check {index.root}'")
    x, targets = to_device(images, targets, device, channels_last=False)
    return x.cpu(), targets.tolist(), index.names


def short_name(name: str, width: int = 22) -> str:
    """'tench, Tinca tinca' -> 'tench'; long names are cut with an ellipsis."""
    first = name.split(",")[0].strip()
    return first if len(first) <= width else first[: width - 1] + "\u2026"


def show_samples(cfg: Config, out: str | os.PathLike, count: int = 16) -> Path:
    """Write a grid PNG of draw_samples(), each tile titled with its class name."""
    from rn50.plots import save_grid

    x, labels, names = draw_samples(cfg, count)
    pixels = denormalize(x).permute(0, 2, 3, 1).numpy()  # (N, H, W, 3) for imshow
    titles = [short_name(names[y]) for y in labels]
    return save_grid(np.ascontiguousarray(pixels), titles, out)
