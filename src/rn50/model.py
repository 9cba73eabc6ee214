"""Build the network (torchvision names) and its layer summary."""

import torch
import torchvision
from torch import nn

from rn50.config import ModelConfig
from rn50.errors import ConfigError


def build_model(cfg: ModelConfig) -> nn.Module:
    """A randomly initialized torchvision classifier, e.g. resnet50(weights=None, num_classes=N)."""
    names = torchvision.models.list_models(module=torchvision.models)
    if cfg.arch not in names:
        raise ConfigError(
            f"model.arch '{cfg.arch}' is not a torchvision classification model; "
            f"use one of resnet50, resnet18, resnet101, ..."
        )
    kwargs = {"zero_init_residual": cfg.zero_init_residual} if cfg.arch.startswith(
        ("resnet", "resnext", "wide_resnet")
    ) else {}
    return torchvision.models.get_model(
        cfg.arch, weights=None, num_classes=cfg.num_classes, **kwargs
    )


def model_summary(cfg: ModelConfig, batch_size: int, resolution: int) -> str:
    """torchinfo's table for an input of batch_size x 3 x resolution x resolution.

    Built on the meta device: shapes, parameter counts and mult-adds without allocating or
    computing anything, so it costs nothing even for a batch of 256 at 224 px on a CPU.
    """
    import torchinfo

    with torch.device("meta"):
        model = build_model(cfg)
    stats = torchinfo.summary(
        model,
        input_size=(batch_size, 3, resolution, resolution),
        device="meta",
        verbose=0,
        depth=3,
        col_names=("input_size", "output_size", "num_params", "kernel_size", "mult_adds"),
        row_settings=("var_names",),
    )
    return str(stats)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
