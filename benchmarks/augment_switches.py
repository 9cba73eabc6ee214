"""What each augmentation switch adds to a training step, on the CPU (or --device).

    .venv/bin/python benchmarks/augment_switches.py [--resolution 176] [--batch 128]
        [--files 16] [--repeats 5] [--device cpu] [--json]

Three kinds of cost, each measured the way it is paid:

- `data.auto_augment` runs in a loader worker, after the crop (decode cpu): the time of the
  cpu mode's train transform on ImageNet-like JPEGs (rn50.data.photos, 500x375), with and
  without the policy, per image, and times --batch: the worker-seconds of one step (divide
  by data.workers for the wall time when the workers keep up).
- `data.random_erasing`, `data.mixup_alpha`, `data.cutmix_alpha` run in the training
  process on the normalized batch (rn50.data.augment.BatchAugment): per step of --batch
  images at --resolution on --device.
- `data.ra_reps` changes which image each position holds (rn50.data.loader.ShardedSampler):
  the sampler's time per step, over an epoch of ImageNet's 1,281,167 images.

Each setting is timed --repeats times, the settings taking turns within a repeat (a change
of load on the machine hits them alike); the median is printed beside every run. Times are
this process's CPU time (time.process_time) on one thread (torch.set_num_threads(1), as in a
loader worker) unless --clock wall: on a machine shared with other jobs the wall clock also
counts the time spent waiting for a core.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rn50.bench.timing import sync
from rn50.data.augment import BatchAugment
from rn50.data.batch import normalize
from rn50.data.decode import FastTrainTransform, read_bytes
from rn50.data.loader import ShardedSampler, sample_seed
from rn50.data.photos import write_imagenet_like

IMAGENET_TRAIN = 1_281_167
clock = time.process_time
POLICIES = ("none", "ta_wide", "randaugment", "autoaugment")
# name -> (random_erasing, mixup_alpha, cutmix_alpha); None: normalization alone.
BATCH_SETTINGS = {
    "normalize only (all off)": None,
    "data.random_erasing: 0.1": (0.1, 0.0, 0.0),
    "data.random_erasing: 0.5": (0.5, 0.0, 0.0),
    "data.mixup_alpha: 0.2": (0.0, 0.2, 0.0),
    "data.cutmix_alpha: 1.0": (0.0, 0.0, 1.0),
    "torchvision's recipe: 0.1, 0.2, 1.0": (0.1, 0.2, 1.0),
}


def time_worker(policy: str, files: list, resolution: int) -> float:
    """Seconds per image of the cpu mode's train transform with `policy`."""
    transform = FastTrainTransform(resolution, auto_augment=policy)
    t0 = clock()
    for i, data in enumerate(files):
        torch.default_generator.manual_seed(sample_seed(0, 1, i))  # as ImageDataset does
        transform(data)
    return (clock() - t0) / len(files)


def time_batch(setting, images: torch.Tensor, labels: torch.Tensor, step: int) -> float:
    """Seconds of one step's normalization plus `setting`'s BatchAugment."""
    augment = None if setting is None else BatchAugment(*setting, num_classes=1000)
    sync(images.device)
    t0 = clock()
    x = normalize(images)
    if augment is not None:
        augment(x, labels, sample_seed(0, 1, -step))
    sync(images.device)
    return clock() - t0


def time_sampler(reps: int, batch: int) -> float:
    """Seconds per step of iterating a whole ImageNet epoch's (index, seed) pairs."""
    sampler = ShardedSampler(IMAGENET_TRAIN, True, 0, 0, 1, batch=batch, reps=reps)
    sampler.set_epoch(1)
    t0 = clock()
    for _ in sampler:
        pass
    return (clock() - t0) / (len(sampler) // batch)


def rotate(names: list, i: int) -> list:
    return names[i % len(names):] + names[: i % len(names)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolution", type=int, default=176)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--files", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    global clock
    if args.clock == "wall":
        clock = time.perf_counter
    else:
        torch.set_num_threads(1)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_imagenet_like(Path(tmp), args.files, classes=1)
        files = [read_bytes(str(f)) for f in sorted((root / "train").rglob("*.JPEG"))]
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, args.resolution, args.resolution),
                           dtype=torch.uint8, generator=g).to(device)  # fmt: skip
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    worker: dict[str, list[float]] = {name: [] for name in POLICIES}
    batch: dict[str, list[float]] = {name: [] for name in BATCH_SETTINGS}
    sampler: dict[int, list[float]] = {1: [], 4: []}
    for name in POLICIES:  # warm-up: lazy imports, first allocations
        time_worker(name, files[:2], args.resolution)
    for i in range(args.repeats):
        for name in rotate(list(POLICIES), i):
            worker[name].append(time_worker(name, files, args.resolution))
        for name in rotate(list(BATCH_SETTINGS), i):
            batch[name].append(time_batch(BATCH_SETTINGS[name], images, labels, i))
        for reps in rotate(list(sampler), i):
            sampler[reps].append(time_sampler(reps, args.batch))
    ms = 1000.0
    rows = (
        [{"kind": "worker, per image", "setting": f"data.auto_augment: {name}",
          "ms": statistics.median(v) * ms, "ms_per_step": statistics.median(v) * ms * args.batch,
          "runs_ms": [x * ms for x in v]} for name, v in worker.items()]
        + [{"kind": f"training process ({device}), per step", "setting": name,
            "ms": statistics.median(v) * ms, "ms_per_step": statistics.median(v) * ms,
            "runs_ms": [x * ms for x in v]} for name, v in batch.items()]
        + [{"kind": "sampler, per step", "setting": f"data.ra_reps: {reps}",
            "ms": statistics.median(v) * ms, "ms_per_step": statistics.median(v) * ms,
            "runs_ms": [x * ms for x in v]} for reps, v in sampler.items()]
    )  # fmt: skip
    if args.json:
        print(json.dumps({"args": vars(args), "rows": rows}, indent=1))
        return
    print(f"batch {args.batch} at {args.resolution} px, median of {args.repeats} repeats, "
          f"{args.clock} time")
    print("| where | setting | median ms | ms per step | runs (ms) |")
    print("| --- | --- | ---: | ---: | --- |")
    for r in rows:
        runs = ", ".join(f"{v:.2f}" for v in r["runs_ms"])
        print(f"| {r['kind']} | {r['setting']} | {r['ms']:.2f} | {r['ms_per_step']:.2f} | "
              f"{runs} |")  # fmt: skip


if __name__ == "__main__":
    main()
