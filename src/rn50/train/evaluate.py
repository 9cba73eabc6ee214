"""One validation pass (loss, top-1, top-5 summed over ranks), and a checkpoint's evaluation."""

from contextlib import nullcontext

import torch
from torch import nn

from rn50.checkpoint import check_classes
from rn50.config import Config
from rn50.data.batch import to_device
from rn50.metrics import Meter
from rn50.model import build_model
from rn50.progress import Reporter, make_reporter
from rn50.train.loaders import eval_loader, load_index
from rn50.train.runtime import Runtime, autocast, make_runtime


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    rt: Runtime,
    report: Reporter | None = None,
    pad_to: int = 0,
    first_call=None,
) -> dict:
    """Loss, top-1 and top-5 (%) over this rank's share of the validation set, summed over
    ranks as counts; also "count" (images scored) and "skipped" (unreadable files).

    The loss is plain cross-entropy (no label smoothing), comparable across recipes.
    `report` shows the pass's progress. `pad_to` (a compiled model: the loader's batch
    size): a shorter batch (the last one, or one that lost unreadable files) is padded with
    zero images to that size and the padding's outputs dropped, so the model sees one shape
    only (no recompilation) and each image is still scored once; in eval mode the images of
    a batch do not affect each other. `first_call`: a context factory taking the shape's
    name (CompileWatch.first), entered around each forward pass.
    """
    model.eval()
    meter = Meter(rt.device)
    for images, targets, bad in report.wrap(loader, meter) if report else loader:
        meter.skip(bad)
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


def evaluate_checkpoint(state: dict, path: str, cfg: Config) -> dict:
    """Evaluate a loaded checkpoint's weights (read from `path`) on cfg's validation set.

    Raises CheckpointError when its classes do not fit cfg's, and what load_index raises.
    """
    rt = make_runtime(cfg)
    check_classes(state, cfg.model.num_classes, path)
    index = load_index(cfg.data, cfg.model.num_classes)
    model = build_model(cfg.model)
    model.load_state_dict(state["model"])
    model.to(rt.device, memory_format=rt.memory_format)
    loader = eval_loader(cfg.data, index, rt)
    return evaluate(model, loader, rt, make_reporter(cfg.train, "val", len(loader)))
