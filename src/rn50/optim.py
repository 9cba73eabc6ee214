"""The optimizer and the one-cycle LR schedule, both built from the `optim` config section."""

import torch
from torch import nn

from rn50.config import OptimConfig


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, lr: float | None = None
) -> torch.optim.Optimizer:
    """SGD over all parameters, starting at `lr` (default: the one-cycle start, max_lr /
    div_factor; the schedule sets it again at once)."""
    return torch.optim.SGD(
        model.parameters(),
        lr=cfg.max_lr / cfg.div_factor if lr is None else lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.OneCycleLR:
    """OneCycleLR over `total_steps` optimizer steps (epochs x steps per epoch), stepped per batch.

    LR rises from max_lr/div_factor to max_lr over pct_start of the steps (cosine), then falls
    to max_lr/(div_factor*final_div_factor); with three_phase it first falls back to the
    initial LR symmetrically. With cycle_momentum, momentum moves the opposite way between
    max_momentum and base_momentum.
    """
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=cfg.max_lr,
        total_steps=total_steps,
        pct_start=cfg.pct_start,
        anneal_strategy="cos",
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
