"""Where this process stands among the ranks of a run (1 of 1 without torchrun)."""

import torch.distributed as dist


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0 alone prints, logs and writes files."""
    return rank() == 0
