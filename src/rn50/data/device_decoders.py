"""The JPEG decoders of the gpu decode mode (`data.gpu_decoder`): file bytes -> uint8
(3, H, W) RGB pixels as stored (no EXIF orientation: rn50.data.gpu turns them upright), on
the training device, a batch at a time.

- `torchvision`: `torchvision.io.decode_jpeg(list, device=...)`, nvJPEG's CUDA decoder on a
  GPU, libjpeg on a CPU (how the mode is tested without a GPU).
- `nvimgcodec`: NVIDIA's nvImageCodec (`nvidia-nvimgcodec-cu12` or `-cu13`), which can use
  the hardware JPEG engines of A100/H100/H200-class GPUs. Those engines take baseline JPEGs
  only: the decoder is given the hardware backend first and nvJPEG's CUDA backend after it,
  and nvImageCodec hands each image the hardware cannot take (progressive ones) to the next.
  Its Python package needs CUDA to load, so the tests that check it against `torchvision`
  run on a GPU (tests/test_cuda.py, benchmarks/gpu_run.sh); on a CPU device it would use its
  CPU backend.

Each decoder answers None for a file it cannot decode; the caller then tries it alone and on
the host (`decode_host`).
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from rn50.data.image import open_pil, to_rgb
from rn50.errors import ConfigError


def gpu_decoder_installed(name: str) -> bool:
    """Whether decoder `name` can be imported here (nothing is imported to find out)."""
    if name != "nvimgcodec" or "nvidia.nvimgcodec" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("nvidia.nvimgcodec") is not None
    except ImportError:  # no `nvidia` package at all (CPU, ROCm or macOS wheels of torch)
        return False


def check_gpu_decoder(name: str) -> None:
    """Raise ConfigError (one line) when `name` is not installed here."""
    if not gpu_decoder_installed(name):
        raise ConfigError(
            "data.gpu_decoder: nvimgcodec needs NVIDIA's nvImageCodec: pip install "
            "nvidia-nvimgcodec-cu12 (or -cu13, as your CUDA), or set data.gpu_decoder: torchvision"
        )


def decode_batch_on(
    name: str, datas: Sequence[torch.Tensor], device: torch.device
) -> list[torch.Tensor | None]:
    """Decode uint8 1-D file-byte tensors with decoder `name` (one of
    rn50.config.GPU_DECODERS): uint8 (3, H, W) per file on `device` (a CUDA device with its
    index; any strides), in memory of torch's allocator, None where that decoder cannot."""
    if name == "nvimgcodec":
        return _nvimgcodec(datas, device)
    return _torchvision(datas, device)


def decode_host(data: torch.Tensor) -> torch.Tensor | None:
    """uint8 (3, H, W) via PIL on the host (as stored: the caller applies the orientation),
    or None: the fallback for what a device decoder rejects."""
    try:
        with open_pil(data.numpy().tobytes()) as img:
            return torch.from_numpy(np.array(to_rgb(img))).permute(2, 0, 1)
    except Exception:  # truncated, corrupt: left out of the batch and named, like the CPU path
        return None


def _torchvision(datas: Sequence[torch.Tensor], device: torch.device) -> list:
    import torchvision.io as tio

    with warnings.catch_warnings():
        # torchvision 0.29+ deprecates its image codecs in favour of TorchCodec's; they still
        # work, and are what the torch versions rn50 supports (>= 2.4) all have.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(tio.decode_jpeg(list(datas), mode=tio.ImageReadMode.RGB, device=device))
        except (RuntimeError, ValueError):
            pass  # one bad file fails the whole batched call: find it
        out: list[torch.Tensor | None] = []
        for data in datas:
            try:
                out.append(tio.decode_jpeg(data, mode=tio.ImageReadMode.RGB, device=device))
            except (RuntimeError, ValueError):
                out.append(None)
    return out


_NVIMGCODEC: dict[str, tuple] = {}  # device -> (module, decoder, params)


def _nvimgcodec_decoder(device: torch.device):
    """(module, Decoder, DecodeParams) for `device`, made once. On CUDA: the hardware engines
    first, then nvJPEG's CUDA decoder (for what the engines do not take); on a CPU device its
    CPU backend. No EXIF orientation (rn50 applies it); interleaved RGB."""
    key = str(device)
    if key not in _NVIMGCODEC:
        from nvidia import nvimgcodec as nvi

        kinds = nvi.BackendKind
        if device.type == "cuda":
            backends = [nvi.Backend(kinds.HW_GPU_ONLY), nvi.Backend(kinds.GPU_ONLY)]
            decoder = nvi.Decoder(device_id=device.index, backends=backends)
        else:
            decoder = nvi.Decoder(backends=[nvi.Backend(kinds.CPU_ONLY)])
        params = nvi.DecodeParams(
            apply_exif_orientation=False,
            color_spec=nvi.ColorSpec.SRGB,
            sample_format=nvi.SampleFormat.I_RGB,
        )
        _NVIMGCODEC[key] = (nvi, decoder, params)
    return _NVIMGCODEC[key]


def _nvimgcodec(datas: Sequence[torch.Tensor], device: torch.device) -> list:
    nvi, decoder, params = _nvimgcodec_decoder(device)
    streams, at = [], []
    for i, data in enumerate(datas):
        try:
            streams.append(nvi.CodeStream(data.numpy()))
            at.append(i)
        except Exception:  # a header nvImageCodec cannot parse: the host fallback decides
            pass
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    images = decoder.decode(streams, params=params, cuda_stream=stream) if streams else []
    out: list[torch.Tensor | None] = [None] * len(datas)
    for i, image in zip(at, images, strict=True):
        if image is not None:
            # DLPack shares the buffer, ordered after the decode on `stream`. It is
            # nvImageCodec's allocator's, which record_stream cannot hold for the training
            # stream: copy it into torch's, and wait for the copies before it is released.
            out[i] = torch.from_dlpack(image).permute(2, 0, 1).clone()  # (H, W, 3) -> (3, H, W)
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()  # (the decode thread's, when ahead)
    return out
