"""A uint8 batch from the loader becomes a normalized float batch on the device."""

import functools

import torch

# ImageNet channel statistics, in the 0..255 scale of uint8 pixels.
MEAN_255 = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD_255 = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def normalize(images: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 (N, 3, H, W), zero mean and unit variance per channel."""
    mean, std = channel_statistics(images.device)
    x = (images.float() - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@functools.lru_cache(maxsize=8)
def channel_statistics(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of MEAN_255/STD_255 as (1, 3, 1, 1) float tensors on `device`."""
    # Made once per device: building them from Python numbers each batch is a blocking copy
    # to a GPU, which waits for every kernel queued before it.
    mean = torch.tensor(MEAN_255, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD_255, device=device).view(1, 3, 1, 1)
    return mean, std


def to_device(
    images: torch.Tensor, targets: torch.Tensor, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy a loader batch to `device` (asynchronously from pinned memory) and normalize it."""
    images = images.to(device, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    return normalize(images, channels_last), targets
