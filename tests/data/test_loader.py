import torch
from PIL import Image

from rn50.data.batch import normalize
from rn50.data.loader import ShardedSampler, build_loader
from rn50.data.transforms import EvalTransform, TrainTransform, eval_resize_size


def test_train_shards_are_disjoint_equal_and_seeded_by_epoch():
    n, world = 11, 3
    shards = []
    for rank in range(world):
        s = ShardedSampler(n, shuffle=True, seed=5, rank=rank, world=world)
        s.set_epoch(2)
        shards.append([i for i, _ in s])
    assert [len(x) for x in shards] == [3, 3, 3]  # 11 // 3 each: every rank takes equal steps
    flat = [i for x in shards for i in x]
    assert len(set(flat)) == 9
    again = ShardedSampler(n, shuffle=True, seed=5, rank=0, world=world)
    again.set_epoch(2)
    assert [i for i, _ in again] == shards[0]
    again.set_epoch(3)
    assert [i for i, _ in again] != shards[0]


def test_val_shards_count_every_image_exactly_once():
    n, world = 10, 4
    seen = []
    for rank in range(world):
        seen += [i for i, _ in ShardedSampler(n, shuffle=False, rank=rank, world=world)]
    assert sorted(seen) == list(range(10))  # no padding duplicates, nothing dropped


def test_start_skips_positions_with_the_same_seeds():
    full = ShardedSampler(20, shuffle=True, seed=1)
    full.set_epoch(4)
    part = ShardedSampler(20, shuffle=True, seed=1)
    part.set_epoch(4, start=7)
    assert list(part) == list(full)[7:]
    assert len(part) == 13


def test_augmentation_seeds_differ_per_position_and_epoch():
    s = ShardedSampler(50, shuffle=True, seed=0)
    seeds = set()
    for epoch in (1, 2):
        s.set_epoch(epoch)
        seeds |= {seed for _, seed in s}
    assert len(seeds) == 100


def test_eval_transform_resize_then_center_crop():
    assert eval_resize_size(224, 0.875) == 256
    img = Image.new("RGB", (500, 375), (10, 20, 30))
    out = EvalTransform(224, 0.875)(img)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    assert out[:, 0, 0].tolist() == [10, 20, 30]


def test_train_transform_shape_and_flip_switch():
    # Left half black, right half white: a flip is visible in the mean of the left column.
    img = Image.new("RGB", (64, 64), (0, 0, 0))
    img.paste((255, 255, 255), (32, 0, 64, 64))
    no_flip = TrainTransform(32, min_scale=1.0, hflip=False)
    lefts = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out = no_flip(img)
        assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
        lefts.add(int(out[0, :, 0].float().mean() > 127))
    assert lefts == {0}
    flip = TrainTransform(32, min_scale=1.0, hflip=True)
    lefts = set()
    for seed in range(20):
        torch.manual_seed(seed)
        lefts.add(int(flip(img)[0, :, 0].float().mean() > 127))
    assert lefts == {0, 1}


def test_loader_batches_are_uint8_and_normalize_to_unit_scale(tiny_data):
    from rn50.data.layout import find_dataset

    index = find_dataset(tiny_data)
    loader = build_loader(index.val, EvalTransform(32), batch_size=5, workers=0, train=False)
    batches = list(loader)
    assert [len(b.targets) for b in batches] == [5, 5, 2]  # validation keeps the last partial batch
    assert all(b.bad == [] for b in batches)
    x = normalize(batches[0].images)
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    white = normalize(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8), channels_last=False)
    expected = [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    assert torch.allclose(white.flatten(), torch.tensor(expected))


def micro_batches(n: int, world: int, accum: int, batch: int) -> list[list[tuple[int, int]]]:
    """Every micro-batch of an epoch as (index, seed) lists, in global order: step by step,
    rank r's accum micro-batches at r*accum .. r*accum+accum-1."""
    shares = []
    for rank in range(world):
        s = ShardedSampler(n, shuffle=True, seed=3, rank=rank, world=world, batch=batch,
                           accum=accum)  # fmt: skip
        s.set_epoch(1)
        items = list(s)
        shares.append([items[i : i + batch] for i in range(0, len(items), batch)])
    steps = len(shares[0]) // accum
    return [
        shares[rank][step * accum + m]
        for step in range(steps)
        for rank in range(world)
        for m in range(accum)
    ]


def test_micro_batches_do_not_depend_on_how_a_global_step_is_split():
    # 4 micro-batches of 3 a step: 1 rank x 4, 2 ranks x 2, 4 ranks x 1. 38 images: 3 steps.
    splits = [micro_batches(38, world, 4 // world, 3) for world in (1, 2, 4)]
    assert splits[0] == splits[1] == splits[2]
    assert len(splits[0]) == 12 and all(len(b) == 3 for b in splits[0])
    flat = [i for b in splits[0] for i, _ in b]
    assert len(set(flat)) == 36  # whole steps only, no image twice
    # A single process without accumulation reads the same stream, batch after batch.
    plain = ShardedSampler(38, shuffle=True, seed=3)
    plain.set_epoch(1)
    assert [x for b in splits[0] for x in b] == list(plain)[:36]


def test_resume_position_is_global_images_over_world():
    # 1 step of 8 images done: 2 ranks skip 4 each, 1 process skips 8 - the same images remain.
    rest = {}
    for world in (1, 2):
        seen = []
        for rank in range(world):
            s = ShardedSampler(24, shuffle=True, seed=0, rank=rank, world=world, batch=4,
                               accum=2 // world)  # fmt: skip
            s.set_epoch(5, start=8 // world)
            seen += list(s)
        rest[world] = sorted(seen)
    assert rest[1] == rest[2] and len(rest[1]) == 16
