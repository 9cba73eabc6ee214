"""Decode the same in-memory baseline and progressive JPEG files with torchvision, nvImageCodec
and DALI, side by side: each decoder's images/s, and how far its pixels are from PIL's (the
`cpu` decode mode's libjpeg).

    python3 benchmarks/gpu_decoders.py [--device cuda] [--images 512] [--batch 256]
        [--repeats 3] [--unique 64] [--budget-s 45] [--json]

Files: --unique ImageNet-like pictures (rn50.data.photos.imagenet_like_images: crops of real
photos, 500x375 or 375x500, seed --seed), each encoded twice by PIL at quality 90 with 4:2:0
chroma: baseline (SOF0) and progressive (SOF2; Hopper's hardware JPEG engines take only
baseline). They are repeated to --images files (a decoder's inputs are made once for each
distinct file, and repeated with it); a decoder keeps nothing from one file to the next, so
its rate is the rate on as many distinct files.

Decoders, each on the baseline and on the progressive files, in this order (the candidates
for `decode: gpu` first, the known slow ones last, for the budget):

- torchvision-batched: torchvision.io.decode_jpeg(list, device=...), a batch a call (what
  `decode: gpu` does; on CUDA, per torchvision's decode_jpegs_cuda.cpp, the baseline files of
  a batch go to nvJPEG's hardware backend where the card has one, the others are decoded one
  by one);
- nvimgcodec-hw, -gpu, -default: nvImageCodec's Decoder with only the hardware backend
  (BackendKind.HW_GPU_ONLY), only the CUDA one (GPU_ONLY), and every backend (its default),
  a batch a call;
- nvimgcodec-roi-hw, nvimgcodec-roi: the same batches, each file decoded only inside a
  RandomResizedCrop box (rn50.data.decode.sample_crop, seeded, one for each distinct file,
  repeated with it; a Region of the CodeStream),
  the hardware backend alone and every backend: training only needs that box;
- dali-mixed: DALI's fn.decoders.image with device "mixed"; dali-slice: fn.decoders.image_slice,
  mixed, with the same crop boxes given as inputs;
- torchvision-single: decode_jpeg, one file a call, on --device;
- nvimgcodec-cpu: nvImageCodec with only its CPU backend (CPU_ONLY, libjpeg-turbo on a
  thread per core), which runs without a GPU too.

Timing: the bytes are in memory before the clock starts (torchvision's as CPU uint8 tensors,
as the loader's workers hand them over); nvImageCodec's CodeStream objects are made inside the
timed region, as a training path would make them for every batch. Untimed for the rate: one
file (the decoder's set-up), that file again (to judge whether the first batch fits in the
budget), and the first batch (allocations, handles, and the pixels compared below); then
--repeats passes over all the files, each between two device synchronizations; images/s is
--images / the median pass. Pixels: the decoded first batch (at most --unique distinct files)
against PIL's decode of the same files (cropped to the box for the ROI decoders): mean and
max absolute difference, uint8 levels.

A bad flag is one line on stderr and exit 2, before anything is made or measured: --device
other than cpu, cuda or cuda:N (a CUDA device torch sees), --seed outside numpy's 0..2**32-1,
--budget-s not a finite number above 0, --json-out a folder or in a folder that takes no new
file. A decoder that does not import or fails is recorded with a one-line reason; a file it cannot
decode (None from nvImageCodec) fails that variant. Everything stops within --budget-s of the
start (the imports and the CUDA context count), give or take what cannot be cut short: no
picture, decoder or variant is started with less than a second of it left (else "skipped"),
no first batch or pass when it would overrun it (judged from the file decoded alone or from
the previous pass), and the pixel check stops once it is spent; what is left over is one
picture's making, a decoder's set-up with its first file, or a pass that runs longer than
the one before it: at most about a second past --budget-s on a CPU (more where a library is
slow to start, or where the imports alone take longer than --budget-s). --json prints one
JSON object (strict JSON: a number that is not finite is null, with "<key>_null" saying why);
otherwise a table. --json-out FILE also writes that object to FILE after every decoder
("finished": false until the last), so that a run killed from outside or crashed by a
library keeps what it had measured; a line on stderr says when each decoder is done.
"""

from __future__ import annotations

import time

START = time.monotonic()  # before the heavy imports: the budget counts them

import argparse  # noqa: E402
import faulthandler  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from rn50.bench.timing import error_text, sync  # noqa: E402
from rn50.data.decode import sample_crop  # noqa: E402
from rn50.data.photos import imagenet_like_images  # noqa: E402
from rn50.fileio import atomic_write_text  # noqa: E402

VARIANTS = ("baseline", "progressive")
# What a user without DALI reads. The size: the nvidia-dali-cuda130 2.4.0 wheel for Python
# 3.12 (manylinux_2_28_x86_64), 198,655,209 bytes when benchmarks/gpu_wheels.sh was written,
# past the 64 MiB a device machine takes with the checkout, so gpu_wheels.sh leaves it out.
DALI_NOT_INSTALLED = (
    "not installed (pip install nvidia-dali-cuda130, or nvidia-dali-cuda120 for CUDA 12;"
    " 199 MB, too large for benchmarks/gpu_wheels.sh to carry)"
)


class Unavailable(Exception):
    """A decoder that cannot run here; its message is the one-line reason."""


# The budget's reserve: no picture, decoder or variant is started with less than this left.
RESERVE_S = 1.0


class Budget:
    """Seconds left of `seconds` counted from the script's start (imports included)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def used(self) -> float:
        """Seconds since the script started."""
        return time.monotonic() - START

    def left(self) -> float:
        """Seconds left (negative once overrun)."""
        return self.seconds - self.used()


def repeat_to(items: list, count: int) -> list:
    """`items` cycled to `count` entries (the same objects again, not copies); [] if empty."""
    if not items:
        return []
    return (items * -(-count // len(items)))[:count]


# ---------------------------------------------------------------------------------- files


def sof_marker(data: bytes) -> int:
    """The JPEG frame marker of `data` (0xC0 baseline, 0xC1 extended, 0xC2 progressive, ...),
    found by walking the marker segments from SOI; raises ValueError when there is none."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI)")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    raise ValueError("no SOF marker before the end")


def make_files(
    unique: int, seed: int = 0, quality: int = 90, budget: Budget | None = None
) -> dict[str, list[bytes]]:
    """{"baseline": [JPEG bytes] * unique, "progressive": [...]}: the same pictures
    (imagenet_like_images(unique, seed)) encoded by PIL both ways, 4:2:0, at `quality`.
    With a `budget`, no picture is started with less than RESERVE_S of it left: the lists
    are then shorter (as short as empty)."""
    files: dict[str, list[bytes]] = {v: [] for v in VARIANTS}
    pictures = imagenet_like_images(unique, seed)
    for _ in range(unique):
        if budget is not None and budget.left() < RESERVE_S:
            break
        img = next(pictures)  # the first one loads the bundled photos too
        for variant in VARIANTS:
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=quality, subsampling="4:2:0",
                     progressive=variant == "progressive")  # fmt: skip
            files[variant].append(buf.getvalue())
    return files


def pil_pixels(data: bytes) -> np.ndarray:
    """PIL's RGB decode of `data`, uint8 (H, W, 3): the reference."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def draw_boxes(datas: Sequence[bytes], seed: int) -> list[tuple[int, int, int, int]]:
    """A RandomResizedCrop box (top, left, h, w) for each file, drawn as training draws them
    (rn50.data.decode.sample_crop, scale 0.08..1) from torch's generator seeded `seed`.
    run() draws them for the distinct files only, and they repeat with them: --images
    boxes would cost a PIL header read each, before any budget check."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        boxes = []
        for data in datas:
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
            boxes.append(sample_crop(height, width))
        return boxes
    finally:
        torch.random.set_rng_state(state)


# ------------------------------------------------------------------------------- decoders


@dataclass
class Runner:
    """One decoder ready to run: `prepare` turns (bytes, box) pairs into its inputs, outside
    the clock; `decode` decodes a list of them (timed) and returns one output per input,
    None where it could not; `pixels` turns an output into uint8 (H, W, 3) numpy."""

    prepare: Callable[[list[bytes], list], list]
    decode: Callable[[list], list]
    pixels: Callable[[object], np.ndarray]
    crops: bool = False  # outputs are the boxes, not whole images
    notes: dict = field(default_factory=dict)


def _chw_pixels(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).cpu().numpy()


def _tv_prepare(datas: list[bytes], boxes: list) -> list[torch.Tensor]:
    return [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]


def _check_torchvision(device: torch.device):
    """torchvision and torchvision.io, when they import; else raises Unavailable."""
    try:
        import torchvision
        import torchvision.io as tio
    except Exception as e:  # ImportError, or its C++ extension failing to load
        raise Unavailable(f"not importable: {error_text(e)}") from None
    return torchvision, tio


def _torchvision(device: torch.device, batched: bool) -> Runner:
    torchvision, tio = _check_torchvision(device)

    # torchvision 0.29+ deprecates its image codecs in favour of TorchCodec's; they still work.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
    rgb = tio.ImageReadMode.RGB

    def decode(tensors: list) -> list:
        if batched:
            return list(tio.decode_jpeg(tensors, mode=rgb, device=device))
        return [tio.decode_jpeg(t, mode=rgb, device=device) for t in tensors]

    return Runner(_tv_prepare, decode, _chw_pixels,
                  notes={"torchvision": torchvision.__version__})  # fmt: skip


def _import_nvimgcodec():
    try:
        from nvidia import nvimgcodec
    except Exception as e:  # ImportError, or a library it loads failing
        raise Unavailable(f"not importable: {error_text(e)}") from None
    return nvimgcodec


def _check_nvimgcodec(device: torch.device, kind: str | None):
    """nvImageCodec's module, when it imports and BackendKind `kind` can run on `device`;
    else raises Unavailable."""
    nv = _import_nvimgcodec()
    if device.type != "cuda" and kind != "CPU_ONLY":
        raise Unavailable(f"needs a CUDA device (--device {device.type})")
    return nv


def _nvimgcodec(device: torch.device, kind: str | None, roi: bool) -> Runner:
    """nvImageCodec's Decoder limited to BackendKind `kind` (None: every backend)."""
    nv = _check_nvimgcodec(device, kind)
    on_cpu = kind == "CPU_ONLY"
    backends = None if kind is None else [nv.Backend(getattr(nv.BackendKind, kind))]
    device_id = nv.NVIMGCODEC_DEVICE_CPU_ONLY if on_cpu else (device.index or 0)
    decoder = nv.Decoder(device_id=device_id, backends=backends)
    # rn50 turns images upright itself (rn50.data.image): no EXIF orientation here.
    params = nv.DecodeParams(apply_exif_orientation=False, color_spec=nv.ColorSpec.SRGB)

    def prepare(datas: list[bytes], boxes: list) -> list:
        return list(zip(datas, boxes, strict=True))

    def stream(data: bytes, box):
        cs = nv.CodeStream(data)
        if not roi:
            return cs
        top, left, h, w = box
        region = nv.Region(top, left, top + h, left + w)
        if hasattr(cs, "get_sub_code_stream"):  # 0.6 and later
            return cs.get_sub_code_stream(region=region)
        return nv.DecodeSource(cs, region)  # before 0.6

    def decode(items: list) -> list:
        return decoder.decode([stream(d, b) for d, b in items], params=params)

    def pixels(image) -> np.ndarray:
        host = image if on_cpu else image.cpu()
        return np.asarray(host)

    notes = {"nvimgcodec": nv.__version__, "backends": kind or "all"}
    return Runner(prepare, decode, pixels, crops=roi, notes=notes)


def _installed(module: str) -> bool:
    """Whether `module` (dotted) is there to import, without importing it (its parent
    packages are imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or no __spec__
        return False


def _check_dali(device: torch.device):
    """DALI's modules (dali, fn, types, Pipeline), when they import and `device` is a CUDA
    one (decoding with device "mixed" needs it); else raises Unavailable."""
    if not _installed("nvidia.dali"):
        raise Unavailable(DALI_NOT_INSTALLED)
    try:
        import nvidia.dali as dali
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline
    except Exception as e:  # installed, but it or a library it loads fails
        raise Unavailable(f"not importable: {error_text(e)}") from None
    if device.type != "cuda":
        raise Unavailable(f"device 'mixed' needs a CUDA device (--device {device.type})")
    return dali, fn, types, Pipeline


def _dali(device: torch.device, slice_: bool, batch: int) -> Runner:
    dali, fn, types, Pipeline = _check_dali(device)
    threads = max(1, min(8, len(os.sched_getaffinity(0))))
    pipe = Pipeline(batch_size=batch, num_threads=threads, device_id=device.index or 0,
                    prefetch_queue_depth=1)  # fmt: skip
    with pipe:
        jpegs = fn.external_source(name="jpegs", dtype=types.UINT8)
        if slice_:
            anchor = fn.external_source(name="anchor", dtype=types.FLOAT)
            shape = fn.external_source(name="shape", dtype=types.FLOAT)
            images = fn.decoders.image_slice(
                jpegs, anchor, shape, device="mixed", output_type=types.RGB,
                axis_names="WH", normalized_anchor=False, normalized_shape=False,
            )  # fmt: skip
        else:
            images = fn.decoders.image(jpegs, device="mixed", output_type=types.RGB)
        pipe.set_outputs(images)
    pipe.build()

    def prepare(datas: list[bytes], boxes: list) -> list:
        return [
            (np.frombuffer(d, dtype=np.uint8), np.array([left, top], np.float32),
             np.array([w, h], np.float32))
            for d, (top, left, h, w) in zip(datas, boxes, strict=True)
        ]  # fmt: skip

    def decode(items: list) -> list:
        pipe.feed_input("jpegs", [j for j, _, _ in items])
        if slice_:
            pipe.feed_input("anchor", [a for _, a, _ in items])
            pipe.feed_input("shape", [s for _, _, s in items])
        (out,) = pipe.run()
        host = _HostCopy(out)
        return [(host, i) for i in range(len(items))]

    def pixels(sample) -> np.ndarray:
        host, i = sample
        return host.sample(i)

    return Runner(prepare, decode, pixels, crops=slice_,
                  notes={"dali": dali.__version__, "threads": threads})  # fmt: skip


class _HostCopy:
    """A DALI output TensorList, copied to the host on the first read of a sample (the pixel
    check, outside the clock; the pipeline's next run reuses the buffers)."""

    def __init__(self, tensor_list):
        self.tensor_list, self.host = tensor_list, None

    def sample(self, index: int) -> np.ndarray:
        """Sample `index` as uint8 (H, W, 3) numpy."""
        if self.host is None:
            tl = self.tensor_list
            self.host = tl.as_cpu() if hasattr(tl, "as_cpu") else tl
        return np.asarray(self.host.at(index))


@dataclass
class Decoder:
    """A decoder this script measures: its name, what it is, how to make its Runner (device,
    batch), and `check`, which raises Unavailable when it cannot run on the device here (a
    library that does not import, a CUDA-only decoder on the CPU) without making anything."""

    name: str
    what: str
    make: Callable[[torch.device, int], Runner]
    check: Callable[[torch.device], object]

    def unavailable(self, device: torch.device) -> str | None:
        """Why it cannot run on `device` (check's one line), or None when it can."""
        try:
            self.check(device)
        except Unavailable as e:
            return str(e)
        return None


# In this order: the candidates for `decode: gpu` first, the known slow ones last (the budget).
DECODERS = (
    Decoder("torchvision-batched", "torchvision decode_jpeg(list, device=...), a batch a call",
            lambda d, b: _torchvision(d, batched=True), check=_check_torchvision),
    Decoder("nvimgcodec-hw", "nvImageCodec Decoder, BackendKind.HW_GPU_ONLY, a batch a call",
            lambda d, b: _nvimgcodec(d, "HW_GPU_ONLY", roi=False),
            check=lambda d: _check_nvimgcodec(d, "HW_GPU_ONLY")),
    Decoder("nvimgcodec-gpu", "nvImageCodec Decoder, BackendKind.GPU_ONLY (CUDA), a batch a call",
            lambda d, b: _nvimgcodec(d, "GPU_ONLY", roi=False),
            check=lambda d: _check_nvimgcodec(d, "GPU_ONLY")),
    Decoder("nvimgcodec-default", "nvImageCodec Decoder, every backend, a batch a call",
            lambda d, b: _nvimgcodec(d, None, roi=False),
            check=lambda d: _check_nvimgcodec(d, None)),
    Decoder("nvimgcodec-roi-hw", "nvImageCodec, HW_GPU_ONLY, each file's crop box only (Region)",
            lambda d, b: _nvimgcodec(d, "HW_GPU_ONLY", roi=True),
            check=lambda d: _check_nvimgcodec(d, "HW_GPU_ONLY")),
    Decoder("nvimgcodec-roi", "nvImageCodec, every backend, each file's crop box only (Region)",
            lambda d, b: _nvimgcodec(d, None, roi=True),
            check=lambda d: _check_nvimgcodec(d, None)),
    Decoder("dali-mixed", "DALI fn.decoders.image, device mixed, a batch a run",
            lambda d, b: _dali(d, slice_=False, batch=b),
            check=_check_dali),
    Decoder("dali-slice", "DALI fn.decoders.image_slice, mixed, each file's crop box",
            lambda d, b: _dali(d, slice_=True, batch=b),
            check=_check_dali),
    Decoder("torchvision-single", "torchvision decode_jpeg(tensor, device=...), a file a call",
            lambda d, b: _torchvision(d, batched=False), check=_check_torchvision),
    Decoder("nvimgcodec-cpu", "nvImageCodec Decoder, BackendKind.CPU_ONLY (libjpeg-turbo)",
            lambda d, b: _nvimgcodec(d, "CPU_ONLY", roi=False),
            check=lambda d: _check_nvimgcodec(d, "CPU_ONLY")),
)  # fmt: skip
NAMES = tuple(d.name for d in DECODERS)


# ------------------------------------------------------------------------------ measuring


def pixel_diff(
    runner: Runner, outputs: list, datas: list[bytes], boxes: list, budget: Budget | None = None
) -> dict:
    """Mean and max absolute difference (uint8 levels) of `outputs` against PIL's decode of
    `datas` (cropped to `boxes` for a decoder of crops), over every pixel and channel; with a
    `budget`, the files after the first stop once it is spent ("images": how many counted)."""
    total, count, worst, checked = 0.0, 0, 0, 0
    for out, data, (top, left, h, w) in zip(outputs, datas, boxes, strict=True):
        if checked and budget is not None and budget.left() < 0:
            break
        checked += 1
        ref = pil_pixels(data)
        if runner.crops:
            ref = ref[top : top + h, left : left + w]
        got = runner.pixels(out)
        if got.shape != ref.shape:
            raise ValueError(f"shape {tuple(got.shape)}, PIL's {tuple(ref.shape)}")
        diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
        total += float(diff.sum())
        count += diff.size
        worst = max(worst, int(diff.max()))
    mean = round(total / count, 4)
    return {"mean_abs_diff": mean, "max_abs_diff": worst, "images": checked}


def _not_decoded(outputs: list) -> int:
    return sum(o is None for o in outputs)


def one_pass(runner: Runner, batches: list[list], device: torch.device) -> float:
    """Seconds to decode every batch, between two device synchronizations; raises when a
    file comes back undecoded."""
    sync(device)
    t0 = time.perf_counter()
    for batch in batches:
        out = runner.decode(batch)
        if _not_decoded(out):
            raise RuntimeError(f"{_not_decoded(out)} of {plural(len(out), 'file')} not decoded")
    sync(device)
    return time.perf_counter() - t0


def _timed(runner: Runner, batch: list, device: torch.device) -> tuple[list, float]:
    sync(device)
    t0 = time.perf_counter()
    out = runner.decode(batch)
    sync(device)
    return out, time.perf_counter() - t0


def measure(runner: Runner, datas: list[bytes], boxes: list, args, budget: Budget) -> dict:
    """One decoder on one variant's distinct files `datas` (and their crop `boxes`), cycled to
    args.images: one file, untimed for the rate ("setup_s": set-up included), then once more
    to judge whether the first batch fits in the budget; the first batch, untimed for the rate
    but its seconds kept ("first_batch_s") and its pixels compared with PIL's; then up to
    args.repeats timed passes over all the files while the budget lasts (a pass that would
    overrun it, judged from the previous pass or the first batch, is not started)."""
    device = torch.device(args.device)
    inputs = repeat_to(runner.prepare(datas, boxes), args.images)  # prepared once a file
    batches = [inputs[i : i + args.batch] for i in range(0, len(inputs), args.batch)]
    first, setup_s = _timed(runner, batches[0][:1], device)
    result: dict = {"setup_s": round(setup_s, 5)}
    if not _not_decoded(first):
        _, one_s = _timed(runner, batches[0][:1], device)
        guess = one_s * len(batches[0])
        if budget.left() < guess:
            result["note"] = f"the first batch (about {guess:.1f} s) would overrun the budget"
            return result
        first, seconds = _timed(runner, batches[0], device)
        result["first_batch_s"] = round(seconds, 5)
    missing = _not_decoded(first)
    if missing:
        return {"error": f"{missing} of {plural(len(first), 'file')} not decoded (None)", **result}
    checked = min(len(first), len(datas))
    result["pixels"] = pixel_diff(runner, first[:checked], datas[:checked], boxes[:checked],
                                  budget)  # fmt: skip
    del first
    times: list[float] = []
    while len(times) < args.repeats:
        expected = max(times) if times else result["first_batch_s"] * len(batches)
        if budget.left() < expected:
            result["note"] = (
                f"{len(times)} of {plural(args.repeats, 'pass')}: another (about"
                f" {expected:.1f} s) would overrun the budget"
            )
            break
        times.append(one_pass(runner, batches, device))
    if times:
        img_s = len(inputs) / statistics.median(times)
        result.update(img_s=round(img_s, 1), passes_s=[round(t, 5) for t in times])
    return result


def run_decoder(
    dec: Decoder, files: dict, boxes: dict, args, budget: Budget, unavailable: str | None
) -> dict:
    """`dec`'s entry on the distinct `files` and their `boxes` (per variant): "what", and per
    variant its measure() or {"error"/"skipped": reason}; or "unavailable" with the reason
    when it cannot run here at all (`unavailable`: dec.unavailable(), found before the
    budget, so that it is said even when the budget is spent)."""
    entry: dict = {"what": dec.what}
    if unavailable:
        entry["unavailable"] = unavailable
        return entry
    if budget.left() < RESERVE_S:
        entry["skipped"] = f"the --budget-s of {args.budget_s:g} s was spent"
        return entry
    device = torch.device(args.device)
    try:
        runner = dec.make(device, args.batch)
    except Unavailable as e:
        entry["unavailable"] = str(e)
        return entry
    except Exception as e:  # a library that imports but cannot start here
        entry["unavailable"] = f"could not start: {error_text(e)}"
        return entry
    entry.update(runner.notes)
    for variant in VARIANTS:
        if budget.left() < RESERVE_S:
            entry[variant] = {"skipped": f"the --budget-s of {args.budget_s:g} s was spent"}
            continue
        try:
            entry[variant] = measure(runner, files[variant], boxes[variant], args, budget)
        except Exception as e:
            entry[variant] = {"error": error_text(e)}
    del runner
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return entry


def files_summary(unique: dict, images: int) -> dict:
    """Per variant: files a pass decodes, distinct files (fewer than --unique where the budget
    stopped their making), mean bytes (None without files), and the frame marker(s)."""
    names = {0xC0: "SOF0", 0xC1: "SOF1", 0xC2: "SOF2"}
    out = {}
    for variant in VARIANTS:
        datas = unique[variant]
        out[variant] = {
            "files": images,
            "distinct": len(datas),
            "mean_bytes": round(sum(map(len, datas)) / len(datas)) if datas else None,
            "sof": sorted({names.get(m, hex(m)) for m in map(sof_marker, datas)}),
        }
    return out


def run(args) -> dict:
    """Every decoder on both variants; the JSON object this script prints."""
    budget = Budget(args.budget_s)
    device = torch.device(args.device)
    if device.type == "cuda":  # parse_args made sure torch sees it
        torch.zeros(1, device=device)  # the context, before any clock
        sync(device)
    # Which decoders can run here, first: the imports count in the budget, and a decoder
    # that cannot run is said to be so even where the budget is spent before its turn.
    unavailable = {dec.name: dec.unavailable(device) for dec in DECODERS}
    unique = make_files(args.unique, args.seed, budget=budget)
    boxes = {v: draw_boxes(unique[v], args.seed) for v in VARIANTS}
    report = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cores": len(os.sched_getaffinity(0)),
        "images": args.images,
        "batch": args.batch,
        "repeats": args.repeats,
        "budget_s": args.budget_s,
        "files": files_summary(unique, args.images),
        "decoders": {},
        "finished": False,
    }
    made = len(unique["baseline"])
    if made < args.unique:  # then every decoder is skipped too: less than RESERVE_S is left
        report["note"] = (
            f"the --budget-s of {args.budget_s:g} s was spent making the files:"
            f" {made} of {plural(args.unique, 'distinct picture')} made"
        )
    for dec in DECODERS:
        report["decoders"][dec.name] = run_decoder(dec, unique, boxes, args, budget,
                                                   unavailable[dec.name])
        report["elapsed_s"] = round(budget.used(), 2)
        print(f"gpu_decoders: {dec.name} done at {report['elapsed_s']} s", file=sys.stderr)
        if dec is DECODERS[-1]:
            report["finished"] = True
        if args.json_out:
            atomic_write_text(args.json_out, to_json(report) + "\n")
    return report


# -------------------------------------------------------------------------------- output


def finite(value, reasons: dict | None = None, key: str = ""):
    """`value` (the report, or any part of it) with every float that is not finite (NaN, inf)
    replaced by None; where it was a dict's value under `key`, that dict also gets
    "<key>_null": "not a finite number (nan)" beside it. New objects; `value` is untouched."""
    if isinstance(value, float) and not math.isfinite(value):
        if reasons is not None:
            reasons[f"{key}_null"] = f"not a finite number ({value})"
        return None
    if isinstance(value, dict):
        out: dict = {}
        for k, v in value.items():
            out[k] = finite(v, out, str(k))
        return out
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def to_json(report: dict) -> str:
    """The report as strict JSON (no NaN or Infinity, which json.loads takes but JSON does not
    allow): finite() first, then json.dumps with allow_nan=False, indented by 1."""
    return json.dumps(finite(report), indent=1, allow_nan=False)


def plural(count: int, noun: str) -> str:
    """"1 pass", "3 passes", "1 file", "2 files": `count` and `noun`, plural unless 1."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {noun}{'es' if noun.endswith(('s', 'sh', 'ch', 'x')) else 's'}"


def cell(result: dict | None) -> tuple[str, str]:
    """(images/s with the number of passes it is the median of, pixels) cells of one
    variant's result."""
    if not result:
        return "-", "-"
    if "img_s" not in result:
        reason = result.get("error") or result.get("skipped") or result.get("note") or "-"
        return reason[:60], "-"
    px = result["pixels"]
    rate = f"{result['img_s']:.1f} ({plural(len(result['passes_s']), 'pass')})"
    return rate, f"{px['mean_abs_diff']:.2f} / {px['max_abs_diff']}"


def table(report: dict) -> str:
    """The report as a readable table: images/s and pixels vs PIL (mean / max), per variant."""
    files = report["files"]

    def size(variant: str) -> str:
        mean = files[variant]["mean_bytes"]
        return "-" if mean is None else f"{mean} B"

    lines = [
        f"{report['device_name']} ({report['device']}), {plural(report['cores'], 'core')},"
        f" torch {report['torch']}; {plural(report['images'], 'file')}"
        f" ({files['baseline']['distinct']} distinct,"
        f" {size('baseline')} baseline, {size('progressive')}"
        f" progressive), batch {report['batch']}; img/s: the median of the passes run (in"
        f" brackets; --repeats {report['repeats']}); {report['elapsed_s']} s",
        "decoder | baseline img/s | pixels vs PIL | progressive img/s | pixels vs PIL",
    ]
    for name, entry in report["decoders"].items():
        reason = entry.get("unavailable") or entry.get("skipped")
        if reason:
            lines.append(f"{name} | {reason}")
            continue
        rate_b, px_b = cell(entry.get("baseline"))
        rate_p, px_p = cell(entry.get("progressive"))
        lines.append(f"{name} | {rate_b} | {px_b} | {rate_p} | {px_p}")
    if report.get("note"):
        lines.append(report["note"])
    return "\n".join(lines)


SEED_MAX = 2**32 - 1  # numpy's seed range (np.random.seed); torch's manual_seed takes it too
DEVICE_RE = re.compile(r"cpu|cuda(:\d+)?")


def description() -> str:
    """--help's description: the module docstring's first paragraph, in one line."""
    return " ".join(__doc__.split("\n\n")[0].split())


def device_problem(text: str) -> str | None:
    """Why `text` is no --device here (only cpu, cuda and cuda:N, N a CUDA device torch
    sees), or None when it is one."""
    if not DEVICE_RE.fullmatch(text):
        return f"--device must be cpu, cuda or cuda:N, not {text!r}"
    if text == "cpu":
        return None
    if not torch.cuda.is_available():
        return f"--device {text}: torch sees no CUDA device"
    index, count = int(text.partition(":")[2] or 0), torch.cuda.device_count()
    if index >= count:
        return f"--device {text}: torch sees {plural(count, 'CUDA device')} (cuda:0..{count - 1})"
    return None


def json_out_problem(path: str) -> str | None:
    """Why --json-out `path` cannot be written, or None: a folder, or a file in a folder that
    is missing or refuses a new file (tried with a temporary file beside it, removed at
    once: the atomic write makes one there)."""
    target = Path(path)
    if target.is_dir():
        return f"--json-out {path!r} is a folder; name a file"
    folder = target.parent
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{target.name}.probe-"):
            pass
    except OSError as e:
        return f"--json-out {path!r}: cannot write in {str(folder)!r} ({e.strerror or e})"
    return None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (module docstring); a bad flag is one line on stderr and exit 2."""
    p = argparse.ArgumentParser(prog="gpu_decoders.py", description=description())
    p.add_argument("--device", default="cuda", help="cuda (cuda:N) or cpu")
    p.add_argument("--images", type=int, default=512, help="files decoded per pass")
    p.add_argument("--unique", type=int, default=64, help="distinct pictures among them")
    p.add_argument("--batch", type=int, default=256, help="files a batched call decodes")
    p.add_argument("--repeats", type=int, default=3, help="timed passes; the median counts")
    p.add_argument("--seed", type=int, default=0,
                   help=f"pictures and crop boxes, 0..{SEED_MAX}")  # fmt: skip
    p.add_argument("--budget-s", type=float, default=45.0,
                   help="stop measuring this many seconds after the start (above 0)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--json-out", metavar="FILE", help="also write it here after every decoder")
    args = p.parse_args(argv)
    for name in ("images", "unique", "batch", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if not 0 <= args.seed <= SEED_MAX:
        p.error(f"--seed must be between 0 and {SEED_MAX} (numpy's seed range), not {args.seed}")
    if not (math.isfinite(args.budget_s) and args.budget_s > 0):
        p.error(f"--budget-s must be a finite number of seconds above 0, not {args.budget_s:g}")
    for problem in (device_problem(args.device), args.json_out and json_out_problem(args.json_out)):
        if problem:
            p.error(problem)
    args.unique = min(args.unique, args.images)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Measure and print (JSON with --json, else the table)."""
    args = parse_args(argv)
    faulthandler.enable()  # a library's crash leaves a stack on stderr
    report = run(args)
    print(to_json(report) if args.json else table(report))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
