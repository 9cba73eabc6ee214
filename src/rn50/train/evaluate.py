"""One validation pass (loss, top-1, top-5 summed over ranks), and the evaluation of a
checkpoint or of a torchvision-format state_dict."""

import dataclasses
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn

from rn50 import distributed as dist
from rn50.checkpoint import check_classes, class_mapping, load_weights, read_state_dict
from rn50.config import Config
from rn50.data.auto import DataChoice, choose_data
from rn50.data.batch import to_device
from rn50.metrics import Meter
from rn50.model import build_model
from rn50.progress import Reporter, make_reporter
from rn50.resources import note
from rn50.train.loaders import check_class_count, eval_loader, load_index, warn_about_index
from rn50.train.runtime import Runtime, autocast, make_runtime
from rn50.train.step import note_unreadable


def flip_tta(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Flip test-time augmentation: the mean of the logits of `images` (N x C x H x W) and of
    their horizontal mirrors, in float32 (N x classes).

    FFCV's validation (train_imagenet.py, lr_tta) sums the two; the mean ranks the classes
    the same and keeps the loss comparable to a single pass's.
    """
    return (model(images).float() + model(images.flip(3)).float()) / 2


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    rt: Runtime,
    report: Reporter | None = None,
    warn: Callable[[str], None] | None = None,
    pad_to: int = 0,
    first_call=None,
    flip: bool = False,
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
    shape's name (CompileWatch.first), entered around each forward pass. `flip` scores each
    image by flip_tta (eval.flip).
    """
    model.eval()
    meter = Meter(rt.device)
    for images, targets, bad in report.wrap(loader, meter) if report else loader:
        note_unreadable(bad, meter, warn)
        if not len(targets):
            continue
        images, targets = to_device(images, targets, rt.device, rt.channels_last)
        n = images.shape[0]
        if pad_to > n:
            images = pad_batch(images, pad_to)
        with first_call(f"{images.shape[-1]} px (evaluation)") if first_call else nullcontext():
            with autocast(rt):
                logits = (flip_tta(model, images) if flip else model(images))[:n]
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
    if not state.get("classes"):  # no class ids to compare: the count at least must agree
        check_class_count(index, cfg.model.num_classes)
    if mapping is not None:
        index = dataclasses.replace(index, val=tuple((p, mapping[y]) for p, y in index.val))
    data = _eval_data(cfg, rt)
    model = build_model(cfg.model)
    load_weights(model, state["model"], path, "evaluate it with the config it was trained with")
    result = _evaluate_on(model, index, data, cfg, rt, warn)
    return {**result, "classes": "same" if mapping is None else "mapped"}


def _eval_data(cfg: Config, rt: Runtime) -> DataChoice:
    """data.workers/decode auto chosen for this evaluation (eval does not compile: the eager
    step's rates); said by _evaluate_on, once the weights have loaded."""
    return choose_data(cfg.data, rt.device)


def _evaluate_on(
    model: nn.Module, index, choice: DataChoice, cfg: Config, rt: Runtime,
    warn: Callable[[str], None] | None,
) -> dict:
    """`evaluate` of `model` on index's validation images, with the data settings of
    `choice` (its lines said first) and cfg's eval settings."""
    if dist.is_main():
        for line in choice.lines:
            note(line)
    data = choice.data
    model.to(rt.device, memory_format=rt.memory_format)
    loader = eval_loader(data, index, rt)
    report = make_reporter(cfg.train, "val", len(loader))
    return evaluate(model, loader, rt, report, warn, flip=cfg.eval.flip)


def evaluate_weights(path: str, cfg: Config, warn: Callable[[str], None] | None = None) -> dict:
    """Evaluate a torchvision-format state_dict (e.g. torchvision's resnet50 IMAGENET1K_V1,
    saved by the user; read by rn50.checkpoint.read_state_dict) as cfg.model.arch on cfg's
    validation set, with rn50's eval transform. `warn` names each unreadable file.

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
    data = _eval_data(cfg, rt)
    model = build_model(cfg.model)
    load_weights(model, state_dict, path, f"pass the weights of {cfg.model.arch} with {n} classes")
    return _evaluate_on(model, index, data, cfg, rt, warn)
