"""The fast CPU decoder and the crop geometry: torchvision's crops, PIL's pixels.

Tolerances are in levels of 255 and come from measurement: at full decoding scale the fast
path differs from torchvision's PIL path by rounding only (max 1 level); DCT-scaled decoding
(libjpeg's 1/2..1/8) low-passes differently from a bilinear filter (about 1-2 levels mean) and
resamples the crop box rounded to the scaled image's pixels.
"""

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from rn50.data import decode
from rn50.data.decode import (
    FastEvalTransform,
    FastTrainTransform,
    probe,
    read_bytes,
    reduction,
    resized_crop,
    sample_crop,
    scaled_box,
)
from rn50.data.image import load_rgb
from rn50.data.photos import write_imagenet_like
from rn50.data.transforms import EvalTransform, TrainTransform


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[str]:
    root = write_imagenet_like(tmp_path_factory.mktemp("photos"), 8, classes=1)
    return sorted(str(p) for p in (root / "train" / "class_0").iterdir())


def seed_all(seed: int) -> None:
    """Seed the generator every transform draws from (what ImageDataset seeds per sample);
    torch.manual_seed would also seed every accelerator backend, much slower in a loop."""
    torch.default_generator.manual_seed(seed)


def ks_statistic(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    return float(
        np.max(
            np.abs(
                np.searchsorted(a, grid, "right") / a.size
                - np.searchsorted(b, grid, "right") / b.size
            )
        )
    )


def level_gap(a, b) -> float:
    """Mean absolute difference of two uint8 images (arrays or PIL images), in levels."""
    return float(np.abs(np.asarray(a, np.int32) - np.asarray(b, np.int32)).mean())


def crop_stats(boxes, height, width):
    area = [h * w / (height * width) for _, _, h, w in boxes]
    log_aspect = [math.log(w / h) for _, _, h, w in boxes]
    return area, log_aspect


@pytest.mark.parametrize("size", [(375, 500), (500, 375), (40, 400), (400, 40), (64, 64), (3, 7)])
def test_sample_crop_draws_exactly_what_torchvision_draws(size):
    height, width = size
    image = torch.empty(3, height, width)
    for seed in range(200):
        seed_all(seed)
        expected = T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
        seed_all(seed)
        assert sample_crop(height, width) == tuple(expected), seed


def test_crop_area_and_aspect_distributions_match_random_resized_crop():
    # Independent samples (different seeds) of ours and torchvision's: a two-sample KS test
    # at alpha = 0.001 (critical value 1.95 * sqrt(2 / n)). A sampler with another scale
    # range must fail it, or the test could not tell.
    n, height, width = 2000, 375, 500
    image = torch.empty(3, height, width)
    ours, theirs, wrong = [], [], []
    for seed in range(n):
        seed_all(seed)
        ours.append(sample_crop(height, width))
        seed_all(n + seed)
        theirs.append(T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]))
        seed_all(2 * n + seed)
        wrong.append(sample_crop(height, width, scale=(0.2, 1.0)))
    critical = 1.95 * math.sqrt(2 / n)
    ours_area, ours_aspect = crop_stats(ours, height, width)
    their_area, their_aspect = crop_stats(theirs, height, width)
    wrong_area, _ = crop_stats(wrong, height, width)
    assert ks_statistic(ours_area, their_area) < critical
    assert ks_statistic(ours_aspect, their_aspect) < critical
    assert ks_statistic(wrong_area, their_area) > critical
    # and the documented ranges hold for every box
    assert min(ours_area) >= 0.08 - 0.01 and max(ours_area) <= 1.0
    assert all(3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02 for _, _, h, w in ours)


def test_reduction_keeps_the_crop_at_least_the_output_size():
    assert reduction(300, 300, 224, 224) == 1
    assert reduction(447, 900, 224, 224) == 1  # one side short of 2 x 224
    assert reduction(448, 448, 224, 224) == 2
    assert reduction(1791, 4000, 224, 224) == 4
    assert reduction(1792, 1792, 224, 224) == 8
    assert reduction(9000, 9000, 224, 224) == 8  # libjpeg scales down to 1/8 at most


def test_probe_reads_the_size_from_the_header(photos, tmp_path):
    data = read_bytes(photos[0])
    assert probe(data)[:2] == Image.open(photos[0]).size[::-1]
    assert probe(data)[2] is True  # a YCbCr JPEG: simplejpeg decodes it
    cmyk = tmp_path / "cmyk.jpg"
    Image.open(photos[0]).convert("CMYK").save(cmyk, quality=90)
    assert probe(read_bytes(str(cmyk)))[2] is False  # CMYK: PIL converts it


def test_fast_train_transform_equals_torchvision_within_rounding_at_full_scale(photos):
    # 224 px crops of 500x375 photos are never 2x the output: full-scale decoding, where the
    # only difference is torch's vs PIL's rounding of the same bilinear antialias filter.
    fast, reference = FastTrainTransform(224), TrainTransform(224)
    means = []
    for path in photos[:4]:
        data, img = read_bytes(path), load_rgb(path)
        for seed in range(3):
            seed_all(seed)
            a = fast(data)
            seed_all(seed)
            b = reference(img)
            assert a.shape == b.shape == (3, 224, 224) and a.dtype == torch.uint8
            diff = (a.int() - b.int()).abs()
            assert diff.max() <= 1
            means.append(diff.float().mean().item())
    assert np.mean(means) < 0.05


def test_dct_scaled_decoding_stays_close_to_full_decoding(photos):
    # After a DCT-scaled decode the box is rounded to the scaled image's pixels; the reference
    # is PIL's resize of that same region of the full-scale image, so what is left is how
    # libjpeg's DCT scaling low-passes against a bilinear filter.
    size, means, control = 64, [], []
    for path in photos:
        data, img = read_bytes(path), load_rgb(path)
        height, width, direct = probe(data)
        for seed in range(8):
            seed_all(seed)
            box = sample_crop(height, width)
            reduce = reduction(box[2], box[3], size, size)
            if reduce == 1:
                continue
            pixels = decode.decode(data, height, width, direct, reduce)
            fy, fx = pixels.shape[0] / height, pixels.shape[1] / width
            top, left, h, w = scaled_box(box, fy, fx)
            region = (left / fx, top / fy, (left + w) / fx, (top + h) / fy)
            out = resized_crop(pixels, box, size, (height, width)).permute(1, 2, 0).numpy()
            means.append(level_gap(out, img.resize((size, size), Image.BILINEAR, box=region)))
            # The control: the same box moved an eighth of its width, where there is room.
            step = box[3] / 8
            step = step if region[2] + step <= width else -step if region[0] >= step else 0
            if step:
                moved = (region[0] + step, region[1], region[2] + step, region[3])
                control.append(level_gap(out, img.resize((size, size), Image.BILINEAR, box=moved)))
    assert len(means) > len(photos) * 4  # the test does exercise the scaled decoder
    # Measured: 1.5 levels mean, 2.7 at most; the moved box: 28 levels (median).
    assert np.mean(means) < 2.0
    assert max(means) < 4.0
    assert np.median(control) > 10.0


def test_scaled_box_rounds_each_edge_to_the_nearest_scaled_pixel():
    # (top, left, h, w) = (101, 37, 230, 307) at 1/2 scale: edges 50.5 -> 50 (round half to
    # even), 18.5 -> 18, 165.5 -> 166, 172 -> 172.
    assert scaled_box((101, 37, 230, 307), 0.5, 0.5) == (50, 18, 116, 154)
    # libjpeg rounds scaled sizes up: 375 px at 1/4 is 94 rows, so fy = 94 / 375.
    assert scaled_box((0, 0, 375, 500), 94 / 375, 125 / 500) == (0, 0, 94, 125)
    assert scaled_box((3, 3, 1, 1), 0.125, 0.125) == (0, 0, 1, 1)  # never empty
    for seed in range(200):
        seed_all(seed)
        box = sample_crop(1500, 2000)
        s = reduction(box[2], box[3], 64, 64)
        fy, fx = -(-1500 // s) / 1500, -(-2000 // s) / 2000
        top, left, h, w = scaled_box(box, fy, fx)
        edges = (top, left, top + h, left + w)
        exact = (box[0] * fy, box[1] * fx, (box[0] + box[2]) * fy, (box[1] + box[3]) * fx)
        assert max(abs(a - b) for a, b in zip(edges, exact, strict=True)) <= 0.5
        assert top + h <= -(-1500 // s) and left + w <= -(-2000 // s)


def test_without_simplejpeg_pil_decodes_the_same_pixels(photos, monkeypatch):
    data = read_bytes(photos[1])
    outputs = {}
    for name, module in (("simplejpeg", decode._simplejpeg), ("pil", None)):
        monkeypatch.setattr(decode, "_simplejpeg", module)
        outputs[name] = []
        for resolution in (224, 48):  # full scale, and DCT-scaled (PIL's draft mode)
            seed_all(3)
            outputs[name].append(FastTrainTransform(resolution)(data))
    for a, b in zip(outputs["simplejpeg"], outputs["pil"], strict=True):
        assert torch.equal(a, b)  # both are libjpeg-turbo, at the same DCT scale


def odd_files(folder, photo: str) -> dict[str, str]:
    """A CMYK JPEG, a grayscale JPEG, a PNG under a .JPEG name and a 16-bit grayscale PNG."""
    img = Image.open(photo).convert("RGB").resize((200, 150))
    paths = {}
    paths["cmyk"] = str(folder / "cmyk.JPEG")
    img.convert("CMYK").save(paths["cmyk"], format="JPEG", quality=90)
    paths["gray"] = str(folder / "gray.JPEG")
    img.convert("L").save(paths["gray"], format="JPEG", quality=90)
    paths["png"] = str(folder / "png.JPEG")
    img.save(paths["png"], format="PNG")
    paths["16bit"] = str(folder / "deep.png")
    deep = (np.asarray(img.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(paths["16bit"])
    return paths


def test_odd_formats_decode_like_load_rgb(photos, tmp_path):
    for kind, path in odd_files(tmp_path, photos[0]).items():
        data = read_bytes(path)
        for seed in range(4):
            seed_all(seed)
            a = FastTrainTransform(96)(data)
            seed_all(seed)
            b = TrainTransform(96)(load_rgb(path))
            assert (a.int() - b.int()).abs().max() <= 1, kind
        assert torch.equal(FastEvalTransform(64)(data), EvalTransform(64)(load_rgb(path))), kind


def test_fast_eval_transform_equals_eval_transform_exactly(photos):
    # The same pixels as EvalTransform (what rn50 predict uses), not merely close.
    for path in photos:
        for resolution, ratio in ((224, 0.875), (96, 0.5)):
            got = FastEvalTransform(resolution, ratio)(read_bytes(path))
            assert torch.equal(got, EvalTransform(resolution, ratio)(load_rgb(path)))


@pytest.mark.parametrize("cut", ["empty", "truncated", "junk"])
def test_undecodable_files_raise(photos, cut):
    data = read_bytes(photos[0])
    data = {"empty": data[:0], "truncated": data[: len(data) * 2 // 3], "junk": data[100:400]}[cut]
    with pytest.raises(Exception):  # noqa: B017 - ImageDataset catches any decoder error
        FastTrainTransform(64)(data.copy())
    with pytest.raises(Exception):  # noqa: B017
        FastEvalTransform(64)(data.copy())


def test_generated_photos_are_imagenet_like(photos):
    sizes = {Image.open(p).size for p in photos}
    assert sizes <= {(500, 375), (375, 500)}
    bits_per_pixel = [8 * len(read_bytes(p)) / (500 * 375) for p in photos]
    # Photographs at quality 90: 1-3 bits a pixel; noise would be over 8, a flat colour ~0.1.
    assert 1.0 < np.mean(bits_per_pixel) < 3.5
    with Image.open(io.BytesIO(read_bytes(photos[0]).tobytes())) as img:
        assert img.format == "JPEG" and img.mode == "RGB"


def test_a_decompression_bomb_is_refused_before_decoding(photos, monkeypatch):
    # 500 x 375 = 187,500 pixels, over twice a limit of 90,000: refused from the header alone,
    # as PIL refuses it (a 20000 x 20000 JPEG would otherwise fill a worker's memory).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 90_000)
    with pytest.raises(Image.DecompressionBombError):
        FastTrainTransform(64)(read_bytes(photos[0]))
    with pytest.raises(Image.DecompressionBombError):
        load_rgb(photos[0])
