"""`data.workers: auto` and `data.decode: auto`: the worker count and decode mode for this
machine, chosen from the CPUs this process may use, torchrun's local processes, the device
and measured rates. Every command that builds a loader (train, eval, lr-find, bench,
data show) resolves auto through `choose_data`, so they agree.

The rule, per process:

- workers: its share of the CPUs (rn50.resources.available_cpus() // local processes), less
  one kept for the training loop itself; at least 1. A count given as a number is capped to
  that share (all of it), with a note when lowered: the loaders of the commands and of a
  library call (rn50.train.loop.fit) alike start no more.
- decode: cpu when the model runs on the CPU (no CUDA). On a GPU the `cpu` mode delivers
  about workers x CPU_DECODE_PER_WORKER images/s and the `gpu` mode about GPU_DECODE_IMG_S;
  gpu is chosen where the first is below the model step's rate on this GPU and the second
  above the first, else cpu. The comparison is made at data.resolution (the full resolution:
  the last epochs and every evaluation run at it).

The rates are measurements (BENCHMARKS.md, "NVIDIA H200, 2026-11-28", bf16, channels_last,
batch 256) and, for other GPUs, published figures or estimates, each named with its source
below. They are inputs of a rule of thumb, not promises: `rn50 bench` measures this machine.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import torch

from rn50 import resources
from rn50.config import DataConfig
from rn50.data.device_decoders import check_gpu_decoder, gpu_decoder_installed

# `cpu` mode, images/s per worker on the H200 machine's cores (16 workers on 16 cores, 512
# ImageNet-like 500x375 JPEGs): 7,105.3 / 16 at 224 px, 11,044.7 / 16 at 192 px.
CPU_DECODE_PER_WORKER = {224: 7105.3 / 16, 192: 11044.7 / 16}
# `gpu` mode, images/s of the data path on the H200: 1,953 (1 worker) to 2,094 (16 workers)
# at 224 px, 1,970 to 2,287 at 192 px; its ceiling is in the training process, so the same
# whatever the worker count.
GPU_DECODE_IMG_S = 2000.0
# The model step alone on the H200, eager, images/s at each measured resolution.
H200_STEP_IMG_S = {224: 4677.2, 192: 6111.9, 160: 8054.8}
# torch.compile's step against eager on the H200 at 224 px: 6,830.9 / 4,686.1.
COMPILE_SPEEDUP = 6830.9 / 4686.1
# Eager step images/s at 224 px by GPU name (a substring of torch.cuda.get_device_name,
# upper case; the first that matches). H200: measured. H100: the same GH100 chip, taken as
# the H200's (an estimate). A100 and V100: NVIDIA DeepLearningExamples, PyTorch ResNet50
# v1.5, 1 GPU, mixed precision, batch 256 (pytorch-21.03 container): 2,470 (A100 80GB) and
# 1,200 (V100 16GB). T4: that README's T4 mixed-precision inference (1,198 img/s at batch
# 256) x its V100 training / inference ratio (1,200 / 3,382): about 425 (an estimate).
GPU_STEP_IMG_S = {"H200": 4677.2, "H100": 4677.2, "A100": 2470.0, "V100": 1200.0,
                  "T4": 425.0}
DEFAULT_GPU = "H200"  # an unknown GPU is taken to be as fast as the fastest measured one


@dataclasses.dataclass(frozen=True)
class DataChoice:
    """`data` with workers and decode resolved (ints and modes as given stay), and for each
    key that was auto one line saying what was chosen and why."""

    data: DataConfig
    lines: tuple[str, ...] = ()

    def record(self) -> dict:
        """What auto chose, for run_info.json: {"workers": int, "decode": str, "why": [...]}
        with only the keys that were auto; {} when none was."""
        if not self.lines:
            return {}
        chosen = {k: getattr(self.data, k) for k in ("workers", "decode")
                  if any(line.startswith(f"data.{k} auto") for line in self.lines)}
        return {**chosen, "why": list(self.lines)}


def gpu_name(device: torch.device) -> str | None:
    """The CUDA device's name (e.g. "NVIDIA H200"), or None for any other device."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(device)


def cpu_decode_rate(workers: int, resolution: int) -> float:
    """Images/s `workers` `cpu`-mode workers deliver at `resolution` px (0 workers: the
    training process decodes, as fast as one worker but in turn with the step).

    A measured resolution uses its figure; one between them, the larger one's (smaller crops
    decode no slower); one above 224 px, the 224 px figure x (224 / resolution)^2 (resizing
    costs per output pixel; an estimate); one below 192 px, the 192 px figure.
    """
    measured = sorted(CPU_DECODE_PER_WORKER)
    at_least = [r for r in measured if r >= resolution]
    if at_least:
        per_worker = CPU_DECODE_PER_WORKER[at_least[0]]
    else:
        top = measured[-1]
        per_worker = CPU_DECODE_PER_WORKER[top] * (top / resolution) ** 2
    return max(1, workers) * per_worker


def step_rate(name: str | None, resolution: int, compiled: bool = False) -> tuple[float, str]:
    """(images/s of the training step, the card it was taken from) for GPU `name` at
    `resolution` px: GPU_STEP_IMG_S's 224 px figure (DEFAULT_GPU's for an unknown name) x the
    H200's measured ratio to 224 px at that resolution ((224 / resolution)^2, the ratio of
    pixels, at one not measured) x COMPILE_SPEEDUP when `compiled`."""
    upper = (name or "").upper()
    card = next((k for k in GPU_STEP_IMG_S if k in upper), DEFAULT_GPU)
    if resolution in H200_STEP_IMG_S:
        scale = H200_STEP_IMG_S[resolution] / H200_STEP_IMG_S[224]
    else:
        scale = (224 / resolution) ** 2
    rate = GPU_STEP_IMG_S[card] * scale * (COMPILE_SPEEDUP if compiled else 1.0)
    return rate, card


def about(x: float) -> str:
    """`x` to two significant figures with thousands separators: 1332 -> "1,300"."""
    if x <= 0:
        return "0"
    digits = len(str(int(x))) - 2
    return f"{round(x, -digits) if digits > 0 else round(x):,.0f}"


def auto_workers() -> tuple[int, str]:
    """(workers, the line saying why) for `data.workers: auto`."""
    cpus, procs = resources.available_cpus(), resources.local_processes()
    share = max(1, cpus // procs)
    workers = max(1, share - 1)
    cores = f"{cpus} CPU{'s' if cpus != 1 else ''} for {procs} process{'es' if procs > 1 else ''}"
    if procs > 1:
        cores += f": {share} each"
    why = "one kept for the training loop" if share > 1 else "sharing it with the training loop"
    return workers, f"data.workers auto -> {workers} ({cores}, {why})"


def auto_decode(workers: int, resolution: int, device: torch.device,
                compiled: bool = False) -> tuple[str, str]:
    """(mode, the line saying why) for `data.decode: auto` with `workers` workers."""
    name = gpu_name(device)
    if name is None:
        return "cpu", f"data.decode auto -> cpu: the model runs on the {device.type.upper()}"
    cpu = cpu_decode_rate(workers, resolution)
    step, card = step_rate(name, resolution, compiled)
    gpu = f"this GPU ({name}{'' if card in name.upper() else f', not measured: the {card} rate'})"
    what = "compiled model step" if compiled else "model step"
    who = {0: "the training process decodes", 1: "1 worker decodes"}.get(
        workers, f"{workers} workers decode")
    said = f"{who} about {about(cpu)} img/s at {resolution} px"
    if cpu >= step:
        return "cpu", f"data.decode auto -> cpu: {said}, enough for the {what}'s ~{about(step)} " \
            f"img/s on {gpu}"
    if GPU_DECODE_IMG_S > cpu:
        return "gpu", f"data.decode auto -> gpu: {said}, below the {what}'s ~{about(step)} " \
            f"img/s on {gpu}; the GPU decoder gives about {about(GPU_DECODE_IMG_S)}"
    return "cpu", f"data.decode auto -> cpu: {said}, below the {what}'s ~{about(step)} img/s " \
        f"on {gpu}, but more than the GPU decoder's ~{about(GPU_DECODE_IMG_S)}"


def capped_workers(workers: int) -> int:
    """A data.workers count given as a number, capped to this process's share of the CPUs
    (rn50.resources.cap_workers, shared among torchrun's local processes); when lowered, rank
    0 says so on stderr: `rn50: note: data.workers 64 lowered to 2: …`."""
    first = os.environ.get("RANK", "0") == "0"  # (torchrun's ranks: one note, not one each)
    return resources.cap_workers(workers, "data.workers", share=resources.local_processes(),
                                 say=resources.note if first else None)


def choose_data(data: DataConfig, device: torch.device, compiled: bool = False,
                say: Callable[[str], None] | None = None) -> DataChoice:
    """Resolve `data.workers: auto` and `data.decode: auto` for a loader on `device`
    (`compiled`: train.compile), calling `say` with each choice's line. A worker count given
    as a number is capped to the machine (`capped_workers`); a decode mode is kept. `auto`
    does not choose gpu when data.gpu_decoder is not installed; decode gpu with it not
    installed raises ConfigError."""
    lines = []
    workers = data.workers
    if workers == "auto":
        workers, line = auto_workers()
        lines.append(line)
    else:
        workers = capped_workers(workers)
    decode = data.decode
    if decode == "auto":
        decode, line = auto_decode(workers, data.resolution, device, compiled)
        if decode == "gpu" and not gpu_decoder_installed(data.gpu_decoder):
            decode = "cpu"
            line = line.replace("auto -> gpu", "auto -> cpu", 1)
            line += f"; but data.gpu_decoder {data.gpu_decoder} is not installed here"
        lines.append(line)
    elif decode == "gpu":
        check_gpu_decoder(data.gpu_decoder)  # ConfigError, one line
    if say is not None:
        for line in lines:
            say(line)
    return DataChoice(dataclasses.replace(data, workers=workers, decode=decode), tuple(lines))


def resolve_data(data: DataConfig, device: torch.device, compiled: bool = False,
                 say: Callable[[str], None] | None = None) -> DataConfig:
    """choose_data's DataConfig: workers an int and decode a mode."""
    return choose_data(data, device, compiled, say).data
