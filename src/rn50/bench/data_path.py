"""The data path alone: img/s of the loader (each decode mode and worker count) on ImageNet-like
JPEGs or a dataset's train files, against torchvision's ImageFolder with the classic ImageNet
transforms as the baseline."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from rn50.bench.plan import BenchPlan
from rn50.bench.timing import median, sync
from rn50.config import DataConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def bench_files(plan: BenchPlan, tmp: Path) -> tuple[list[tuple[str, int]], str]:
    """(samples, where they come from): the first plan.images train files of plan.data_dir,
    or plan.images ImageNet-like JPEGs written under `tmp`. Samples are (path, label).
    Raises DataError when plan.data_dir holds no dataset."""
    if plan.data_dir:
        from rn50.data.index_cache import load_dataset_index

        index = load_dataset_index(plan.data_dir)
        return list(index.train[: plan.images]), f"{plan.data_dir} (first {plan.images} files)"
    from rn50.data.layout import find_dataset
    from rn50.data.photos import write_imagenet_like

    root = write_imagenet_like(tmp / "photos", plan.images)
    return list(find_dataset(root).train), (
        f"{plan.images} ImageNet-like JPEGs (500x375, quality 90, real photos)"
    )


def _data_batch(plan: BenchPlan, samples) -> int:
    return max(1, min(plan.data_batch_size, len(samples) // 4))


def _torchvision_loader(samples, plan: BenchPlan, workers: int):
    """The baseline: torchvision's ImageFolder and the classic ImageNet training transforms."""
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision import transforms as T

    class Listed(datasets.ImageFolder):
        # ImageFolder as it is, but over these files: its own scan of a real dataset's
        # train folder would take minutes and read files the benchmark does not time.
        def find_classes(self, directory):
            labels = sorted({label for _, label in samples})
            return [str(k) for k in labels], {str(k): k for k in labels}

        def make_dataset(self, directory, class_to_idx, *args, **kwargs):
            return list(samples)

    transform = T.Compose(
        [
            T.RandomResizedCrop(plan.resolution, scale=(plan.min_scale, 1.0)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    dataset = Listed(str(Path(samples[0][0]).parent), transform=transform)
    return DataLoader(
        dataset,
        batch_size=_data_batch(plan, samples),
        shuffle=True,
        num_workers=workers,
        drop_last=True,
    )


def _rn50_loader(samples, plan: BenchPlan, mode: str, workers: int):
    from rn50.data.pipeline import make_loader

    batch_size = _data_batch(plan, samples)
    cfg = DataConfig(
        resolution=plan.resolution,
        workers=workers,
        decode=mode,
        decode_ahead=plan.decode_ahead,
        gpu_decoder=plan.gpu_decoder,
        min_scale=plan.min_scale,
        batch_size=batch_size,
    )
    loader = make_loader(
        cfg, samples, train=True, batch_size=batch_size, device=plan.device, seed=0
    )
    loader.sampler.set_epoch(1)
    return loader


def time_loader(loader, device: torch.device) -> tuple[float, int]:
    """(img/s, images timed) over one pass, from the first batch's arrival (worker start-up
    and the first batch not counted) to the last's; img/s is NaN when the loader gives fewer
    than two batches."""
    count, t0 = 0, None
    for batch in loader:
        images = batch[0]
        if t0 is None:
            sync(device)
            t0 = time.perf_counter()
            continue
        count += images.shape[0]
    sync(device)
    elapsed = time.perf_counter() - t0 if t0 is not None else 0.0
    return (count / elapsed if elapsed > 0 else float("nan")), count


def bench_data(plan: BenchPlan, samples) -> list[dict]:
    """img/s of each (mode, workers), the modes taking turns within each repeat: one dict per
    combination with "mode", "workers", "img_s" (the median of plan.repeats passes),
    "img_s_per_worker" and "runs" (img/s of each pass)."""
    combos = [(m, w) for w in plan.workers for m in plan.modes]
    runs: dict[tuple[str, int], list[float]] = {c: [] for c in combos}
    for _ in range(plan.repeats):
        for mode, workers in combos:
            if mode == "torchvision":
                loader = _torchvision_loader(samples, plan, workers)
            else:
                loader = _rn50_loader(samples, plan, mode, workers)
            rate, _ = time_loader(loader, plan.device)
            runs[(mode, workers)].append(rate)
            del loader
    out = []
    for mode, workers in combos:
        rate = median(runs[(mode, workers)])
        out.append(
            {
                "mode": mode,
                "workers": workers,
                "img_s": rate,
                "img_s_per_worker": rate / max(workers, 1),
                "runs": runs[(mode, workers)],
            }
        )
    return out


def ratios(data: list[dict]) -> list[dict]:
    """Each rn50 mode's img/s over the torchvision baseline's at the same worker count:
    {"mode", "workers", "vs_torchvision"} per `bench_data` record that has a baseline."""
    base = {r["workers"]: r["img_s"] for r in data if r["mode"] == "torchvision"}
    return [
        {
            "mode": r["mode"],
            "workers": r["workers"],
            "vs_torchvision": r["img_s"] / base[r["workers"]],
        }
        for r in data
        if r["mode"] != "torchvision" and r["workers"] in base and base[r["workers"]] > 0
    ]
