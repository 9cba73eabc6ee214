"""The optimizer and the LR schedule (one-cycle, or cosine after a linear warm-up), both
built from the `optim` config section."""

import dataclasses

import torch
from torch import nn

from rn50.config import OptimConfig
from rn50.errors import CheckpointError

# What torchvision's --norm-weight-decay counts as a normalization layer
# (torchvision.ops._utils.split_normalization_params' default classes).
NORM_LAYERS = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)


def no_decay_names(model: nn.Module, rule: str) -> set[str]:
    """Names of the parameters `rule` exempts from weight decay (optim.no_decay_rule):

    - "1d": every parameter with at most one dimension (BatchNorm weights and biases, the fc
      bias): Goyal et al. 2017's "no bias decay".
    - "bn_name": every parameter whose name contains "bn": ffcv-imagenet's create_optimizer
      (train_imagenet.py). In a torchvision ResNet that is bn1/bn2/bn3 of each block and the
      stem, not the downsample BatchNorms (downsample.1) nor the fc bias.
    - "norm": every parameter of a normalization layer (NORM_LAYERS): torchvision's
      references/classification with --norm-weight-decay 0. All BatchNorms, not the fc bias.
    """
    named = list(model.named_parameters())
    if rule == "1d":
        return {n for n, p in named if p.ndim <= 1}
    if rule == "bn_name":
        return {n for n, _ in named if "bn" in n}
    if rule == "norm":
        return {
            f"{m_name}.{p_name}" if m_name else p_name
            for m_name, m in model.named_modules()
            if isinstance(m, NORM_LAYERS)
            for p_name, _ in m.named_parameters(recurse=False)
        }
    raise ValueError(f"unknown optim.no_decay_rule '{rule}'")


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """All trainable parameters, those cfg.no_decay_rule names (no_decay_names) in a group
    without weight decay when cfg.no_bn_weight_decay: shrinking BatchNorm's scales and shifts
    toward 0 only fights the normalization and costs accuracy (Goyal et al. 2017). Order:
    [decayed, not decayed], each in named_parameters order."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not cfg.no_bn_weight_decay:
        return [{"params": [p for _, p in named], "weight_decay": cfg.weight_decay}]
    exempt = no_decay_names(model, cfg.no_decay_rule)
    return [
        {"params": [p for n, p in named if n not in exempt], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in named if n in exempt], "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, lr: float | None = None, loss_scaling: bool = False
) -> torch.optim.Optimizer:
    """SGD starting at `lr` (default: where the schedule starts from: max_lr / div_factor for
    one-cycle, max_lr for cosine, whose warm-up factor multiplies it; the schedule sets the LR
    again at once). `fused` runs the update as one kernel where torch supports it,
    except with `loss_scaling` (fp16's GradScaler): GradScaler hands a fused SGD the skipping
    of overflowing steps, and its kernel still writes the momentum buffers on such a step
    (uninitialized memory on the first one), so fp16 runs went NaN within steps on a GPU."""
    if lr is None:
        lr = cfg.max_lr if cfg.schedule == "cosine" else cfg.max_lr / cfg.div_factor
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


class _KeepsSchedule:
    """A scheduler whose state_dict names its schedule ("schedule": onecycle or cosine), and
    that refuses to load the state of the other: torch would load it without a word (OneCycleLR
    takes any dict) or fail with a KeyError (SequentialLR), and a resumed run would follow
    another schedule than the one it started."""

    schedule = ""

    def load_state_dict(self, state_dict: dict) -> None:
        stored = state_dict.get("schedule", "onecycle")  # older checkpoints: all one-cycle
        if stored != self.schedule:
            raise CheckpointError(
                f"the checkpoint follows optim.schedule {stored} but this config asks for "
                f"{self.schedule}; set optim.schedule={stored} to resume it, or use a new "
                f"train.checkpoint_dir"
            )
        super().load_state_dict(state_dict)


class OneCycle(_KeepsSchedule, torch.optim.lr_scheduler.OneCycleLR):
    """torch's OneCycleLR, with its schedule's name in its state_dict."""

    def __init__(self, *args, **kwargs):
        self.schedule = "onecycle"  # an instance attribute: state_dict() saves __dict__
        super().__init__(*args, **kwargs)


class WarmupCosine(_KeepsSchedule, torch.optim.lr_scheduler.SequentialLR):
    """torch's SequentialLR over LinearLR (warm-up) then CosineAnnealingLR, with the total
    number of steps as `total_steps` (as OneCycleLR has it: resume compares it) and the
    schedule's name in its state_dict."""

    def __init__(self, optimizer, schedulers, milestones, total_steps: int):
        self.schedule = "cosine"
        self.total_steps = total_steps
        super().__init__(optimizer, schedulers, milestones)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: OptimConfig,
    total_steps: int,
    steps_per_epoch: int = 0,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The LR schedule over `total_steps` optimizer steps (epochs x steps per epoch), stepped
    per optimizer step; it has `total_steps` and `last_epoch` (the steps taken).

    cfg.schedule "cosine" (needs `steps_per_epoch`): LinearLR from cfg.warmup_decay x max_lr to
    max_lr over W = warmup_epochs x steps_per_epoch steps, then CosineAnnealingLR from max_lr
    to 0 over the remaining total_steps - W, chained by SequentialLR (torchvision's
    references/classification recipe, there stepped once per epoch). At step s < W the LR is
    max_lr (d + (1 - d) s / W), after it max_lr (1 + cos(pi (s - W) / (total_steps - W))) / 2.
    The optimizer's LR must be max_lr when this is built (build_optimizer's default).

    cfg.schedule "onecycle": OneCycleLR. LR rises from max_lr/div_factor to max_lr over
    pct_start of the steps (cosine or linear, cfg.anneal_strategy), then falls to
    max_lr/(div_factor*final_div_factor); with three_phase it first falls back to the
    initial LR symmetrically. With cycle_momentum, momentum moves the opposite way between
    max_momentum and base_momentum.
    """
    if cfg.schedule == "cosine":
        if steps_per_epoch < 1:
            raise ValueError("optim.schedule cosine needs steps_per_epoch")
        warmup = cfg.warmup_epochs * steps_per_epoch
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=total_steps - warmup, eta_min=0.0
        )
        if not warmup:
            return WarmupCosine(optimizer, [cosine], [], total_steps)
        linear = torch.optim.lr_scheduler.LinearLR(
            optimizer, start_factor=cfg.warmup_decay, end_factor=1.0, total_iters=warmup
        )
        return WarmupCosine(optimizer, [linear, cosine], [warmup], total_steps)
    return OneCycle(
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
    """The LR the optimizer's next step uses (its first parameter group's)."""
    return optimizer.param_groups[0]["lr"]


def current_momentum(optimizer: torch.optim.Optimizer) -> float:
    """The momentum of the next step (0.0 for an optimizer without one)."""
    return optimizer.param_groups[0].get("momentum", 0.0)


def scaled_lr(cfg: OptimConfig, global_batch: int, log) -> OptimConfig:
    """optim.scale_lr: max_lr is the peak LR for a global batch of 256 images; scale it
    linearly (Goyal et al. 2017) and log the result. Returns cfg itself when scale_lr is off."""
    if not cfg.scale_lr:
        return cfg
    lr = cfg.max_lr * global_batch / 256
    log.log(f"max_lr {cfg.max_lr:g} x global batch {global_batch}/256 = {lr:.4g} (optim.scale_lr)")
    return dataclasses.replace(cfg, max_lr=lr)
