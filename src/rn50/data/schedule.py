"""Progressive resizing: train at low resolution early and at full resolution late.

Early epochs learn coarse features that do not need 224 px; at 160 px a step costs about
half as much. The resolution grows linearly from data.min_resolution (at
data.ramp_start_epoch) to data.resolution (at data.ramp_end_epoch), in multiples of 32 so
the network's feature maps keep whole sizes (the FFCV ResNet-50 recipes do the same).
"""

from rn50.config import DataConfig

STEP = 32  # ResNet-50 downsamples by 32


def resolution_at(epoch: int, cfg: DataConfig) -> int:
    """Training resolution of `epoch` (1-based)."""
    if not cfg.min_resolution:
        return cfg.resolution
    lo, hi = cfg.min_resolution, cfg.resolution
    start, end = cfg.ramp_start_epoch, cfg.ramp_end_epoch
    if epoch <= start:
        return lo
    if epoch >= end:
        return hi
    res = lo + (hi - lo) * (epoch - start) / (end - start)
    return int(round(res / STEP)) * STEP


def eval_resolution(cfg: DataConfig) -> int:
    """Validation resolution: data.eval_resolution, or the final training resolution."""
    return cfg.eval_resolution or cfg.resolution
