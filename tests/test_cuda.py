"""What only a CUDA device shows: nvJPEG decoding, the GPU data path on the GPU, training in
each precision there (fp16 with its loss scaler), a GPU checkpoint evaluated on the CPU, and
torchrun with NCCL.

Skipped where no CUDA device is visible (CI has none); benchmarks/gpu_run.sh runs this file
on a GPU. `RN50_TEST_DEVICE=cpu pytest tests/test_cuda.py` runs the same checks on the CPU
(libjpeg instead of nvJPEG, gloo instead of NCCL, bf16 only), which is how the tests
themselves are checked on a machine without a GPU.
"""

import importlib.util
import io
import os
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from rn50.checkpoint import load_checkpoint
from rn50.config import DataConfig
from rn50.data import decode, gpu
from rn50.data.layout import find_dataset
from rn50.data.photos import write_imagenet_like
from rn50.data.pipeline import make_loader
from rn50.runlog import read_metrics
from rn50.train.evaluate import evaluate_checkpoint
from rn50.train.loop import fit
from tests.conftest import demo48_config

DEVICE = torch.device(os.environ.get("RN50_TEST_DEVICE", "cuda"))
CPU = torch.device("cpu")
ON_GPU = DEVICE.type == "cuda"

pytestmark = pytest.mark.skipif(
    ON_GPU and not torch.cuda.is_available(), reason="needs a CUDA device"
)

# data.gpu_decoder's choices; nvImageCodec loads only with CUDA (and where it is installed).
DECODERS = [
    "torchvision",
    pytest.param(
        "nvimgcodec",
        marks=pytest.mark.skipif(
            not ON_GPU or importlib.util.find_spec("nvidia.nvimgcodec") is None,
            reason="nvImageCodec: needs CUDA and nvidia-nvimgcodec-cu12/-cu13",
        ),
    ),
]

# nvJPEG and libjpeg-turbo implement the inverse DCT and the chroma upsampling differently:
# a level or two apart on a pixel, far below the tens of levels between two crops.
DECODER_MEAN = 2.0 if ON_GPU else 0.0


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """8 ImageNet-like photos in 2 classes, a CMYK and a grayscale JPEG, a PNG named .JPEG and
    an empty file: 12 files, 3 training batches of 4 (no file dropped)."""
    root = write_imagenet_like(tmp_path_factory.mktemp("cuda-data"), 8, classes=2)
    first = root / "train" / "class_0" / "00000.JPEG"
    img = Image.open(first).convert("RGB")
    img.convert("CMYK").save(root / "train" / "class_1" / "cmyk.JPEG", quality=90)
    img.convert("L").save(root / "train" / "class_0" / "gray.JPEG", quality=90)
    img.save(root / "train" / "class_1" / "png.JPEG", format="PNG")
    (root / "train" / "class_0" / "empty.JPEG").write_bytes(b"")
    return find_dataset(root)


def mean_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.cpu().int() - b.cpu().int()).abs().float().mean().item()


def jpegs(photos) -> list[str]:
    return [p for p, _ in photos.train if p.endswith(tuple(f"{i}.JPEG" for i in range(10)))]


@pytest.mark.parametrize("decoder", DECODERS)
def test_device_decoder_agrees_with_libjpeg(photos, decoder):
    paths = jpegs(photos)
    datas = [torch.from_numpy(decode.read_bytes(p)) for p in paths]
    # and a progressive JPEG, which hardware JPEG engines do not take
    progressive = io.BytesIO()
    Image.open(paths[0]).save(progressive, format="JPEG", progressive=True, quality=90)
    datas.append(torch.frombuffer(bytearray(progressive.getvalue()), dtype=torch.uint8))
    decoded = gpu.decode_jpegs(datas, DEVICE, decoder)  # one batched call
    for data, pixels in zip(datas, decoded, strict=True):
        assert pixels.device.type == DEVICE.type and pixels.dtype == torch.uint8
        h, w, _ = decode.probe(data.numpy())
        host = torch.from_numpy(decode.decode(data.numpy(), h, w, True)).permute(2, 0, 1)
        assert pixels.shape == host.shape
        assert mean_diff(pixels, host) <= DECODER_MEAN
    # the control: two different photos are tens of levels apart
    a, b = decoded[0], decoded[1]
    if a.shape == b.shape:
        assert mean_diff(a, b) > 15


@pytest.mark.skipif(not ON_GPU, reason="CUDA streams")
def test_device_decoding_never_writes_memory_that_queued_kernels_still_use(photos):
    # torchvision's nvJPEG decoder allocates its outputs on the current stream and writes them
    # from its own stream without waiting (pytorch/vision#9606). Each round keeps the training
    # stream busy, queues kernels behind that reading (1) tensors just freed, of the decoded
    # images' sizes, and (2) decoded images just freed, then decodes again: the allocator's
    # best fit for the new outputs is exactly that memory.
    datas = [torch.from_numpy(decode.read_bytes(p)) for p in jpegs(photos)]
    shapes = [tuple(img.shape) for img in gpu.decode_jpegs(datas, DEVICE)]
    reference = [img.cpu() for img in gpu.decode_jpegs(datas, DEVICE)]
    for _ in range(5):
        held = [torch.full(shape, 7, dtype=torch.uint8, device=DEVICE) for shape in shapes]
        torch.cuda.synchronize()
        torch.cuda._sleep(200_000_000)  # about 0.1 s of a busy stream; what follows waits
        sums = [t.sum(dtype=torch.int64) for t in held]
        del held
        decoded = gpu.decode_jpegs(datas, DEVICE)
        copies = [img.clone() for img in decoded]
        del decoded
        gpu.decode_jpegs(datas[::-1], DEVICE)
        torch.cuda.synchronize()
        assert [s.item() for s in sums] == [7 * t.numel() for t in reference]
        assert all(torch.equal(c.cpu(), r) for c, r in zip(copies, reference, strict=True))


@pytest.mark.skipif(not ON_GPU, reason="CUDA streams")
def test_batches_decoded_ahead_are_not_overwritten_before_the_step_reads_them(
    photos, monkeypatch
):
    # The decode thread works on its own stream while the training stream is busy. Each
    # round queues kernels that read a batch behind 0.1 s of a busy training stream and drops
    # the batch; once the loop has taken the next one, nothing holds the first, and the
    # thread (slowed to decode after that) allocates a batch of the same size: unless the
    # first's memory waits for the training stream, that is where it goes, and is written
    # before the queued kernels read it.
    def batches(ahead):
        cfg = DataConfig(resolution=160, workers=1, decode="gpu", batch_size=2, decode_ahead=ahead)
        loader = make_loader(cfg, photos.train, train=True, batch_size=2, device=DEVICE, seed=5)
        loader.sampler.set_epoch(1)
        return loader

    reference = [b.images.cpu() for b in batches(0)]
    assert len(reference) == 6  # 12 files
    real = gpu.decode_batch

    def slow_decode_batch(batch, device):
        time.sleep(0.03)
        return real(batch, device)

    monkeypatch.setattr(gpu, "decode_batch", slow_decode_batch)
    for ahead in (1, 2):
        copies = []
        for b in batches(ahead):
            torch.cuda._sleep(200_000_000)  # about 0.1 s
            copies.append(b.images.clone())
            del b
        torch.cuda.synchronize()
        assert len(copies) == len(reference)
        assert all(torch.equal(c.cpu(), r) for c, r in zip(copies, reference, strict=True))


def test_fixed_crop_on_the_device_matches_the_cpu_path(photos):
    for path in jpegs(photos)[:4]:
        data = decode.read_bytes(path)
        h, w, _ = decode.probe(data)
        box = (h // 10, w // 7, h * 2 // 3, w // 2)
        host = decode.resized_crop(decode.decode(data, h, w, True), box, 160, (h, w))
        (pixels,) = gpu.decode_jpegs([torch.from_numpy(data)], DEVICE)
        dev = gpu.place(pixels, box, (160, 160), None, flip=True)
        assert dev.device.type == DEVICE.type and dev.shape == (3, 160, 160)
        assert mean_diff(dev, host.flip(-1)) <= DECODER_MEAN + 0.5


@pytest.mark.parametrize("turn", range(1, 9))
def test_device_decoding_turns_each_exif_orientation_upright(tmp_path, turn):
    """nvJPEG ignores EXIF: the orientation read from the header turns the decoded pixels on
    the device, to what Pillow's exif_transpose shows (the known answer)."""
    import numpy as np
    from PIL import ImageOps

    a = np.zeros((24, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)
    a[:12, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = turn
    path = tmp_path / f"exif{turn}.jpg"
    Image.fromarray(a).save(path, quality=95, exif=exif.tobytes())
    with Image.open(path) as im:
        upright = torch.from_numpy(np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
    data = decode.read_bytes(str(path))
    (pixels,) = gpu.decode_jpegs([torch.from_numpy(data)], DEVICE)
    turned = gpu.orient_tensor(pixels, turn)
    assert turned.device.type == DEVICE.type
    assert turned.shape == upright.permute(2, 0, 1).shape
    assert mean_diff(turned, upright.permute(2, 0, 1)) <= DECODER_MEAN + 1.0


@pytest.mark.parametrize("decoder", DECODERS)
def test_gpu_mode_batches_arrive_on_the_device_with_the_cpu_modes_labels(photos, decoder):
    def batches(mode, device, start=0):
        cfg = DataConfig(resolution=64, workers=2, decode=mode, batch_size=4, gpu_decoder=decoder)
        loader = make_loader(cfg, photos.train, train=True, batch_size=4, device=device, seed=3)
        loader.sampler.set_epoch(1, start=start)
        return list(loader)

    ref, got = batches("cpu", CPU), batches("gpu", DEVICE)
    assert [b.targets.tolist() for b in got] == [b.targets.tolist() for b in ref]
    assert [sorted(b.bad) for b in got] == [sorted(b.bad) for b in ref]
    assert sum(len(b.bad) for b in got) == 1  # the empty file; CMYK, gray and PNG decode
    for b, r in zip(got, ref, strict=True):
        assert b.images.device.type == DEVICE.type and b.images.dtype == torch.uint8
        assert b.images.shape == r.images.shape
        # the cpu mode may decode at a DCT scale of 1/2..1/8 for a 64 px crop
        assert mean_diff(b.images, r.images) < 6
    # resumed after the first batch: the epoch's other batches, pixel for pixel
    resumed = batches("gpu", DEVICE, start=4)
    assert [b.targets.tolist() for b in resumed] == [b.targets.tolist() for b in got[1:]]
    assert all(torch.equal(b.images, g.images) for b, g in zip(resumed, got[1:], strict=True))


PRECISIONS = ("fp16", "bf16", "fp32") if ON_GPU else ("bf16",)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_training_on_the_device_then_evaluating_on_the_cpu(demo48, tmp_path, precision):
    run = tmp_path / "run"
    train = {"device": DEVICE.type, "precision": precision, "epochs": 2, "ema": True}
    cfg = demo48_config(demo48, run, model={"arch": "resnet18"}, train=train,
                        data={"decode": "gpu", "workers": 2})  # fmt: skip
    record = fit(cfg)
    assert record["epoch"] == 2 and record["train_images"] == 48
    assert torch.isfinite(torch.tensor([record["train_loss"], record["val_loss"]])).all()
    state = load_checkpoint(run / "checkpoint_epoch_002.pth")
    if precision == "fp16":  # the loss scaler ran and its state is kept for resume
        assert state["scaler"]["scale"] > 0
    # the same weights evaluated again on the device, and on the CPU in fp32: the validation
    # set has 12 images, so one image is 8.33 points; the device's own result may differ by
    # a changed convolution algorithm at most on one image, the CPU's by float error
    again = evaluate_checkpoint(state, "device", cfg)
    assert abs(again["top1"] - record["val_top1"]) <= 100 / 12 + 1e-6
    on_cpu = demo48_config(demo48, run, model={"arch": "resnet18"},
                           train={"device": "cpu", "precision": "fp32"})  # fmt: skip
    host = evaluate_checkpoint(state, "cpu", on_cpu)
    assert abs(host["top1"] - record["val_top1"]) <= 100 / 12 + 1e-6
    assert abs(host["loss"] - record["val_loss"]) < 0.1 * max(1.0, record["val_loss"])


def test_torchrun_on_the_device(demo48, tmp_path):
    # One rank: NCCL on a GPU (gloo on the CPU); the process group, the device per local rank
    # and the distributed sampler all take part.
    run = tmp_path / "run"
    cfg = demo48_config(demo48, run, model={"arch": "resnet18"},
                        train={"device": DEVICE.type, "epochs": 1})  # fmt: skip
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           "-m", "rn50", "train", "--config", str(path)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (record,) = read_metrics(run / "metrics.jsonl")
    assert record["train_images"] == 48
    log = next(run.glob("training_log_*.txt")).read_text()
    assert f"Training on {DEVICE.type}" in log
