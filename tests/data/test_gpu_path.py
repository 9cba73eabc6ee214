"""The GPU data path, run with device cpu, against the CPU paths; and what every data mode
shares: the label stream, the crop boxes and flips, the handling of odd and bad files."""

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from rn50.config import DataConfig
from rn50.data import decode, gpu
from rn50.data.batch import to_device
from rn50.data.layout import find_dataset
from rn50.data.loader import ImageDataset, collate_skipping_bad
from rn50.data.photos import write_imagenet_like
from rn50.data.pipeline import make_loader, transforms_for

CPU = torch.device("cpu")
MODES = ("pil", "cpu", "gpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """12 ImageNet-like photos in 3 classes, plus odd files (CMYK, grayscale, PNG named
    .JPEG) and bad ones (truncated after a valid header, empty)."""
    root = write_imagenet_like(tmp_path_factory.mktemp("gpu-data"), 12, classes=3)
    first = root / "train" / "class_0" / "00000.JPEG"
    img = Image.open(first).convert("RGB")
    odd = root / "train" / "class_1"
    img.convert("CMYK").save(odd / "cmyk.JPEG", format="JPEG", quality=90)
    img.convert("L").save(odd / "gray.JPEG", format="JPEG", quality=90)
    img.save(odd / "png.JPEG", format="PNG")
    data = first.read_bytes()
    (root / "train" / "class_2" / "truncated.JPEG").write_bytes(data[: len(data) // 2])
    (root / "train" / "class_2" / "empty.JPEG").write_bytes(b"")
    return find_dataset(root)


def encode_then_decode(prep, path: str, seed: int) -> torch.Tensor | None:
    """A gpu-mode sample the way a worker and then the device see it."""
    item = ImageDataset([(path, 0)], prep, decode.read_bytes)[(0, seed)]
    batch = gpu.decode_batch(gpu.collate_encoded([item]), CPU)
    return batch.images[0] if len(batch.targets) else None


def test_device_decoder_gives_libjpeg_pixels(dataset):
    path = dataset.train[0][0]
    data = decode.read_bytes(path)
    (pixels,) = gpu.decode_jpegs([torch.from_numpy(data)], CPU)
    h, w, _ = decode.probe(data)
    assert torch.equal(pixels.permute(1, 2, 0), torch.from_numpy(decode.decode(data, h, w, True)))


@pytest.mark.parametrize("flip", [False, True])
def test_gpu_path_on_cpu_matches_cpu_path_on_a_fixed_crop(dataset, flip):
    # Same file, same box, same flip. The decoders agree exactly (above); the resize differs
    # only in rounding: torch's float antialias kernel (the device's) against its uint8 kernel
    # (the CPU path's). Measured: 0.1 level mean, 1 at most.
    for path, _ in dataset.train[:4]:
        data = decode.read_bytes(path)
        h, w, _ = decode.probe(data)
        box = (h // 10, w // 7, h * 2 // 3, w // 2)
        cpu = decode.resized_crop(decode.decode(data, h, w, True), box, 224, (h, w))
        cpu = cpu.flip(-1) if flip else cpu
        (pixels,) = gpu.decode_jpegs([torch.from_numpy(data)], CPU)
        dev = gpu.place(pixels, box, (224, 224), None, flip)
        assert dev.shape == cpu.shape == (3, 224, 224) and dev.dtype == torch.uint8
        diff = (dev.int() - cpu.int()).abs()
        assert diff.float().mean() < 0.5 and diff.max() <= 2


def test_every_mode_crops_the_same_box_and_flips_alike(dataset):
    # For one (file, seed) the three modes must show the same part of the image. The control
    # row shows what another seed's crop looks like: tens of levels away.
    preps = {m: transforms_for(m, True, 96) for m in MODES}
    same, control = [], []
    for path, _ in dataset.train[:12]:
        for seed in (11, 12, 13):
            out = {}
            for mode, (read, transform, _) in preps.items():
                if mode == "gpu":
                    out[mode] = encode_then_decode(transform, path, seed)
                else:
                    out[mode] = ImageDataset([(path, 0)], transform, read)[(0, seed)][0]
            for mode in ("cpu", "gpu"):
                same.append((out[mode].int() - out["pil"].int()).abs().float().mean().item())
            read, transform, _ = preps["pil"]
            other = ImageDataset([(path, 0)], transform, read)[(0, seed + 100)][0]
            control.append((other.int() - out["pil"].int()).abs().float().mean().item())
    # cpu mode may decode at 1/2 scale here (crops over 192 px): ~1-2 levels; gpu ~0.1.
    assert max(same) < 5.0
    assert np.median(control) > 15.0


def batches_of(
    mode: str, dataset, epoch: int, workers: int = 0, train: bool = True, ahead: int = 2,
    start: int = 0,
):
    cfg = DataConfig(resolution=64, workers=workers, decode=mode, batch_size=5, decode_ahead=ahead)
    loader = make_loader(cfg, dataset.train, train=train, batch_size=5, device=CPU, seed=7)
    loader.sampler.set_epoch(epoch, start=start)
    return list(loader)


def test_every_mode_yields_the_same_label_stream_and_skips_the_same_files(dataset):
    for epoch in (1, 2):
        runs = {m: batches_of(m, dataset, epoch) for m in MODES}
        runs["gpu, 2 workers"] = batches_of("gpu", dataset, epoch, workers=2)
        runs["gpu, between steps"] = batches_of("gpu", dataset, epoch, ahead=0)
        runs["cpu, 2 workers"] = batches_of("cpu", dataset, epoch, workers=2)
        reference = runs["pil"]
        assert sum(len(b.bad) for b in reference) == 2  # the truncated and the empty file
        for name, batches in runs.items():
            assert [b.targets.tolist() for b in batches] == [
                b.targets.tolist() for b in reference
            ], name
            assert [sorted(b.bad) for b in batches] == [sorted(b.bad) for b in reference], name
            for b, r in zip(batches, reference, strict=True):
                assert b.images.dtype == torch.uint8 and b.images.shape == r.images.shape
                diff = (b.images.int() - r.images.int()).abs().float().mean()
                assert diff < 5.0, name
    # another epoch, another order
    assert [b.targets.tolist() for b in batches_of("gpu", dataset, 3)] != [
        b.targets.tolist() for b in batches_of("gpu", dataset, 1)
    ]


@pytest.mark.parametrize("workers", [0, 2])
def test_decoding_ahead_yields_the_batches_of_decoding_between_steps(dataset, workers):
    # The thread changes when a batch is decoded, not which: the same pixels, labels and
    # skipped files, in the same order, from the start of an epoch and from mid-epoch.
    for start in (0, 5):
        inline = batches_of("gpu", dataset, 1, workers, ahead=0, start=start)
        for depth in (1, 3):
            got = batches_of("gpu", dataset, 1, workers, ahead=depth, start=start)
            assert len(got) == len(inline) == (3 if start == 0 else 2)  # 17 files, 5 a batch
            for b, r in zip(got, inline, strict=True):
                assert torch.equal(b.images, r.images)
                assert torch.equal(b.targets, r.targets) and b.bad == r.bad


def test_leaving_an_epoch_early_stops_the_decoding_thread(dataset):
    cfg = DataConfig(resolution=64, workers=1, decode="gpu", batch_size=5, decode_ahead=2)
    loader = make_loader(cfg, dataset.train, train=True, batch_size=5, device=CPU, seed=7)
    loader.sampler.set_epoch(1)
    for _ in loader:
        assert [t for t in threading.enumerate() if t.name == gpu.THREAD]
        break
    assert not [t for t in threading.enumerate() if t.name == gpu.THREAD]


def test_gpu_validation_matches_eval_transform(dataset):
    ref = batches_of("pil", dataset, 1, train=False)
    got = batches_of("gpu", dataset, 1, train=False)
    assert [b.targets.tolist() for b in got] == [b.targets.tolist() for b in ref]
    for b, r in zip(got, ref, strict=True):
        if len(b.targets):  # not a batch of bad files only
            diff = (b.images.int() - r.images.int()).abs()
            assert diff.float().mean() < 0.5 and diff.max() <= 3
    # and to_device normalizes a batch that is already on the device
    images, targets = to_device(got[0].images, got[0].targets, CPU, channels_last=True)
    assert images.dtype == torch.float32 and images.is_contiguous(memory_format=torch.channels_last)


def test_files_the_device_decoder_does_not_take_are_decoded_by_the_worker(dataset):
    prep = gpu.GpuTrainPrep(64)
    kinds = {}
    for path, _ in dataset.train:
        name = path.rsplit("/", 1)[-1]
        if name in ("cmyk.JPEG", "gray.JPEG", "png.JPEG"):
            item, _, _ = ImageDataset([(path, 0)], prep, decode.read_bytes)[(0, 5)]
            kinds[name] = "bytes" if item.data is not None else "pixels"
    assert kinds == {"cmyk.JPEG": "pixels", "gray.JPEG": "bytes", "png.JPEG": "pixels"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision 0.29+: use TorchCodec
def test_a_batch_the_device_rejects_is_retried_per_file_then_on_the_host(dataset, monkeypatch):
    import torchvision.io

    real = torchvision.io.decode_jpeg
    paths = [p for p, _ in dataset.train[:3]]
    datas = [torch.from_numpy(decode.read_bytes(p)) for p in paths]

    def picky(data, *args, **kwargs):  # a device decoder that refuses the second file
        items = data if isinstance(data, list) else [data]
        if any(x is datas[1] for x in items):
            raise RuntimeError("nvjpeg: unsupported")
        return real(data, *args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", picky)
    out = gpu.decode_jpegs(datas, CPU)
    assert [torch.equal(o, real(d)) for o, d in zip(out, datas, strict=True)] == [True] * 3


def test_collate_of_each_mode(dataset):
    for mode in MODES:
        _, _, collate = transforms_for(mode, True, 32)
        assert (collate is gpu.collate_encoded) == (mode == "gpu")
        assert (collate is collate_skipping_bad) == (mode != "gpu")
    with pytest.raises(ValueError, match="unknown data.decode"):
        transforms_for("nvdec", True, 32)
