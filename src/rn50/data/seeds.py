"""torch's default CPU generator, seeded for one sample or one batch at a time.

torchvision's transforms draw from that generator, which is one per process: the gpu mode's
decode thread (rn50.data.gpu), the samples a loader without workers reads, and the training
loop's batch augmentation (rn50.data.augment) take turns on it, each with its own seed.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_GENERATOR_LOCK = threading.RLock()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's default CPU generator seeded by `seed`, one thread at a time
    (nested blocks in one thread are fine), and give the generator back its state after
    (torch.random.fork_rng)."""
    with _GENERATOR_LOCK, torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def draw_seed() -> int:
    """The next draw of the default generator, as a seed (0 <= seed < 2**62)."""
    return int(torch.randint(0, 2**62, (1,)).item())
