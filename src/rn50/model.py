"""Build the network (torchvision names) and its layer summary."""

import re

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

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
    model = torchvision.models.get_model(
        cfg.arch, weights=None, num_classes=cfg.num_classes, **kwargs
    )
    if cfg.blurpool:
        apply_blurpool(model)
    return model


# [1, 2, 1] x [1, 2, 1] / 16: the 3x3 binomial low-pass filter of FFCV's BlurPoolConv2d.
BINOMIAL_3 = (1.0, 2.0, 1.0)


class BlurPoolConv2d(nn.Module):
    """Blur, then the wrapped strided convolution: ffcv-imagenet's BlurPoolConv2d
    (train_imagenet.py), after Zhang 2019, "Making Convolutional Networks Shift-Invariant
    Again".

    The blur is a depthwise 3x3 convolution with the fixed binomial filter
    [1,2,1]^T [1,2,1] / 16 (sums to 1), stride 1 and zero padding 1: N x C x H x W in, the same
    shape out, before `conv` downsamples. The filter is the buffer `blur_filter`
    (C x 1 x 3 x 3) and the convolution the submodule `conv`, as in FFCV, so the state_dict
    keys are FFCV's: <name>.blur_filter and <name>.conv.weight.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        row = torch.tensor(BINOMIAL_3)
        kernel = torch.outer(row, row) / row.sum() ** 2
        self.conv = conv
        self.register_buffer(
            "blur_filter", kernel.expand(conv.in_channels, 1, 3, 3).contiguous()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: N x C x H x W -> the wrapped convolution of x blurred (same size as without the
        blur)."""
        blurred = F.conv2d(x, self.blur_filter, stride=1, padding=1, groups=self.conv.in_channels)
        return self.conv(blurred)


def apply_blurpool(model: nn.Module) -> list[str]:
    """Wrap, in place, every nn.Conv2d with a stride above 1 and at least 16 input channels in
    a BlurPoolConv2d: FFCV's apply_blurpool (ffcv-imagenet train_imagenet.py), which leaves
    out the stem (3 input channels) and the max pool. Returns the wrapped modules' names."""
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Conv2d) and max(child.stride) > 1 and child.in_channels >= 16:
                setattr(module, child_name, BlurPoolConv2d(child))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    return wrapped


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
    return plain_units(str(stats))


def plain_units(table: str) -> str:
    """torchinfo's table with its units as letters: "Total mult-adds (G): 1053.6", where
    torchinfo 1.8 on Python 3.11 writes its unit enum's name ("(Units.GIGABYTES)"): it
    formats the member with f"{units}", which gives the name there, the value elsewhere."""
    from torchinfo.enums import Units

    letters = {u.name: u.value for u in Units}
    return re.sub(r"\(Units\.([A-Z]+)\)",
                  lambda m: f"({letters.get(m.group(1), m.group(1).lower())})", table)


def count_parameters(model: nn.Module) -> int:
    """The number of scalars in `model`'s parameters (buffers not counted)."""
    return sum(p.numel() for p in model.parameters())
