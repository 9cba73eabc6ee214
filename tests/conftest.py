"""Shared fixtures: tiny real-JPEG datasets and small configs that train in seconds on a CPU."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rn50.config import Config, load_config


def write_digit_tree(
    root: Path, classes: int = 3, train_per_class: int = 8, val_per_class: int = 4, size: int = 32
) -> Path:
    """An ImageFolder tree (train/<class>/, val/<class>/) of real JPEGs: sklearn digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts: dict[int, int] = {}
    for img, target in zip(digits.images, digits.target, strict=True):
        if target >= classes:
            continue
        n = counts.get(int(target), 0)
        if n >= train_per_class + val_per_class:
            continue
        counts[int(target)] = n + 1
        split = "train" if n < train_per_class else "val"
        folder = root / split / f"class_{target}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (255 - img * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).resize((size, size), Image.BICUBIC).convert("RGB").save(
            folder / f"img_{n:03d}.jpg", quality=95
        )
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """3 classes x (16 train + 4 val) digit JPEGs, 32 px: 6 steps of 8 images per epoch."""
    return write_digit_tree(tmp_path_factory.mktemp("tiny"), train_per_class=16)


@pytest.fixture(scope="session")
def demo48(tmp_path_factory) -> tuple[Path, Path]:
    """(root, skip list): the embedded demo dataset (`rn50 data demo`: Kaggle layout, 10 digit
    classes) at 32 px, and a skip list that leaves 48 training images (5 of classes 0-7, 4 of
    8-9) and the first 12 validation images, for runs that must take seconds."""
    from rn50.data.demo import write_demo_dataset

    tmp = tmp_path_factory.mktemp("demo48")
    index = write_demo_dataset(tmp / "demo", size=32)
    keep, per_class = set(), {}
    for path, label in index.train:
        if per_class.get(label, 0) < (5 if label < 8 else 4):
            per_class[label] = per_class.get(label, 0) + 1
            keep.add(path)
    keep.update(path for path, _ in index.val[:12])
    skip = tmp / "skip.txt"
    everything = [path for path, _ in index.train + index.val]
    skip.write_text("".join(f"{p}\n" for p in everything if p not in keep))
    return tmp / "demo", skip


def tiny_config(data_dir: Path, run_dir: Path, **sections) -> Config:
    """A config that trains ResNet-50 on `tiny_data` at 32 px in a few seconds."""
    overrides = [
        f"data.data_dir={data_dir}",
        "data.batch_size=8",
        "data.workers=0",
        "data.resolution=32",
        "data.min_scale=0.5",
        "model.num_classes=3",
        "optim.max_lr=0.05",
        "train.epochs=2",
        f"train.checkpoint_dir={run_dir}",
        "train.log_every=0",
    ]
    for section, values in sections.items():
        overrides += [f"{section}.{k}={v}" for k, v in values.items()]
    return load_config(None, overrides)


def demo48_config(demo48: tuple[Path, Path], run_dir: Path, **sections) -> Config:
    """tiny_config on the demo48 fixture (its root, with its skip list; 10 classes)."""
    root, skip_list = demo48
    sections["data"] = {"skip_list": skip_list, **sections.get("data", {})}
    sections["model"] = {"num_classes": 10, **sections.get("model", {})}
    return tiny_config(root, run_dir, **sections)


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory, tiny_data):
    """An uninterrupted 2-epoch ResNet-50 run on tiny_data, in this process, 2 data workers."""
    from rn50.train.loop import fit

    run_dir = tmp_path_factory.mktemp("straight") / "run"
    fit(tiny_config(tiny_data, run_dir, data={"workers": 2}))
    return run_dir


TIMING_KEYS = {"train_time_s", "val_time_s", "epoch_time_s", "images_per_s"}


def without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def assert_same_weights(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def assert_same_run(run_dir, reference) -> None:
    """Same per-epoch metrics (times aside), per-step LR/momentum series (so curves.png is
    whole after any kill and resume) and bit-identical final weights as `reference`."""
    from rn50.checkpoint import latest_checkpoint, load_checkpoint
    from rn50.runlog import read_metrics

    a = read_metrics(reference / "metrics.jsonl")
    b = read_metrics(run_dir / "metrics.jsonl")
    assert [without_timing(r) for r in b] == [without_timing(r) for r in a]
    assert read_metrics(run_dir / "steps.jsonl") == read_metrics(reference / "steps.jsonl")
    last = latest_checkpoint(reference).name
    assert_same_weights(load_checkpoint(run_dir / last)["model"],
                        load_checkpoint(reference / last)["model"])


@pytest.fixture(autouse=True, scope="session")
def _index_cache_in_tmp(tmp_path_factory):
    """Dataset index caches (rn50.data.index_cache) go to a temporary folder, not ~/.cache;
    set in the environment, so rn50 processes the tests start use it too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RN50_CACHE_DIR", str(tmp_path_factory.mktemp("rn50-cache")))
        yield


class Killed(Exception):
    """Raised from a patched step to stop a run in-process, as a kill would."""


def kill_and_resume_like_a_straight_run(monkeypatch, demo48, tmp_path, sections) -> Path:
    """Train `sections` on demo48 straight through; train it again, killed after optimizer
    step 9 (epoch 2, step 3: last.pth holds step 2), then resumed; assert both runs' metrics,
    LR series and final weights are the same. Returns the resumed run's dir."""
    from rn50.checkpoint import load_checkpoint
    from rn50.train.loop import Trainer, fit

    fit(demo48_config(demo48, tmp_path / "straight", **sections))
    run = tmp_path / "run"
    original = Trainer.after_step

    def dies_at_step_9(self, report, images):
        original(self, report, images)
        if self.scheduler.last_epoch == 9:
            raise Killed

    monkeypatch.setattr(Trainer, "after_step", dies_at_step_9)
    with pytest.raises(Killed):
        fit(demo48_config(demo48, run, **sections))
    monkeypatch.setattr(Trainer, "after_step", original)
    assert load_checkpoint(run / "last.pth")["step_in_epoch"] == 2
    fit(demo48_config(demo48, run, **sections))
    assert_same_run(run, tmp_path / "straight")
    return run
