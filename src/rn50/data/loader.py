"""Datasets, the sharded resumable sampler and the DataLoaders built from them.

Every random choice of an augmentation is seeded from (seed, epoch, position in the epoch),
so a run's data stream does not depend on the number of workers, and a resumed run sees
exactly what an uninterrupted one would have.
"""

import signal
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rn50.data.transforms import load_rgb

Sample = tuple[str, int]  # (file path, class index)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A distinct 63-bit seed for every (run seed, epoch, position in the epoch)."""
    mixed = (seed * 1_000_003 + epoch) * 2_147_483_647 + position
    return mixed % (2**63 - 1)


class ImageDataset(Dataset):
    """Decodes one file and applies `transform`; indexed by (sample index, augmentation seed)."""

    def __init__(self, samples: Sequence[Sample], transform: Callable):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor | None, int, str]:
        """(image, label, path); image is None when the file cannot be decoded."""
        index, seed = key
        path, label = self.samples[index]
        # torchvision's transforms draw from the default CPU generator; seeding it here makes
        # each sample's crop and flip a function of (seed, epoch, position) alone.
        torch.default_generator.manual_seed(seed)
        try:
            return self.transform(load_rgb(path)), label, path
        except Exception:  # truncated, empty, not an image, decompression bomb, ...
            # One bad file out of 1.28 million must not end a run: the batch goes on
            # without it and the training loop counts and names it.
            return None, label, path


class Batch(NamedTuple):
    images: torch.Tensor  # uint8 (N, 3, H, W)
    targets: torch.Tensor  # int64 (N,)
    bad: list[str]  # files of this batch that could not be decoded (left out)


def collate_skipping_bad(items: list[tuple[torch.Tensor | None, int, str]]) -> Batch:
    """Stack the decodable samples; list the paths of those that were not."""
    good = [(img, label) for img, label, _ in items if img is not None]
    bad = [path for img, _, path in items if img is None]
    if not good:
        return Batch(
            torch.empty(0, 3, 0, 0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), bad
        )
    return Batch(
        torch.stack([img for img, _ in good]),
        torch.tensor([label for _, label in good], dtype=torch.long),
        bad,
    )


def _ignore_signals_in_worker(_worker_id: int) -> None:
    # Ctrl-C or a SIGTERM to the process group must reach only the training process, which
    # finishes its step, saves and shuts the workers down; a worker killed mid-batch would
    # instead fail the next batch fetch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class ShardedSampler(Sampler):
    """This rank's share of one epoch, as (sample index, augmentation seed) pairs.

    Training (`shuffle=True`): a permutation drawn from (seed, epoch), cut to a multiple of
    `world` so every rank takes the same number of steps, then dealt round-robin.
    Validation (`shuffle=False`): files in order, dealt round-robin with no padding, so every
    image is counted exactly once across ranks.
    `start` skips the first positions of this rank's share without touching their files.
    """

    def __init__(self, n: int, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1):
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.n, self.world))
        g = torch.Generator()
        g.manual_seed(sample_seed(self.seed, self.epoch, 0))
        order = torch.randperm(self.n, generator=g)
        order = order[: (self.n // self.world) * self.world]
        return order[self.rank :: self.world].tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order()
        for pos in range(self.start, len(order)):
            # Seed by global position so the augmentation of a sample does not depend on rank.
            yield order[pos], sample_seed(self.seed, self.epoch, pos * self.world + self.rank + 1)

    def __len__(self) -> int:
        share = (
            (self.n // self.world) if self.shuffle else len(range(self.rank, self.n, self.world))
        )
        return max(share - self.start, 0)


def build_loader(
    samples: Sequence[Sample],
    transform: Callable,
    batch_size: int,
    workers: int,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over `samples`; call `loader.sampler.set_epoch(epoch)` before each epoch.

    Training drops the last partial batch (BatchNorm needs more than one image per batch);
    validation keeps every image.
    """
    sampler = ShardedSampler(len(samples), shuffle=train, seed=seed, rank=rank, world=world)
    return DataLoader(
        ImageDataset(samples, transform),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=train,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
        collate_fn=collate_skipping_bad,
        worker_init_fn=_ignore_signals_in_worker,
    )
