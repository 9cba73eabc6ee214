"""Where and in which number format the model runs: device, precision, autocast,
channels_last, and the compiled / DistributedDataParallel wrapping of the network."""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rn50 import distributed as dist
from rn50.config import Config
from rn50.errors import ConfigError
from rn50.train.compiled import compile_module, expected_graphs
from rn50.train.device_sync import synchronize as synchronize  # re-exported


@dataclass
class Runtime:
    """Where and in which number format the model runs."""

    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype; None runs in fp32
    channels_last: bool

    @property
    def use_scaler(self) -> bool:
        """Whether steps need fp16's loss scaling (GradScaler)."""
        # fp16 has a narrow exponent range: small gradients underflow without loss scaling.
        return self.amp_dtype == torch.float16

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout of images and weights: NHWC when channels_last, else NCHW."""
        return torch.channels_last if self.channels_last else torch.contiguous_format


def resolve_device(name: str) -> torch.device:
    """train.device: "auto" is CUDA when visible, else the CPU.

    Raises ConfigError for a CUDA device where none is visible.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device is '{name}' but no CUDA device is visible; use auto or cpu"
        )
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """train.precision as an autocast dtype (None: fp32).

    auto: bf16 where the device supports it (no loss scaling needed), else fp16. Raises
    ConfigError for bf16 on a GPU without it.
    """
    if name == "auto":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision bf16 is not supported by this GPU; use fp16")
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def make_runtime(cfg: Config) -> Runtime:
    """This process's Runtime: its device (its own GPU under torchrun), precision, layout."""
    device = dist.local_device(resolve_device(cfg.train.device))
    return Runtime(device, resolve_precision(cfg.train.precision, device), cfg.model.channels_last)


def precision_name(rt: Runtime) -> str:
    """"fp32", "fp16" or "bf16"."""
    return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[rt.amp_dtype]


def autocast(rt: Runtime):
    """The autocast context of `rt` (a no-op in fp32)."""
    return torch.autocast(rt.device.type, dtype=rt.amp_dtype, enabled=rt.amp_dtype is not None)


def parallelize(model: nn.Module, cfg: Config, rt: Runtime) -> tuple[nn.Module, nn.Module]:
    """(module, model): the plain network, and what the training step calls.

    Under torchrun `model` is `module` in DistributedDataParallel (which broadcasts rank 0's
    weights now and averages gradients in every synchronized backward); in one process they
    are the same. model.sync_bn swaps in SyncBatchNorm first; train.compile compiles the
    module in place before DDP wraps it, as PyTorch recommends, for static shapes (one graph
    per resolution, rn50.train.compiled), so its state_dict keys stay
    plain (no "module." or "_orig_mod." prefix) and checkpoints load anywhere.

    Raises ConfigError for model.sync_bn on CPU processes.
    """
    world = dist.world_size()
    if cfg.model.sync_bn and world > 1:
        if rt.device.type != "cuda":
            raise ConfigError(
                "model.sync_bn needs CUDA devices (SyncBatchNorm does not run on CPUs); set "
                "model.sync_bn=false"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameters and buffers
    if cfg.train.compile:
        compile_module(model, expected_graphs(train_resolutions(cfg)))
    if world == 1:
        return model, model
    ids = [rt.device.index] if rt.device.type == "cuda" else None
    return model, DistributedDataParallel(model, device_ids=ids)


def train_resolutions(cfg: Config) -> list[int]:
    """The training resolution of each epoch (progressive resizing, rn50.data.schedule)."""
    from rn50.data.schedule import resolution_at

    return [resolution_at(e, cfg.data) for e in range(1, cfg.train.epochs + 1)]
