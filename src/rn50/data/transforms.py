"""Train and eval presets over an upright RGB image (rn50.data.image.load_rgb reads one).
Both return uint8 CHW tensors: conversion to float and
normalization happen on the training device (see rn50.data.batch), which keeps the
worker-to-GPU copy 4x smaller."""

import math

import torch
from PIL import Image
from torchvision import transforms as T

from rn50.data.augment import AutoAugmentStep


def eval_resize_size(resolution: int, crop_ratio: float) -> int:
    """Short side before the center crop: 224 / 0.875 = 256."""
    return math.floor(resolution / crop_ratio)


class TrainTransform:
    """RandomResizedCrop to `resolution`, optional horizontal flip, then the data.auto_augment
    policy (rn50.data.augment) on the uint8 tensor."""

    def __init__(
        self,
        resolution: int,
        min_scale: float = 0.08,
        hflip: bool = True,
        auto_augment: str = "none",
    ):
        ops = [T.RandomResizedCrop(resolution, scale=(min_scale, 1.0), antialias=True)]
        if hflip:
            ops.append(T.RandomHorizontalFlip())
        ops.append(T.PILToTensor())
        if auto_augment != "none":
            ops.append(AutoAugmentStep(auto_augment))
        self.ops = T.Compose(ops)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.ops(img)


class EvalTransform:
    """Resize the short side to resolution / crop_ratio, then center-crop `resolution`."""

    def __init__(self, resolution: int, crop_ratio: float = 0.875):
        self.ops = T.Compose(
            [
                T.Resize(eval_resize_size(resolution, crop_ratio), antialias=True),
                T.CenterCrop(resolution),
                T.PILToTensor(),
            ]
        )

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.ops(img)
