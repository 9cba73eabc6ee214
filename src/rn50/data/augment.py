"""The accuracy tools of torchvision's classification references, each off by default:
automatic augmentation (`data.auto_augment`), random erasing (`data.random_erasing`), MixUp
and CutMix (`data.mixup_alpha`, `data.cutmix_alpha`). The repeated-augmentation sampler
(`data.ra_reps`) is rn50.data.loader.ShardedSampler's. Each tool is torchvision.transforms.v2's
own class, called as references/classification (presets.py, train.py) calls it.

Where each one runs:

- Automatic augmentation works on the uint8 crop after RandomResizedCrop and the flip, as
  ClassificationPresetTrain does: in the worker for the `cpu` and `pil` modes, on the device
  (rn50.data.gpu.decode_batch) for `gpu`, where the worker has no pixels.
- Random erasing follows Normalize in torchvision and fills the box with 0: the mean colour,
  which no uint8 pixel can hold (it is 123.675, 116.28, 103.53 in 0..255). The workers hand
  over uint8 batches (a 4x smaller copy to the device), so the erasing runs on the device,
  after rn50.data.batch.normalize, image by image, exactly as torchvision's per-image
  transform would.
- MixUp / CutMix work on the batch and its labels, as torchvision's collate_fn does, on the
  device after the erasing (`BatchAugment`). The loss then takes soft targets
  (nn.CrossEntropyLoss applies train.label_smoothing to them, as torchvision's criterion
  does); the training top-1/top-5 are counted against the images' own labels.

Randomness. torchvision's transforms draw from torch's default CPU generator. Each training
sample's crop and flip are drawn from it seeded by (seed, epoch, position)
(rn50.data.loader.ImageDataset); the next draw of that stream is the sample's augmentation
seed (rn50.data.seeds.draw_seed), and the policy is applied with the generator seeded by it. The
seed, not the generator's state, is what the gpu mode sends to the device, so the three modes
apply the same operations with the same magnitudes to each sample. Erasing and mixing draw
from a seed of (seed, epoch, the micro-batch's place in the epoch) (`batch_seed`): the same
whatever the decode mode, the number of workers, or how a step is split between devices and
accumulated micro-batches, and again after a resume.
"""

from __future__ import annotations

import functools

import torch
from torchvision.transforms import InterpolationMode, v2

from rn50.data.loader import sample_seed
from rn50.data.seeds import draw_seed, seeded


@functools.cache
def policy(name: str) -> v2.Transform | None:
    """torchvision's transform for a data.auto_augment value (None for none), with the
    arguments of references/classification/presets.py: bilinear interpolation (its
    --interpolation default), RandAugment at --ra-magnitude 9, AutoAugment's ImageNet policy.
    Raises ValueError for another name."""
    bilinear = InterpolationMode.BILINEAR
    if name == "none":
        return None
    if name == "ta_wide":
        return v2.TrivialAugmentWide(interpolation=bilinear)
    if name == "randaugment":
        return v2.RandAugment(magnitude=9, interpolation=bilinear)
    if name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=bilinear)
    raise ValueError(f"unknown data.auto_augment {name!r}")


def auto_augment(image: torch.Tensor, name: str, seed: int) -> torch.Tensor:
    """uint8 (3, H, W) on any device -> the same shape, the `name` policy applied with the
    default generator seeded by `seed` (what torchvision's transform does after
    torch.manual_seed(seed))."""
    op = policy(name)
    if op is None:
        return image
    with seeded(seed):
        return op(image)


class AutoAugmentStep:
    """The last step of a worker's train transform (cpu and pil modes): uint8 (3, R, R) ->
    the same shape, with the sample's augmentation seed drawn from its stream here."""

    def __init__(self, name: str):
        policy(name)  # a wrong name fails here, before any worker starts
        self.name = name

    def draw(self) -> tuple[str, int]:
        """(policy name, seed) of the next sample: its draw from the sample's stream, for a
        device to apply later (`auto_augment(image, *draw)`, the gpu decode mode)."""
        return self.name, draw_seed()

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return auto_augment(image, *self.draw())


def batch_seed(seed: int, epoch: int, micro_batch: int) -> int:
    """The seed of the erasing and mixing of the `micro_batch`-th micro-batch (from 0) of the
    epoch over all devices; apart from every sample's seed (rn50.data.loader.sample_seed
    takes positions from 0 up)."""
    return sample_seed(seed, epoch, -1 - micro_batch)


class BatchAugment:
    """Random erasing (each image) then MixUp or CutMix (the batch), on a normalized float
    batch on the device; None from `from_config` when all three are off.

    `__call__(images (N, 3, H, W) float, labels (N,) int64, seed)` returns (images, targets):
    targets are the labels when neither MixUp nor CutMix is on, else (N, classes) float
    probabilities (v2.MixUp/CutMix's, from one-hot labels). The images are erased in place.
    With both alphas set, v2.RandomChoice picks one per batch, as references/classification's
    get_mixup_cutmix does (it uses RandomChoice for one of them alone too, and so does this).
    """

    def __init__(
        self, random_erasing: float, mixup_alpha: float, cutmix_alpha: float, num_classes: int
    ):
        self.erase = v2.RandomErasing(p=random_erasing, inplace=True) if random_erasing else None
        mixes = []
        if mixup_alpha > 0:
            mixes.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            mixes.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        self.mix = v2.RandomChoice(mixes) if mixes else None

    @classmethod
    def from_config(cls, data, num_classes: int) -> BatchAugment | None:
        """For a DataConfig; None when random erasing, MixUp and CutMix are all off."""
        if not (data.random_erasing or data.mixup_alpha or data.cutmix_alpha):
            return None
        return cls(data.random_erasing, data.mixup_alpha, data.cutmix_alpha, num_classes)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with seeded(seed):
            if self.erase is not None:
                for image in images:  # one draw per image, as in torchvision's workers
                    self.erase(image)
            if self.mix is not None:
                images, labels = self.mix(images, labels)
        return images, labels

    def step(
        self, batches: list, seed: int, epoch: int, step: int, rank: int = 0, world: int = 1
    ) -> list:
        """This rank's micro-batches [(images, labels), ...] of optimizer step `step` (from 1)
        of `epoch`, augmented. Rank r holds micro-batches r x accum .. r x accum + accum - 1 of
        the step's world x accum (rn50.data.loader.ShardedSampler), and each is augmented with
        the seed of its place among all of them (batch_seed): the same images get the same
        erasing and mixing however the step is split between devices and accumulation."""
        accum = len(batches)
        first = ((step - 1) * world + rank) * accum
        return [
            self(images, labels, batch_seed(seed, epoch, first + i))
            for i, (images, labels) in enumerate(batches)
        ]
