"""The batched crop-resize-flip of the gpu decode mode against hand-computed weights, torch's
antialiased interpolate on each image alone, and PIL."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from rn50.data.resample import _chunks, aa_weights, place_batch

CPU = torch.device("cpu")


def test_weights_of_a_halving_by_hand():
    # 4 -> 2: scale 2, support 2. Output 0's centre is 1.0: inputs 0..3 weigh
    # 1 - |j + 0.5 - 1| / 2 = 0.75, 0.75, 0.25, 0 (clamped), normalized by 1.75.
    w = aa_weights([4], [2], [0], 2, 4, CPU)[0]
    expected = torch.tensor([[3, 3, 1, 0], [0, 1, 3, 3]], dtype=torch.float32) / 7
    assert torch.allclose(w, expected, atol=1e-7)


def test_weights_of_a_doubling_by_hand():
    # 2 -> 4: scale 0.5, support 1 (plain bilinear). Output 0's centre is 0.25: input 0 weighs
    # 1 - 0.25 = 0.75, input 1 1 - 1.25 < 0 -> 0; normalized that is 1. Output 1 (centre 0.75):
    # 0.75 and 0.25.
    w = aa_weights([2], [4], [0], 4, 2, CPU)[0]
    expected = torch.tensor([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], dtype=torch.float32)
    assert torch.allclose(w, expected, atol=1e-7)


@pytest.mark.parametrize("length, size", [(500, 224), (375, 160), (97, 224), (224, 224), (7, 3)])
def test_weights_equal_torch_antialiased_interpolate(length, size):
    # Resizing the identity gives the weight matrix: column j is input pixel j's response.
    # (Two columns: torch's antialiased kernel gives wrong rows for an input one pixel wide.)
    eye = torch.eye(length).reshape(length, 1, length, 1).expand(-1, -1, -1, 2)
    torch_w = F.interpolate(eye, size=(size, 2), mode="bilinear", antialias=True)
    torch_w = torch_w[:, 0, :, 0].T  # (size, length)
    ours = aa_weights([length], [size], [0], size, length + 5, CPU)[0]  # 5 padded columns
    assert torch.allclose(ours[:, :length], torch_w, atol=1e-6)
    assert torch.all(ours[:, length:] == 0)


def random_samples(n: int, seed: int):
    """n random images (20..200 px a side, smooth so that resampling matters) with random
    boxes, half resized straight to 48 px, half resized to 60x70 then centre-cropped."""
    g = torch.Generator().manual_seed(seed)

    def rand(lo, hi):
        return int(torch.randint(lo, hi, (1,), generator=g))

    images, boxes, sizes, crops, flips = [], [], [], [], []
    for k in range(n):
        height, width = rand(20, 200), rand(20, 200)
        coarse = torch.randint(0, 256, (1, 3, 6, 6), generator=g).float()
        smooth = F.interpolate(coarse, size=(height, width), mode="bilinear")[0]
        images.append(smooth.round().to(torch.uint8))
        h, w = rand(1, height + 1), rand(1, width + 1)
        boxes.append((rand(0, height - h + 1), rand(0, width - w + 1), h, w))
        sizes.append((48, 48) if k % 2 else (60, 70))
        crops.append(None if k % 2 else (6, 11, 48, 48))
        flips.append(k % 3 == 0)
    return images, boxes, sizes, crops, flips


def one_by_one(image, box, size, crop, flip) -> torch.Tensor:
    """The reference: torch's float antialiased interpolate on this image alone."""
    top, left, h, w = box
    x = image[:, top : top + h, left : left + w][None].float()
    y = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    if crop is not None:
        y = y[:, :, crop[0] : crop[0] + crop[2], crop[1] : crop[1] + crop[3]]
    if flip:
        y = y.flip(-1)
    return y.round().clamp(0, 255).to(torch.uint8)[0]


@pytest.mark.parametrize("chunk_elements", [1 << 26, 3 * 120 * 120 * 2, 1])
def test_a_batch_equals_each_image_resized_alone(chunk_elements):
    samples = random_samples(24, seed=0)
    out = place_batch(*samples, chunk_elements=chunk_elements)
    assert out.shape == (24, 3, 48, 48) and out.dtype == torch.uint8
    for k, sample in enumerate(zip(*samples, strict=True)):
        diff = (out[k].int() - one_by_one(*sample).int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01


def test_a_flip_mirrors_and_a_box_crops():
    # Known answers without any resize: a box of exactly the output size is a plain crop.
    image = torch.arange(3 * 10 * 12, dtype=torch.int64).reshape(3, 10, 12) % 251
    image = image.to(torch.uint8)
    box = (2, 3, 5, 6)
    out = place_batch([image, image], [box, box], [(5, 6)] * 2, [None, None], [False, True])
    assert torch.equal(out[0], image[:, 2:7, 3:9])
    assert torch.equal(out[1], image[:, 2:7, 3:9].flip(-1))


def test_an_upright_view_needs_no_copy_first():
    images, boxes, sizes, crops, flips = random_samples(6, seed=1)
    views = [x.transpose(-2, -1).flip(-1) for x in images]  # EXIF-like turned views
    turned = [(left, top, w, h) for top, left, h, w in boxes]  # the same regions, turned
    a = place_batch(views, turned, sizes, crops, flips)
    b = place_batch([v.contiguous() for v in views], turned, sizes, crops, flips)
    assert torch.equal(a, b)


def test_the_batch_matches_pil_as_the_cpu_path_resizes():
    # PIL's uint8 resampler rounds its intermediate rows; the float products do not: within
    # one or two levels, as the gpu mode's test against the cpu mode allows.
    rng = np.random.default_rng(2)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    photo = np.array(Image.fromarray(coarse).resize((300, 200), Image.BICUBIC))
    box = (20, 30, 150, 210)
    pil = Image.fromarray(photo).crop((30, 20, 240, 170)).resize((64, 64), Image.BILINEAR)
    pil = torch.from_numpy(np.array(pil)).permute(2, 0, 1)
    ours = place_batch(
        [torch.from_numpy(photo).permute(2, 0, 1)], [box], [(64, 64)], [None], [False]
    )
    diff = (ours[0].int() - pil.int()).abs()
    assert diff.max() <= 2 and diff.float().mean() < 0.5


def test_samples_of_different_output_sizes_are_refused():
    image = torch.zeros(3, 20, 20, dtype=torch.uint8)
    with pytest.raises(ValueError, match="one size"):
        place_batch([image, image], [(0, 0, 20, 20)] * 2, [(8, 8), (9, 9)], [None, None], [0, 0])
    with pytest.raises(ValueError, match="at least one"):
        place_batch([], [], [], [], [])


def test_chunks_cover_every_sample_once_within_the_limit():
    boxes = [(0, 0, h, w) for h, w in [(10, 10), (200, 50), (30, 40), (10, 300), (25, 25)] * 5]
    limit = 3 * 40 * 40 * 3
    chunks = _chunks(boxes, limit)
    assert sorted(k for c in chunks for k in c) == list(range(len(boxes)))
    for chunk in chunks:
        padded = len(chunk) * 3 * max(boxes[k][2] for k in chunk) * max(boxes[k][3] for k in chunk)
        assert padded <= limit or len(chunk) == 1
