"""Datasets, the sharded resumable sampler and the DataLoaders built from them.

Every random choice of an augmentation is seeded from (seed, epoch, position in the epoch),
so a run's data stream does not depend on the number of workers, and a resumed run sees
exactly what an uninterrupted one would have.
"""

import signal
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from rn50.data.image import LargeImageWarning, load_rgb
from rn50.data.seeds import seeded

Sample = tuple[str, int]  # (file path, class index)
PREFETCH_FACTOR = 4  # batches each loader worker prepares ahead of the training loop


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A distinct 63-bit seed for every (run seed, epoch, position in the epoch)."""
    mixed = (seed * 1_000_003 + epoch) * 2_147_483_647 + position
    return mixed % (2**63 - 1)


class ImageDataset(Dataset):
    """Reads one file with `read` (default: decode to a PIL RGB image), applies `transform`;
    indexed by (sample index, augmentation seed)."""

    def __init__(
        self, samples: Sequence[Sample], transform: Callable, read: Callable[[str], Any] = load_rgb
    ):
        self.samples = samples
        self.transform = transform
        self.read = read

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor | None, int, str]:
        """(image, label, path); image is None when the file cannot be decoded."""
        index, seed = key
        path, label = self.samples[index]
        # torchvision's transforms draw from the default CPU generator; seeding it here makes
        # each sample's crop and flip a function of (seed, epoch, position) alone.
        with seeded(seed), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LargeImageWarning)
            # Pillow's own, from a transform (PIL's crop checks its box against the limit too).
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            try:
                item = self.transform(self.read(path)), label, path
            except Exception:  # truncated, empty, not an image, decompression bomb, ...
                # One bad file out of 1.28 million must not end a run: the batch goes on
                # without it and the training loop counts and names it.
                item = None, label, path
        report_warnings(caught, path)
        return item


def report_warnings(caught: list[warnings.WarningMessage], path: str) -> None:
    """Say what reading `path` warned about: a large image once, in rn50's words and with the
    file's name (Pillow's own DecompressionBombWarning names neither); any other warning as
    Python would have shown it."""
    large = (LargeImageWarning, Image.DecompressionBombWarning)
    ours = [str(w.message) for w in caught if issubclass(w.category, LargeImageWarning)]
    if ours or any(issubclass(w.category, large) for w in caught):
        limit = Image.MAX_IMAGE_PIXELS or 0
        text = ours[0] if ours else (
            f"over Pillow's decompression-bomb threshold of {limit / 1e6:.0f} MP; read anyway"
        )
        print(f"rn50: warning: {path}: {text}", file=sys.stderr, flush=True)
    for w in caught:
        if not issubclass(w.category, large):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


class Batch(NamedTuple):
    """One batch of the loader: uint8 images (N x 3 x H x W), int64 targets (N), and the files left
    out of it as unreadable."""
    images: torch.Tensor  # uint8 (N, 3, H, W); channels-last in memory from the cpu decoder
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
        stack_images([img for img, _ in good]),
        torch.tensor([label for _, label in good], dtype=torch.long),
        bad,
    )


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """(3, H, W) images -> (N, 3, H, W), channels-last in memory when they all are.

    The fast decoder (rn50.data.decode) resizes in NHWC; torch.stack would transpose each
    image into NCHW, a slow strided copy, only for the device to transpose the batch back
    (the model runs channels-last). Stacking the HWC views is a plain copy.
    """
    if all(img.permute(1, 2, 0).is_contiguous() for img in images):
        return torch.stack([img.permute(1, 2, 0) for img in images]).permute(0, 3, 1, 2)
    return torch.stack(images)


def _ignore_signals_in_worker(_worker_id: int) -> None:
    # Ctrl-C or a SIGTERM to the process group must reach only the training process, which
    # finishes its step, saves and shuts the workers down; a worker killed mid-batch would
    # instead fail the next batch fetch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class ShardedSampler(Sampler):
    """This rank's share of one epoch, as (sample index, augmentation seed) pairs.

    Training (`shuffle=True`): a permutation drawn from (seed, epoch), cut to whole global
    steps of `world x accum x batch` images. A global step is split into `world x accum`
    micro-batches of `batch` consecutive positions, and rank r takes micro-batches
    `r*accum .. r*accum+accum-1`. So every micro-batch holds the same images with the same
    crops however the step is split: 2 ranks x 1 micro-batch see exactly the batches that
    1 rank x 2 accumulated micro-batches see (what BatchNorm computes depends on it).
    Validation (`shuffle=False`): files in order, dealt round-robin with no padding, so every
    image is counted exactly once across ranks.
    `start` skips the first positions of this rank's share without touching their files.

    Repeated augmentation (`reps` > 1, training only; torchvision's RASampler, from
    references/classification/sampler.py): the permutation's images each repeated `reps`
    times in a row, a list dealt over the micro-batches of each global step round-robin (item
    j of a step goes to micro-batch j mod world x accum), so the copies of an image land in
    one step, on different devices (or accumulated micro-batches) as far as there are; with
    accum 1 that is RASampler's dealing over ranks exactly. As RASampler, the epoch keeps its
    length (the whole global steps of the training set), so it holds the first 1/reps of the
    permutation: each of its images `reps` times, but the last when a global step is no
    multiple of `reps` and the epoch's end cuts its copies short. Each copy has a position,
    hence its own seed and crop.
    """

    def __init__(
        self,
        n: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        batch: int = 1,
        accum: int = 1,
        reps: int = 1,
    ):
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world
        self.batch, self.accum, self.reps = batch, accum, reps
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Deal epoch `epoch`'s order, going on after its first `start` samples (all ranks
        together) when resuming mid-epoch."""
        self.epoch, self.start = epoch, start

    def _share(self) -> int:
        if not self.shuffle:
            return len(range(self.rank, self.n, self.world))
        step = self.world * self.accum * self.batch  # images per global step
        return (self.n // step) * self.accum * self.batch

    def _positions(self) -> torch.Tensor:
        """Positions in the epoch's global order of this rank's share, in the order it reads
        them."""
        q = torch.arange(self._share())
        if not self.shuffle:
            return q * self.world + self.rank
        micro, within = q // self.batch, q % self.batch
        step, m = micro // self.accum, micro % self.accum
        return ((step * self.world + self.rank) * self.accum + m) * self.batch + within

    def _repeated(self, positions: torch.Tensor) -> torch.Tensor:
        """Where in the permutation the images at `positions` are: the positions themselves,
        or with repeated augmentation the index in the repeated list over the dealing."""
        if self.reps <= 1:
            return positions
        micro_batches = self.world * self.accum  # per global step
        step_images = micro_batches * self.batch
        step, q = positions // step_images, positions % step_images
        micro, within = q // self.batch, q % self.batch
        dealt = (step * self.batch + within) * micro_batches + micro
        return dealt // self.reps

    def __iter__(self) -> Iterator[tuple[int, int]]:
        positions = self._positions()
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(sample_seed(self.seed, self.epoch, 0))
            perm = torch.randperm(self.n, generator=g)
            order = perm[self._repeated(positions)].tolist()
        else:
            order = positions.tolist()
        positions = positions.tolist()
        for i in range(self.start, len(order)):
            # Seeded by global position: a sample's crop does not depend on rank or world size.
            yield order[i], sample_seed(self.seed, self.epoch, positions[i] + 1)

    def __len__(self) -> int:
        return max(self._share() - self.start, 0)


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
    accum: int = 1,
    read: Callable[[str], Any] = load_rgb,
    collate: Callable = collate_skipping_bad,
    reps: int = 1,
) -> DataLoader:
    """A DataLoader over `samples`; call `loader.sampler.set_epoch(epoch)` before each epoch.

    Training yields micro-batches of `batch_size`, `accum` of them per optimizer step, and
    only whole global steps (BatchNorm needs more than one image per batch); validation keeps
    every image. `read` turns a path into what `transform` takes (a PIL image by default, file
    bytes for the fast decoders, see rn50.data.pipeline); `collate` makes the batch. `reps`:
    repeated augmentation (training only; see ShardedSampler).
    """
    sampler = ShardedSampler(
        len(samples), train, seed, rank, world, batch=batch_size if train else 1, accum=accum,
        reps=reps if train else 1,
    )
    return DataLoader(
        ImageDataset(samples, transform, read),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=train,
        persistent_workers=False,
        prefetch_factor=PREFETCH_FACTOR if workers > 0 else None,
        collate_fn=collate,
        worker_init_fn=_ignore_signals_in_worker,
    )
