"""Train and eval presets. Both return uint8 CHW tensors: conversion to float and
normalization happen on the training device (see rn50.data.batch), which keeps the
worker-to-GPU copy 4x smaller."""

import math

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T


def to_rgb(img: Image.Image) -> Image.Image:
    """`img` as 8-bit RGB; unlike Image.convert("RGB"), 16-bit values are scaled, not clipped.

    (convert() clips I;16 values above 255, so most of a 16-bit photo turns white.)
    """
    if img.mode.startswith("I;16") or img.mode == "I":
        pixels = np.asarray(img, dtype=np.float64) / 257.0  # 65535 -> 255
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str) -> Image.Image:
    """Decode an image file to RGB (CMYK, grayscale, 16-bit, palette and PNG files included)."""
    with open(path, "rb") as f:
        return to_rgb(Image.open(f))


def eval_resize_size(resolution: int, crop_ratio: float) -> int:
    """Short side before the center crop: 224 / 0.875 = 256."""
    return math.floor(resolution / crop_ratio)


class TrainTransform:
    """RandomResizedCrop to `resolution`, optional horizontal flip."""

    def __init__(self, resolution: int, min_scale: float = 0.08, hflip: bool = True):
        ops = [T.RandomResizedCrop(resolution, scale=(min_scale, 1.0), antialias=True)]
        if hflip:
            ops.append(T.RandomHorizontalFlip())
        ops.append(T.PILToTensor())
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
