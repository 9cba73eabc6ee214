"""Where `data.decode: gpu` spends its time: each stage of its path timed on its own, over the
same batches, with the path's own functions (rn50.data.decode, rn50.data.gpu, rn50.data.batch).

Worker side (one worker's CPU time; W workers divide it by W): `read` (the file's bytes),
`header` (decode.probe: size and whether the device decoder takes it), `crop_draw` (the
RandomResizedCrop box and the flip, drawn as the worker draws them). Training-process side
(serial: what the decode thread does for every batch): `h2d_copy` (the batch's file bytes
copied to the device as the pinned copy a batched decoder needs), `decode` (gpu.decode_jpegs:
one batched call of data.gpu_decoder's decoder: torchvision's decode_jpeg, nvJPEG on CUDA,
by default), `place` (rn50.data.resample's
place_batch: every image's crop, antialiased resize and flip in two batched matrix products),
`normalize` (rn50.data.batch).

Beside them, on the same decoded images, the path `place` replaced: `place_per_image` (for
each image a crop, a float conversion, `F.interpolate` with antialias, rounding and a flip:
several kernels and some Python per image) and the `stack` it needed. "per_image_main_img_s"
is the training process's ceiling with those in place of `place`: the former path's.

Each stage has two clocks: `host_s`, what the calling thread spends issuing it (Python and
kernel launches; on a CPU device the work itself), and `total_s`, until the device has done
it (a synchronize after it). A stage whose host time is near its total is bound by its
per-image Python and launch work, not by the device: that is what a ceiling that does not
move with the worker count looks like. `sync_s` is the cost of one synchronize with nothing
queued (the floor of every wait).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from rn50.bench.plan import BenchPlan
from rn50.bench.timing import sync
from rn50.errors import DataError

WORKER_STAGES = ("read", "header", "crop_draw")
MAIN_STAGES = ("h2d_copy", "decode", "place", "normalize")
FORMER_STAGES = ("place_per_image", "stack")  # what `place` replaced, timed beside it


def bench_gpu_stages(plan: BenchPlan, samples) -> dict:
    """Time each stage over batches of `samples` ((path, label)) of the training batch size
    (plan.batch_sizes[0], fewer when there are fewer files), plan.repeats times; returns
    `stage_summary` of the median repeat, with "batch_size", "batches", "device",
    "gpu_decoder" and "left_out". Files the device decoder does not take (CMYK, PNG: the
    workers decode those) are left out before timing and counted in "left_out"; DataError
    (one line) when that is every file."""
    from rn50.data import decode, gpu
    from rn50.data.batch import normalize
    from rn50.data.resample import place_batch

    device = plan.device
    paths = [p for p, _ in samples if _device_decodes(p)]
    if not paths:
        raise DataError(
            f"bench --only stages: none of the {len(samples)} files is a JPEG the device "
            "decoder takes (CMYK, YCCK, PNG and other formats are decoded by the workers)"
        )
    size = max(1, min(plan.batch_sizes[0], len(paths)))
    batches = [paths[i : i + size] for i in range(0, len(paths) - size + 1, size)] or [paths]
    scale = (plan.min_scale, 1.0)
    res = (plan.resolution, plan.resolution)
    repeats: list[dict[str, tuple[float, float]]] = []
    for _ in range(plan.repeats + 1):  # the first: warm-up (allocator, decoder handles)
        clock = StageClock(device)
        torch.manual_seed(0)
        for files in batches:
            datas = clock.time("read", lambda files=files: [decode.read_bytes(p) for p in files])
            heads = clock.time("header", lambda datas=datas: [decode.probe(d) for d in datas])
            boxes = clock.time(
                "crop_draw",
                lambda heads=heads: [
                    (decode.sample_crop(h, w, scale), decode.sample_flip()) for h, w, _ in heads
                ],
            )
            tensors = [torch.from_numpy(d) for d in datas]
            clock.time("h2d_copy", lambda tensors=tensors: _copy_bytes(tensors, device))
            pixels = clock.time(
                "decode",
                lambda tensors=tensors: gpu.decode_jpegs(tensors, device, plan.gpu_decoder),
            )
            decoded = [i for i, x in enumerate(pixels) if x is not None]  # corrupt data: None
            pixels, boxes = [pixels[i] for i in decoded], [boxes[i] for i in decoded]
            n = len(pixels)
            placed = clock.time(
                "place",
                lambda pixels=pixels, boxes=boxes, n=n: place_batch(
                    pixels, [b for b, _ in boxes], [res] * n, [None] * n, [f for _, f in boxes]
                ),
            )
            clock.time("normalize", lambda placed=placed: normalize(placed, True))
            each = clock.time(
                "place_per_image",
                lambda pixels=pixels, boxes=boxes: [
                    _place_one(x, box, res, flip)
                    for x, (box, flip) in zip(pixels, boxes, strict=True)
                ],
            )
            clock.time("stack", lambda each=each: torch.stack(each))
        repeats.append(clock.totals)
    images = sum(len(files) for files in batches)
    timed = repeats[1:] or repeats
    middle = sorted(timed, key=lambda t: sum(v[1] for v in t.values()))[len(timed) // 2]
    return {
        "device": str(device),
        "gpu_decoder": plan.gpu_decoder,
        "left_out": len(samples) - len(paths),
        "resolution": plan.resolution,
        "batch_size": size,
        "batches": len(batches),
        **stage_summary(middle, images, sync_cost(device)),
    }


def _place_one(pixels: torch.Tensor, box, size: tuple[int, int], flip: bool) -> torch.Tensor:
    """The former `place` of one image, uint8 (3, H, W) -> uint8 (3, R, R), kept to measure
    against: crop, float, torch's antialiased bilinear resize, round, flip."""
    top, left, h, w = box
    x = pixels[:, top : top + h, left : left + w].unsqueeze(0).float()
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    x = x.flip(-1) if flip else x
    return x.round_().clamp_(0, 255).to(torch.uint8)[0]


def _device_decodes(path: str) -> bool:
    """Whether the device decoder takes this file (the header test the gpu mode's workers
    make: rn50.data.decode.probe's `direct`)."""
    from rn50.data import decode

    try:
        return decode.probe(decode.read_bytes(path))[2]
    except Exception:  # unreadable or not an image: the workers' path names it
        return False


def _copy_bytes(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The batch's file bytes in one pinned buffer, copied to `device` in one transfer."""
    flat = torch.cat(tensors)
    if device.type == "cuda":
        flat = flat.pin_memory()
    return flat.to(device, non_blocking=True)


class StageClock:
    """Sums, per stage name, (host seconds, total seconds) over the calls timed."""

    def __init__(self, device: torch.device):
        self.device = device
        self.totals: dict[str, tuple[float, float]] = {}

    def time(self, name: str, work: Callable):
        """Run `work()`, adding its host seconds and its seconds until the device is done to stage
        `name`'s totals; returns what `work` returned."""
        sync(self.device)
        t0 = time.perf_counter()
        out = work()
        host = time.perf_counter() - t0
        sync(self.device)
        total = time.perf_counter() - t0
        h, t = self.totals.get(name, (0.0, 0.0))
        self.totals[name] = (h + host, t + total)
        return out


def sync_cost(device: torch.device, n: int = 100) -> float:
    """Seconds of one synchronize with nothing queued (0 on a CPU, which has none)."""
    if device.type != "cuda":
        return 0.0
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        sync(device)
    return (time.perf_counter() - t0) / n


def stage_summary(totals: dict[str, tuple[float, float]], images: int, sync_s: float) -> dict:
    """Per stage, from its summed (host s, total s) over `images` images: "host_s",
    "total_s", "us_per_image" (total), "host_share" (host / total) and "img_s" (images /
    total). Then "main_img_s": the training process's ceiling, images / the sum of the
    MAIN_STAGES' totals (one thread does them one after another), "worker_img_s": one
    worker's, images / the WORKER_STAGES' sum; "slowest_main_stage"; "sync_s". Where the
    FORMER_STAGES were timed: "per_image_main_img_s", the ceiling with them instead of
    `place`, and "place_speedup", their time over `place`'s."""
    stages = {}
    for name, (host, total) in totals.items():
        stages[name] = {
            "host_s": host,
            "total_s": total,
            "us_per_image": 1e6 * total / images,
            "host_share": host / total if total > 0 else float("nan"),
            "img_s": images / total if total > 0 else float("nan"),
        }
    main = sum(totals[s][1] for s in MAIN_STAGES if s in totals)
    worker = sum(totals[s][1] for s in WORKER_STAGES if s in totals)
    present = [s for s in MAIN_STAGES if s in totals]
    former = {}
    if all(s in totals for s in (*FORMER_STAGES, "place")) and totals["place"][1] > 0:
        replaced = sum(totals[s][1] for s in FORMER_STAGES)
        former = {
            "per_image_main_img_s": images / (main - totals["place"][1] + replaced),
            "place_speedup": replaced / totals["place"][1],
        }
    return {
        "images": images,
        "stages": stages,
        "main_img_s": images / main if main > 0 else float("nan"),
        "worker_img_s": images / worker if worker > 0 else float("nan"),
        "slowest_main_stage": max(present, key=lambda s: totals[s][1]) if present else None,
        "sync_s": sync_s,
        **former,
    }
