"""One validation pass (loss, top-1, top-5 summed over ranks), and the evaluation of a
checkpoint or of a torchvision-format state_dict."""

import torch
from torch import nn

from rn50.checkpoint import check_classes, load_weights, read_state_dict
from rn50.config import Config
from rn50.data.batch import to_device
from rn50.metrics import Meter
from rn50.model import build_model
from rn50.progress import Reporter, make_reporter
from rn50.train.loaders import eval_loader, load_index
from rn50.train.runtime import Runtime, autocast, make_runtime


def flip_tta(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Flip test-time augmentation: the mean of the logits of `images` (N x C x H x W) and of
    their horizontal mirrors, in float32 (N x classes).

    FFCV's validation (train_imagenet.py, lr_tta) sums the two; the mean ranks the classes
    the same and keeps the loss comparable to a single pass's.
    """
    return (model(images).float() + model(images.flip(3)).float()) / 2


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, rt: Runtime, report: Reporter | None = None, flip: bool = False
) -> dict:
    """Loss, top-1 and top-5 (%) over this rank's share of the validation set, summed over
    ranks as counts; also "count" (images scored) and "skipped" (unreadable files).

    The loss is plain cross-entropy (no label smoothing), comparable across recipes.
    `report` shows the pass's progress; `flip` scores each image by flip_tta (eval.flip).
    """
    model.eval()
    meter = Meter(rt.device)
    for images, targets, bad in report.wrap(loader, meter) if report else loader:
        meter.skip(bad)
        if not len(targets):
            continue
        images, targets = to_device(images, targets, rt.device, rt.channels_last)
        with autocast(rt):
            logits = flip_tta(model, images) if flip else model(images)
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
    model = build_model(cfg.model)
    model.load_state_dict(state["model"])
    return _evaluate_on(model, index, cfg, rt)


def _evaluate_on(model: nn.Module, index, cfg: Config, rt: Runtime) -> dict:
    """`evaluate` of `model` on index's validation images, as cfg's data and eval say."""
    model.to(rt.device, memory_format=rt.memory_format)
    loader = eval_loader(cfg.data, index, rt)
    return evaluate(
        model, loader, rt, make_reporter(cfg.train, "val", len(loader)), cfg.eval.flip
    )


def evaluate_weights(path: str, cfg: Config) -> dict:
    """Evaluate a torchvision-format state_dict (e.g. torchvision's resnet50 IMAGENET1K_V1,
    saved by the user; read by rn50.checkpoint.read_state_dict) as cfg.model.arch on cfg's
    validation set, with rn50's eval transform.

    With model.num_classes 1000 the dataset's class ids must be ImageNet-1k's 1000 wnids in
    their order (rn50.imagenet), or the outputs would not mean its labels; any other count
    must equal the dataset's (the class order is then the user's to vouch for). Raises
    CheckpointError (unreadable file, weights that do not fit), DataError (not ImageNet's
    classes) and what load_index raises, each one line.
    """
    from rn50.imagenet import NUM_CLASSES, check_imagenet_classes

    state_dict = read_state_dict(path)
    rt = make_runtime(cfg)
    n = cfg.model.num_classes
    index = load_index(cfg.data, None if n == NUM_CLASSES else n)
    if n == NUM_CLASSES:
        check_imagenet_classes(index.classes, index.root)
    model = build_model(cfg.model)
    load_weights(model, state_dict, path, f"{cfg.model.arch} with {n} classes")
    return _evaluate_on(model, index, cfg, rt)
