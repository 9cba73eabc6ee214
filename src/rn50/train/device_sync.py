"""Waiting for the device: the one `synchronize`, in a module that imports nothing of rn50's,
so that train/runtime.py (which re-exports it) and train/compiled.py (which runtime imports)
both use it without an import circle."""

import torch


def synchronize(device: torch.device) -> None:
    """Wait until `device` has run the work queued on it (CUDA runs it asynchronously, so a
    clock read without this measures the queueing); nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
