"""One validation pass (loss, top-1, top-5 summed over ranks), and a checkpoint's evaluation."""

import torch
from torch import nn

from rn50 import distributed as dist
from rn50.checkpoint import check_classes
from rn50.config import Config
from rn50.data.auto import resolve_data
from rn50.data.batch import to_device
from rn50.metrics import Meter
from rn50.model import build_model
from rn50.progress import Reporter, make_reporter
from rn50.resources import note
from rn50.train.loaders import eval_loader, load_index
from rn50.train.runtime import Runtime, autocast, make_runtime


@torch.no_grad()
def evaluate(model: nn.Module, loader, rt: Runtime, report: Reporter | None = None) -> dict:
    """Loss, top-1 and top-5 (%) over this rank's share of the validation set, summed over
    ranks as counts; also "count" (images scored) and "skipped" (unreadable files).

    The loss is plain cross-entropy (no label smoothing), comparable across recipes.
    `report` shows the pass's progress.
    """
    model.eval()
    meter = Meter(rt.device)
    for images, targets, bad in report.wrap(loader, meter) if report else loader:
        meter.skip(bad)
        if not len(targets):
            continue
        images, targets = to_device(images, targets, rt.device, rt.channels_last)
        with autocast(rt):
            logits = model(images)
        # Per-image losses: the sums do not depend on how the images were split into batches
        # or ranks, so a 2-rank evaluation equals a 1-process one exactly.
        losses = nn.functional.cross_entropy(logits.float(), targets, reduction="none")
        meter.update(losses, logits, targets)
        if report:
            report.step(targets.shape[0])
    return meter.all_reduce().summary()


def evaluate_checkpoint(state: dict, path: str, cfg: Config) -> dict:
    """Evaluate a loaded checkpoint's weights (read from `path`) on cfg's validation set.

    Raises CheckpointError when its classes do not fit cfg's, and what load_index raises.
    """
    rt = make_runtime(cfg)
    check_classes(state, cfg.model.num_classes, path)
    index = load_index(cfg.data, cfg.model.num_classes)
    say = note if dist.is_main() else None  # eval does not compile: the eager step's rates
    data = resolve_data(cfg.data, rt.device, say=say)
    model = build_model(cfg.model)
    model.load_state_dict(state["model"])
    model.to(rt.device, memory_format=rt.memory_format)
    loader = eval_loader(data, index, rt)
    return evaluate(model, loader, rt, make_reporter(cfg.train, "val", len(loader)))
