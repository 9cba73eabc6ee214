"""The augmentation switches (rn50.data.augment, the repeated-augmentation sampler) against
torchvision's own transforms for the same generator state, in every decode mode; each switch
trains on the demo data."""

import re

import pytest
import torch
from torch import nn
from torchvision.transforms import InterpolationMode, v2

from rn50.config import DataConfig, load_config
from rn50.data import decode, gpu
from rn50.data.augment import BatchAugment, batch_seed
from rn50.data.batch import normalize
from rn50.data.image import load_rgb
from rn50.data.layout import find_dataset
from rn50.data.loader import ImageDataset, ShardedSampler, sample_seed
from rn50.data.photos import write_imagenet_like
from rn50.data.pipeline import make_loader, transforms_for
from rn50.errors import ConfigError
from rn50.train.loop import Trainer
from tests.conftest import demo48_config, kill_and_resume_like_a_straight_run

CPU = torch.device("cpu")
POLICIES = ("ta_wide", "randaugment", "autoaugment")
R = 64  # crop side of the pixel tests
SEEDS = [sample_seed(3, 1, p) for p in range(1, 9)]


def torchvision_policy(name: str) -> v2.Transform:
    """What references/classification/presets.py builds for --auto-augment `name` (its
    --interpolation default bilinear, --ra-magnitude 9)."""
    bilinear = InterpolationMode.BILINEAR
    return {
        "ta_wide": lambda: v2.TrivialAugmentWide(interpolation=bilinear),
        "randaugment": lambda: v2.RandAugment(magnitude=9, interpolation=bilinear),
        "autoaugment": lambda: v2.AutoAugment(
            v2.AutoAugmentPolicy.IMAGENET, interpolation=bilinear
        ),
    }[name]()


def next_seed() -> int:
    """The augmentation seed a sample draws after its crop and flip (rn50.data.seeds)."""
    return int(torch.randint(0, 2**62, (1,)).item())


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = write_imagenet_like(tmp_path_factory.mktemp("aug-photos"), 8, classes=2)
    return [path for path, _ in find_dataset(root).train]


def sample(transform, read, path: str, seed: int):
    """One training sample as a worker makes it (ImageDataset seeds the generator)."""
    image, _, _ = ImageDataset([(path, 0)], transform, read)[(0, seed)]
    return image


@pytest.mark.parametrize("name", POLICIES)
def test_pil_mode_is_torchvisions_preset(photos, name):
    # ClassificationPresetTrain's order: RandomResizedCrop, flip, (to uint8 tensor), policy;
    # between the flip and the policy rn50 draws the policy's seed from the sample's stream.
    _, transform, _ = transforms_for("pil", True, R, 0.08, True, auto_augment=name)
    changed = 0
    for path, seed in zip(photos, SEEDS, strict=False):
        ours = sample(transform, load_rgb, path, seed)
        torch.manual_seed(seed)
        crop = v2.Compose(
            [v2.RandomResizedCrop(R, antialias=True), v2.RandomHorizontalFlip(), v2.PILToTensor()]
        )(load_rgb(path))
        torch.manual_seed(next_seed())
        theirs = torchvision_policy(name)(crop)
        assert ours.dtype == torch.uint8 and torch.equal(ours, theirs), (path, seed)
        changed += not torch.equal(ours, crop)
    assert changed >= 4  # the policy did something to most crops


@pytest.mark.parametrize("name", POLICIES)
def test_cpu_mode_applies_the_policy_to_its_crop(photos, name):
    _, plain, _ = transforms_for("cpu", True, R)
    _, augmented, _ = transforms_for("cpu", True, R, auto_augment=name)
    for path, seed in zip(photos, SEEDS, strict=False):
        data = decode.read_bytes(path)
        torch.manual_seed(seed)
        crop = plain(data)
        torch.manual_seed(next_seed())
        theirs = torchvision_policy(name)(crop)
        assert torch.equal(sample(augmented, decode.read_bytes, path, seed), theirs)


def gpu_sample(prep, path: str, seed: int) -> torch.Tensor:
    item = ImageDataset([(path, 0)], prep, decode.read_bytes)[(0, seed)]
    return gpu.decode_batch(gpu.collate_encoded([item]), CPU).images[0]


@pytest.mark.parametrize("name", POLICIES)
def test_gpu_mode_on_cpu_applies_the_cpu_modes_policy(photos, name):
    # Same op, magnitude and seed as the cpu mode; the crops under it differ by the resize's
    # rounding (a level or two, tests/data/test_gpu_path.py), and so the augmented pixels.
    # At 224 px: smaller crops of these photos are DCT-scaled by the cpu mode's decoder and
    # differ more (measured: 3 levels on average at 64 px, 0.2 at 224).
    _, cpu, _ = transforms_for("cpu", True, 224, auto_augment=name)
    _, plain, _ = transforms_for("gpu", True, 224)
    _, prep, _ = transforms_for("gpu", True, 224, auto_augment=name)
    diffs, control = [], []
    for path, seed in zip(photos, SEEDS, strict=False):
        data = decode.read_bytes(path)
        torch.manual_seed(seed)
        encoded = prep(data)
        torch.manual_seed(seed)
        decode.FastTrainTransform(224)(data)
        cpu_seed = next_seed()  # what the cpu mode draws after the same crop and flip
        assert encoded.augment == (name, cpu_seed)
        ours = gpu_sample(prep, path, seed)
        crop = gpu_sample(plain, path, seed)
        torch.manual_seed(cpu_seed)
        assert torch.equal(ours, torchvision_policy(name)(crop))
        expected = sample(cpu, decode.read_bytes, path, seed)
        diffs.append((ours.int() - expected.int()).abs().float().mean())
        control.append((ours.int() - sample(cpu, decode.read_bytes, path, seed + 1).int())
                       .abs().float().mean())
    # Measured: 0.06 to 1.3 levels on average against 14 to 110 for another seed's sample.
    assert all(d < 2 and c > 5 * d for d, c in zip(diffs, control, strict=True))


def test_gpu_and_cpu_loaders_give_the_same_augmented_batches(tmp_path):
    root = write_imagenet_like(tmp_path, 8, classes=2)
    samples = find_dataset(root).train
    out = {}
    for mode in ("cpu", "gpu"):
        cfg = DataConfig(decode=mode, resolution=224, workers=0, auto_augment="ta_wide")
        loader = make_loader(cfg, samples, train=True, batch_size=8, device=CPU, seed=5)
        loader.sampler.set_epoch(2)
        out[mode] = next(iter(loader))
    assert torch.equal(out["cpu"].targets, out["gpu"].targets)
    diff = (out["cpu"].images.int() - out["gpu"].images.int()).abs().float()
    assert diff.mean() < 2


def test_the_sample_stream_is_the_same_with_workers(tmp_path):
    root = write_imagenet_like(tmp_path, 8, classes=2)
    samples = find_dataset(root).train
    out = []
    for workers in (0, 2):
        cfg = DataConfig(resolution=R, workers=workers, auto_augment="ta_wide")
        loader = make_loader(cfg, samples, train=True, batch_size=4, device=CPU, seed=5)
        loader.sampler.set_epoch(1)
        out.append([b.images for b in loader])
    assert all(torch.equal(a, b) for a, b in zip(*out, strict=True))


def batch(n: int = 8, res: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, res, res), dtype=torch.uint8, generator=g)
    return normalize(images), torch.randint(0, 10, (n,), generator=g)


def test_random_erasing_is_torchvisions_per_image():
    images, labels = batch()
    ours, targets = BatchAugment(0.5, 0, 0, 10)(images.clone(), labels, 1234)
    assert targets is labels  # no mixing: the labels as they were
    torch.manual_seed(1234)
    erase = v2.RandomErasing(p=0.5)  # presets.py's: after Normalize, value 0
    theirs = torch.stack([erase(image) for image in images])
    assert torch.equal(ours, theirs)
    erased = [i for i in range(8) if not torch.equal(ours[i], images[i])]
    assert 1 <= len(erased) <= 7
    for i in erased:  # the box is the mean colour: 0 after normalization
        changed = ours[i] != images[i]
        assert (ours[i][changed] == 0).all() and changed.sum() >= 0.02 * 32 * 32


@pytest.mark.parametrize(
    "alphas", [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)], ids=["mixup", "cutmix", "both"]
)
def test_mixup_cutmix_are_torchvisions(alphas):
    mixup, cutmix = alphas
    choices = []
    if mixup:
        choices.append(v2.MixUp(alpha=mixup, num_classes=10))
    if cutmix:
        choices.append(v2.CutMix(alpha=cutmix, num_classes=10))
    for seed in range(6):
        images, labels = batch(seed=seed)
        ours = BatchAugment(0, mixup, cutmix, 10)(images.clone(), labels, seed)
        torch.manual_seed(seed)
        theirs = v2.RandomChoice(choices)(images.clone(), labels)  # train.py's collate_fn
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
        targets = ours[1]
        assert targets.shape == (8, 10) and torch.allclose(targets.sum(1), torch.ones(8))
        # Each row mixes the image's label and its neighbour's (rolled by one), lam + 1 - lam.
        own = targets.gather(1, labels.view(-1, 1)).squeeze(1)
        other = targets.gather(1, labels.roll(1).view(-1, 1)).squeeze(1)
        same = labels == labels.roll(1)
        assert torch.allclose(torch.where(same, own, own + other), torch.ones(8))


def test_mixup_by_hand():
    images, labels = batch(n=4)
    out, targets = BatchAugment(0, 0.2, 0, 10)(images.clone(), labels, 7)
    lam = float(targets[0, labels[0]]) if labels[0] != labels[3] else None
    if lam is None:
        pytest.skip("neighbours share a label")
    assert torch.allclose(out, lam * images + (1 - lam) * images.roll(1, 0), atol=1e-5)


def test_label_smoothing_applies_to_soft_targets():
    # torchvision's criterion: CrossEntropyLoss(label_smoothing) on MixUp's soft targets,
    # which smooths them as (1 - eps) x targets + eps / classes.
    logits = torch.randn(4, 10)
    images, labels = batch(n=4)
    _, soft = BatchAugment(0, 0.2, 1.0, 10)(images, labels, 3)
    eps = 0.1
    expected = -(((1 - eps) * soft + eps / 10) * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(nn.CrossEntropyLoss(label_smoothing=eps)(logits, soft), expected)


def test_erasing_and_mixing_do_not_depend_on_how_a_step_is_split():
    # 4 micro-batches a step: 2 ranks x 2 accumulated, 4 ranks x 1 or 1 rank x 4.
    steps = [batch(n=4, seed=s) for s in range(4)]
    aug = BatchAugment(0.5, 0.2, 1.0, 10)

    def run(world: int) -> list:
        accum = 4 // world
        out = []
        for rank in range(world):
            mine = [(x.clone(), y) for x, y in steps[rank * accum : (rank + 1) * accum]]
            out += aug.step(mine, seed=9, epoch=2, step=3, rank=rank, world=world)
        return out

    for a, b in zip(run(1), run(2), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for a, b in zip(run(1), run(4), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # Step 3's first micro-batch is the epoch's 8th (from 0): its seed.
    x, y = steps[0]
    assert torch.equal(run(1)[0][0], aug(x.clone(), y, batch_seed(9, 2, 8))[0])


def ra_epoch(n, reps, world, accum, batch_size, seed=0, epoch=1):
    """{rank: [(index, seed), ...]} of one epoch."""
    out = {}
    for rank in range(world):
        s = ShardedSampler(n, True, seed, rank, world, batch_size, accum, reps=reps)
        s.set_epoch(epoch)
        out[rank] = list(s)
    return out


def test_ra_sampler_repeats_each_image_reps_times_over_all_ranks():
    n, reps = 64, 4
    epoch = ra_epoch(n, reps, world=2, accum=2, batch_size=4)
    seen = [i for rank in epoch.values() for i, _ in rank]
    assert len(seen) == n  # the epoch keeps the dataset's length
    counts = torch.bincount(torch.tensor(seen), minlength=n)
    assert sorted(set(counts.tolist())) == [0, reps] and (counts == reps).sum() == n // reps
    seeds = [s for rank in epoch.values() for _, s in rank]
    assert len(set(seeds)) == n  # every copy its own crop
    # The copies of an image are in one step, one per micro-batch (2 ranks x 2 accumulated).
    for rank, items in epoch.items():
        for micro in range(0, len(items), 4):
            assert len({i for i, _ in items[micro : micro + 4]}) == 4, (rank, micro)
    step_images = [[] for _ in range(n // 16)]
    for items in epoch.values():
        for k, (i, _) in enumerate(items):
            step_images[k // 8].append(i)
    for images in step_images:
        assert all(images.count(i) == reps for i in images)


def test_ra_sampler_deals_like_torchvisions_rasampler():
    # references/classification/sampler.py: indices = [i for i in perm for _ in range(reps)],
    # rank r takes indices[r::world], then its first num_selected_samples; rn50's permutation
    # is its own (seeded by seed and epoch), its cut whole global steps.
    n, reps, world, b = 60, 3, 4, 3
    epoch = ra_epoch(n, reps, world=world, accum=1, batch_size=b, seed=2, epoch=5)
    g = torch.Generator().manual_seed(sample_seed(2, 5, 0))
    perm = torch.randperm(n, generator=g).tolist()
    repeated = [i for i in perm for _ in range(reps)]
    share = n // (world * b) * b
    for rank in range(world):
        assert [i for i, _ in epoch[rank]] == repeated[rank::world][:share]


def test_ra_sampler_with_a_step_no_multiple_of_reps_cuts_only_the_last_image():
    epoch = ra_epoch(50, 3, world=1, accum=1, batch_size=8)  # 48 positions: 16 images x 3
    counts = torch.bincount(torch.tensor([i for i, _ in epoch[0]])).tolist()
    assert sorted(c for c in counts if c) == [3] * 16
    epoch = ra_epoch(50, 4, world=1, accum=1, batch_size=10)  # 50 positions: 12 x 4, 1 x 2
    counts = torch.bincount(torch.tensor([i for i, _ in epoch[0]])).tolist()
    assert sorted(c for c in counts if c) == [2] + [4] * 12


def test_ra_sampler_resumes_mid_epoch_exactly():
    for rank in range(2):
        s = ShardedSampler(64, True, 7, rank, 2, batch=4, accum=2, reps=4)
        s.set_epoch(3)
        whole = list(s)
        for start in (1, 8, 13):
            s.set_epoch(3, start=start)
            assert list(s) == whole[start:] and len(s) == len(whole) - start


def test_ra_reps_1_is_the_plain_sampler():
    a = ShardedSampler(40, True, 1, 1, 2, batch=4, accum=2)
    b = ShardedSampler(40, True, 1, 1, 2, batch=4, accum=2, reps=1)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b) and len(set(i for i, _ in a)) == len(list(a))


def test_config_checks_the_new_keys():
    cfg = load_config(None, ["data.auto_augment=ta_wide", "data.ra_reps=4"])
    assert (cfg.data.auto_augment, cfg.data.ra_reps) == ("ta_wide", 4)
    for bad, words in [
        ("data.auto_augment=trivial", "must be one of none, ta_wide, randaugment, autoaugment"),
        ("data.random_erasing=1.5", "must be in [0, 1]"),
        ("data.mixup_alpha=-1", "must be 0 (off) or more"),
        ("data.cutmix_alpha=nan", "must be a finite number"),
        ("data.ra_reps=0", "must be at least 1 (1: off)"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            load_config(None, [bad])


SWITCHES = {
    "ta_wide": {"data": {"auto_augment": "ta_wide"}},
    "randaugment": {"data": {"auto_augment": "randaugment"}},
    "autoaugment": {"data": {"auto_augment": "autoaugment"}},
    "random erasing": {"data": {"random_erasing": 0.5}},
    "mixup": {"data": {"mixup_alpha": 0.2}},
    "cutmix": {"data": {"cutmix_alpha": 1.0}},
    "ra_reps": {"data": {"ra_reps": 4}},
    "all, decode gpu (on cpu)": {"data": {"decode": "gpu", "auto_augment": "ta_wide",
                                          "random_erasing": 0.5, "mixup_alpha": 0.2,
                                          "cutmix_alpha": 1.0, "ra_reps": 4}},
    "all, decode pil, label smoothing": {
        "data": {"decode": "pil", "auto_augment": "ta_wide", "random_erasing": 0.5,
                 "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "ra_reps": 4},
        "train": {"label_smoothing": 0.1}},
}


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_trains(demo48, tmp_path, switch):
    sections = {k: dict(v) for k, v in SWITCHES[switch].items()}
    sections["model"] = {"arch": "resnet18"}
    sections["train"] = {"epochs": 1, "precision": "bf16", "progress": "off",
                         **sections.get("train", {})}
    cfg = demo48_config(demo48, tmp_path / "run", **sections)
    trainer = Trainer(cfg)
    record = trainer.fit()
    assert record["epoch"] == 1 and record["train_images"] == 48 and record["step"] == 6
    assert torch.isfinite(torch.tensor([record["train_loss"], record["val_loss"]])).all()
    # Top-1 counts hits against the images' own labels: a whole number of the 48.
    hits = record["train_top1"] * 48 / 100
    assert hits == pytest.approx(round(hits))


def test_a_run_with_every_switch_resumes_mid_epoch_exactly(demo48, tmp_path, monkeypatch):
    """Killed in epoch 2 and resumed from last.pth: the same metrics and weights as a run
    never stopped, so the sampler, the policies, the erasing and the mixing all resumed at
    the same draws."""
    sections = {
        "data": {"auto_augment": "ta_wide", "random_erasing": 0.5, "mixup_alpha": 0.2,
                 "cutmix_alpha": 1.0, "ra_reps": 3},
        "model": {"arch": "resnet18"},
        "train": {"save_every_steps": 2, "progress": "off"},
    }
    kill_and_resume_like_a_straight_run(monkeypatch, demo48, tmp_path, sections)
