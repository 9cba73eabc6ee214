"""One validation pass (loss, top-1, top-5 summed over ranks), and a checkpoint's evaluation."""

import dataclasses
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn

from rn50 import distributed as dist
from rn50.checkpoint import check_classes, class_mapping, load_weights
from rn50.config import Config
from rn50.data.auto import resolve_data
from rn50.data.batch import to_device
from rn50.errors import ConfigError
from rn50.metrics import Meter
from rn50.model import build_model
from rn50.progress import Reporter, make_reporter
from rn50.resources import note
from rn50.train.loaders import eval_loader, load_index, warn_about_index
from rn50.train.runtime import Runtime, autocast, make_runtime


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    rt: Runtime,
    report: Reporter | None = None,
    warn: Callable[[str], None] | None = None,
    pad_to: int = 0,
    first_call=None,
) -> dict:
    """Loss, top-1 and top-5 (%) over this rank's share of the validation set, summed over
    ranks as counts; also "count" (images scored) and "skipped" (unreadable files).

    The loss is plain cross-entropy (no label smoothing), comparable across recipes.
    `report` shows the pass's progress; `warn` names each unreadable file, in the words
    training uses ("skipped unreadable image PATH"). `pad_to` (a compiled model: the loader's
    batch size): a shorter batch (the last one, or one that lost unreadable files) is padded
    with zero images to that size and the padding's outputs dropped, so the model sees one
    shape only (no recompilation) and each image is still scored once; in eval mode the
    images of a batch do not affect each other. `first_call`: a context factory taking the
    shape's name (CompileWatch.first), entered around each forward pass.
    """
    model.eval()
    meter = Meter(rt.device)
    for images, targets, bad in report.wrap(loader, meter) if report else loader:
        meter.skip(bad)
        if warn is not None:
            for path in bad:
                warn(f"skipped unreadable image {path}")
        if not len(targets):
            continue
        images, targets = to_device(images, targets, rt.device, rt.channels_last)
        n = images.shape[0]
        if pad_to > n:
            images = pad_batch(images, pad_to)
        with first_call(f"{images.shape[-1]} px (evaluation)") if first_call else nullcontext():
            with autocast(rt):
                logits = model(images)[:n]
        # Per-image losses: the sums do not depend on how the images were split into batches
        # or ranks, so a 2-rank evaluation equals a 1-process one exactly.
        losses = nn.functional.cross_entropy(logits.float(), targets, reduction="none")
        meter.update(losses, logits, targets)
        if report:
            report.step(targets.shape[0])
    return meter.all_reduce().summary()


def pad_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) -> (size, C, H, W): zero images appended, in the same memory format."""
    pad = images.new_zeros((size - images.shape[0], *images.shape[1:]))
    out = torch.cat([images, pad])
    if images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def evaluate_checkpoint(
    state: dict, path: str, cfg: Config, warn: Callable[[str], None] | None = None
) -> dict:
    """Evaluate a loaded checkpoint's weights (read from `path`) on cfg's validation set.

    Labels never shift: the checkpoint's class ids are compared with the dataset's. The same
    ids in the same order are scored as they are ("classes": "same"); when every dataset
    class id is among the checkpoint's (another order, a subset), each val image is scored
    against the checkpoint's output of its class id ("classes": "mapped"). `warn` names each
    unreadable file. Raises CheckpointError when a dataset class is not among the
    checkpoint's or the weights do not fit, and what load_index raises.
    """
    rt = make_runtime(cfg)
    index = load_index(cfg.data, None)
    if warn is not None and dist.is_main():  # the same index on every rank: named once
        warn_about_index(index, warn, val=False)
    check_classes(state, cfg.model.num_classes, path)
    mapping = class_mapping(state, index.classes, path)
    if not state.get("classes") and len(index.classes) != cfg.model.num_classes:
        raise ConfigError(
            f"model.num_classes is {cfg.model.num_classes} but {index.root} has "
            f"{len(index.classes)} classes; set model.num_classes={len(index.classes)}"
        )
    if mapping is not None:
        index = dataclasses.replace(index, val=tuple((p, mapping[y]) for p, y in index.val))
    say = note if dist.is_main() else None  # eval does not compile: the eager step's rates
    data = resolve_data(cfg.data, rt.device, say=say)
    model = build_model(cfg.model)
    load_weights(model, state["model"], path, "evaluate it with the config it was trained with")
    model.to(rt.device, memory_format=rt.memory_format)
    loader = eval_loader(data, index, rt)
    result = evaluate(model, loader, rt, make_reporter(cfg.train, "val", len(loader)), warn)
    return {**result, "classes": "same" if mapping is None else "mapped"}
