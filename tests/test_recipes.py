"""The configs/ recipes load, and the fast ones follow the schedules of the recipe they cite."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rn50.config import load_config
from rn50.data.schedule import eval_resolution, resolution_at
from rn50.optim import build_optimizer, build_scheduler, current_lr, scaled_lr

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
# FFCV's rn50_<E>_epochs.yaml: start_ramp and end_ramp (epochs counted from 0).
FFCV_RAMPS = {16: (11, 13), 32: (23, 27), 40: (29, 34)}
# Where each recipe trains at 160 and at 192 px (epochs from 1), worked out by hand from
# FFCV's get_resolution: the interpolated side rounds to a multiple of 32 (half to even).
# 16 epochs: epoch 12 (from 0) is 176 -> 192. 32: epoch 24 is 168 -> 160, 25 is 176 -> 192.
# 40: epoch 31 is 172.8 -> 160, 32 is 179.2 -> 192.
STAGES = {16: (range(1, 13), range(13, 17)), 32: (range(1, 26), range(26, 33)),
          40: (range(1, 33), range(33, 41))}
# Every FFCV knob that is the same in rn50_{16,32,40}_epochs.yaml and train_imagenet.py, as
# rn50 keys (README's Recipes tables); the epochs and ramps are checked above and below.
FFCV_KNOBS = {
    ("data", "batch_size"): 512,  # training.batch_size, per GPU (x 8: dist.world_size)
    ("data", "workers"): 12,  # data.num_workers
    ("data", "resolution"): 192,  # resolution.max_res
    ("data", "min_resolution"): 160,  # resolution.min_res
    ("data", "eval_resolution"): 256,  # validation.resolution
    ("data", "crop_ratio"): 224 / 256,  # DEFAULT_CROP_RATIO
    ("data", "min_scale"): 0.08,  # RandomResizedCropRGBImageDecoder's default scale
    ("data", "hflip"): True,  # RandomHorizontalFlip
    ("model", "arch"): "resnet50",
    ("model", "zero_init_residual"): False,  # getattr(models, arch)(pretrained=0)
    ("model", "blurpool"): True,  # training.use_blurpool: 1
    ("optim", "momentum"): 0.9,
    ("optim", "cycle_momentum"): False,
    ("optim", "nesterov"): False,
    ("optim", "weight_decay"): 1e-4,
    ("optim", "no_bn_weight_decay"): True,
    ("optim", "no_decay_rule"): "bn_name",
    ("optim", "schedule"): "onecycle",
    ("optim", "anneal_strategy"): "linear",
    ("optim", "three_phase"): False,
    ("train", "label_smoothing"): 0.1,
    ("eval", "flip"): True,  # validation.lr_tta
}


def test_every_config_loads():
    assert len(CONFIGS) >= 5
    for path in CONFIGS:
        load_config(path)  # validation included: a ConfigError fails the test


def ffcv_resolution(epoch0: int, start: int, end: int, lo=160, hi=192) -> int:
    """FFCV's get_resolution, written out: epochs from 0, multiples of 32 (numpy rounding)."""
    if epoch0 <= start:
        return lo
    if epoch0 >= end:
        return hi
    return int(np.round(np.interp(epoch0, [start, end], [lo, hi]) / 32)) * 32


@pytest.mark.parametrize("epochs", sorted(FFCV_RAMPS))
def test_fast_recipes_resize_like_ffcv(epochs):
    cfg = load_config(f"configs/rn50-{epochs}-epochs.yaml")
    ours = [resolution_at(e, cfg.data) for e in range(1, epochs + 1)]
    assert ours == [ffcv_resolution(e, *FFCV_RAMPS[epochs]) for e in range(epochs)]
    assert eval_resolution(cfg.data) == 256 and cfg.train.epochs == epochs


@pytest.mark.parametrize("epochs", sorted(FFCV_RAMPS))
def test_fast_recipes_train_at_160_then_192(epochs):
    cfg = load_config(f"configs/rn50-{epochs}-epochs.yaml")
    low, high = STAGES[epochs]
    assert [resolution_at(e, cfg.data) for e in low] == [160] * len(low)
    assert [resolution_at(e, cfg.data) for e in high] == [192] * len(high)
    assert len(low) + len(high) == epochs
    # The YAML's comments say so too.
    text = Path(f"configs/rn50-{epochs}-epochs.yaml").read_text()
    assert f"epochs {low[0]}-{low[-1]} at 160 px, {high[0]}-{high[-1]} at 192 px" in text


@pytest.mark.parametrize("epochs", sorted(FFCV_RAMPS))
def test_fast_recipes_set_every_ffcv_knob(epochs):
    cfg = load_config(f"configs/rn50-{epochs}-epochs.yaml")
    for (section, key), value in FFCV_KNOBS.items():
        assert getattr(getattr(cfg, section), key) == value, f"{section}.{key}"
    assert cfg.optim.pct_start * epochs == pytest.approx(2)  # lr.lr_peak_epoch 2
    assert cfg.optim.scale_lr and cfg.optim.max_lr * 4096 / 256 == pytest.approx(1.7)


@pytest.mark.parametrize("epochs", sorted(FFCV_RAMPS))
def test_fast_recipes_lr_is_ffcvs_triangle(epochs):
    """LR at every step vs FFCV's get_cyclic_lr (per epoch, interpolated over its steps):
    1e-4 x peak at 0, the peak at epoch 2, 0 at the end. Peak 1.7 at FFCV's global batch of
    4096 (8 GPUs x 512), which the recipe's 0.10625 per 256 images scales to."""
    cfg = load_config(f"configs/rn50-{epochs}-epochs.yaml")
    steps_per_epoch = 50
    optim = scaled_lr(cfg.optim, global_batch=8 * 512, log=SimpleNamespace(log=print))
    peak = 1.7
    assert optim.max_lr == pytest.approx(peak)
    opt = build_optimizer(torch.nn.Linear(2, 2), optim)
    sched = build_scheduler(opt, optim, epochs * steps_per_epoch)
    for step in range(epochs * steps_per_epoch):
        epoch = step / steps_per_epoch
        ffcv = np.interp(epoch, [0, 2, epochs], [1e-4 * peak, peak, 0])
        # One step of difference in where the phases turn: at most a step's change of LR.
        assert abs(current_lr(opt) - ffcv) <= peak / (2 * steps_per_epoch), step
        assert opt.param_groups[0]["momentum"] == 0.9
        opt.step()
        sched.step()


def test_torchvision_v2_recipe():
    """configs/tv-resnet50-v2.yaml holds torchvision's published values."""
    from rn50.data.transforms import eval_resize_size

    path = Path(__file__).parent.parent / "configs" / "tv-resnet50-v2.yaml"
    cfg = load_config(path)
    d, m, o, t = cfg.data, cfg.model, cfg.optim, cfg.train
    assert (d.batch_size, d.resolution, d.eval_resolution) == (128, 176, 224)
    assert eval_resize_size(d.eval_resolution, d.crop_ratio) == 232  # --val-resize-size
    assert (m.arch, m.zero_init_residual, m.blurpool) == ("resnet50", False, False)
    assert o.scale_lr and o.max_lr * 8 * 128 / 256 == pytest.approx(0.5)  # --lr at 1024
    assert (o.schedule, o.warmup_epochs, o.warmup_decay) == ("cosine", 5, 0.01)
    assert (o.momentum, o.weight_decay, o.no_decay_rule) == (0.9, 2e-5, "norm")
    assert (t.epochs, t.label_smoothing, t.ema, t.ema_bn_batches) == (600, 0.1, True, 0)
    # torchvision's EMA: decay 1 - (1 - 0.99998) x 1024 x 32 / 600 per update every 32 steps.
    assert t.ema_decay**32 == pytest.approx(1 - 2e-5 * 1024 * 32 / 600, abs=1e-9)
    # --auto-augment ta_wide --random-erase 0.1 --mixup-alpha 0.2 --cutmix-alpha 1.0
    # --ra-sampler --ra-reps 4
    assert (d.auto_augment, d.random_erasing, d.mixup_alpha, d.cutmix_alpha, d.ra_reps) == (
        "ta_wide", 0.1, 0.2, 1.0, 4)
    assert (d.min_scale, d.hflip) == (0.08, True)  # RandomResizedCrop, hflip_prob 0.5
