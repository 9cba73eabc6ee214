"""The optimizer and the one-cycle LR schedule, both built from the `optim` config section."""

import dataclasses

import torch
from torch import nn

from rn50.config import OptimConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """All parameters, with BatchNorm weights and biases (the 1-D ones) in a group without
    weight decay when cfg.no_bn_weight_decay: shrinking them toward 0 only fights the
    normalization and costs accuracy (Goyal et al. 2017, "no bias decay")."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not cfg.no_bn_weight_decay:
        return [{"params": params, "weight_decay": cfg.weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, lr: float | None = None, loss_scaling: bool = False
) -> torch.optim.Optimizer:
    """SGD starting at `lr` (default: the one-cycle start, max_lr / div_factor; the schedule
    sets it again at once). `fused` runs the update as one kernel where torch supports it,
    except with `loss_scaling` (fp16's GradScaler): GradScaler hands a fused SGD the skipping
    of overflowing steps, and its kernel still writes the momentum buffers on such a step
    (uninitialized memory on the first one), so fp16 runs went NaN within steps on a GPU."""
    lr = cfg.max_lr / cfg.div_factor if lr is None else lr
    kwargs = {"lr": lr, "momentum": cfg.momentum, "nesterov": cfg.nesterov}
    if cfg.fused and not loss_scaling:
        try:
            return torch.optim.SGD(param_groups(model, cfg), fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass  # this torch or device has no fused SGD: the default implementation is fine
    return torch.optim.SGD(param_groups(model, cfg), **kwargs)


# How an optimizer computes its step, chosen by build_optimizer for this run; not state.
IMPLEMENTATION_KEYS = ("fused", "foreach")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """optimizer.load_state_dict(state), keeping the implementation build_optimizer chose.

    torch restores every param-group key from the checkpoint, "fused" included: a checkpoint
    of a bf16 run (fused SGD) resumed in fp16 would bring back the fused step that fp16's loss
    scaler must not drive."""
    chosen = [{k: g[k] for k in IMPLEMENTATION_KEYS if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, keys in zip(optimizer.param_groups, chosen, strict=True):
        group.update(keys)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.OneCycleLR:
    """OneCycleLR over `total_steps` optimizer steps (epochs x steps per epoch), stepped per batch.

    LR rises from max_lr/div_factor to max_lr over pct_start of the steps (cosine or linear,
    cfg.anneal_strategy), then falls
    to max_lr/(div_factor*final_div_factor); with three_phase it first falls back to the
    initial LR symmetrically. With cycle_momentum, momentum moves the opposite way between
    max_momentum and base_momentum.
    """
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=cfg.max_lr,
        total_steps=total_steps,
        pct_start=cfg.pct_start,
        anneal_strategy=cfg.anneal_strategy,
        cycle_momentum=cfg.cycle_momentum,
        base_momentum=cfg.base_momentum,
        max_momentum=cfg.max_momentum,
        div_factor=cfg.div_factor,
        final_div_factor=cfg.final_div_factor,
        three_phase=cfg.three_phase,
    )


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


def current_momentum(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0].get("momentum", 0.0)


def scaled_lr(cfg: OptimConfig, global_batch: int, log) -> OptimConfig:
    """optim.scale_lr: max_lr is the peak LR for a global batch of 256 images; scale it
    linearly (Goyal et al. 2017) and log the result. Returns cfg itself when scale_lr is off."""
    if not cfg.scale_lr:
        return cfg
    lr = cfg.max_lr * global_batch / 256
    log.log(f"max_lr {cfg.max_lr:g} x global batch {global_batch}/256 = {lr:.4g} (optim.scale_lr)")
    return dataclasses.replace(cfg, max_lr=lr)
