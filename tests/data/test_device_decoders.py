"""data.gpu_decoder: the choice reaches the gpu decode mode, an absent decoder is refused at
start, and nvImageCodec's glue (stream creation, the decoders' None, the host fallback,
HWC to CHW) against a stand-in module with its API. Its real decoding needs CUDA and is
checked against torchvision's in tests/test_cuda.py."""

import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from rn50.cli import main
from rn50.config import DataConfig
from rn50.data import decode, device_decoders, gpu
from rn50.data.image import open_pil
from rn50.data.layout import find_dataset
from rn50.data.photos import write_imagenet_like
from rn50.data.pipeline import make_loader
from rn50.errors import ConfigError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """10 ImageNet-like photos in 2 classes, one of them progressive, plus an empty file."""
    root = write_imagenet_like(tmp_path_factory.mktemp("decoders"), 10, classes=2)
    first = root / "train" / "class_0" / "00000.JPEG"
    Image.open(first).save(root / "train" / "class_1" / "progressive.JPEG", progressive=True)
    (root / "train" / "class_1" / "empty.JPEG").write_bytes(b"")
    return find_dataset(root)


def fake_nvimgcodec(refuse_progressive: bool = True):
    """A stand-in for nvidia.nvimgcodec with the calls rn50 makes: CodeStream refuses what is
    not a JPEG, Decoder.decode answers None for progressive JPEGs (like a hardware-only
    decoder) and (H, W, 3) uint8 arrays (DLPack-capable, like its Image) for the rest."""
    calls: dict = {}

    class Decoder:
        def __init__(self, device_id=-1, backends=None):
            calls["backends"] = [b.kind for b in backends]

        def decode(self, streams, params=None, cuda_stream=0):
            calls["params"] = params.kw
            out = []
            for s in streams:
                with open_pil(s.data.tobytes()) as img:
                    progressive = bool(img.info.get("progressive"))
                    pixels = np.array(img.convert("RGB"))
                out.append(None if refuse_progressive and progressive else pixels)
            return out

    class CodeStream:
        def __init__(self, array):
            if array[:2].tobytes() != b"\xff\xd8":
                raise RuntimeError("not a JPEG")
            self.data = array

    def keep_kwargs(**kw):
        return types.SimpleNamespace(kw=kw)

    module = types.ModuleType("nvidia.nvimgcodec")
    module.Decoder, module.CodeStream, module.DecodeParams = Decoder, CodeStream, keep_kwargs
    module.Backend = lambda kind: types.SimpleNamespace(kind=kind)
    module.BackendKind = types.SimpleNamespace(CPU_ONLY="cpu", GPU_ONLY="gpu", HW_GPU_ONLY="hw")
    module.ColorSpec = types.SimpleNamespace(SRGB="srgb")
    module.SampleFormat = types.SimpleNamespace(I_RGB="interleaved rgb")
    return module, calls


@pytest.fixture
def nvimgcodec(monkeypatch):
    module, calls = fake_nvimgcodec()
    package = types.ModuleType("nvidia")
    package.nvimgcodec = module
    monkeypatch.setitem(sys.modules, "nvidia", package)
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", module)
    monkeypatch.setattr(device_decoders, "_NVIMGCODEC", {})
    return calls


def test_nvimgcodec_glue_with_its_none_and_the_host_fallback(dataset, nvimgcodec):
    paths = sorted(p for p, _ in dataset.train)
    datas = [torch.from_numpy(decode.read_bytes(p)) for p in paths]
    out = gpu.decode_jpegs(datas, CPU, "nvimgcodec")
    assert nvimgcodec["backends"] == ["cpu"]  # on a CUDA device: ["hw", "gpu"]
    assert nvimgcodec["params"]["apply_exif_orientation"] is False  # rn50 turns the image
    for path, data, pixels in zip(paths, datas, out, strict=True):
        if path.endswith("empty.JPEG"):
            assert pixels is None  # refused by CodeStream, then by PIL: named by the caller
            continue
        # every other file, the progressive one through the host fallback: libjpeg's pixels
        reference = gpu.decode_jpegs([data], CPU)[0]
        assert pixels.shape == reference.shape and torch.equal(pixels, reference), path


def test_nvimgcodec_gives_torchvisions_batches_labels_and_resume(dataset, nvimgcodec):
    def batches(decoder, start=0):
        cfg = DataConfig(resolution=48, decode="gpu", batch_size=4, gpu_decoder=decoder)
        loader = make_loader(cfg, dataset.train, train=True, batch_size=4, device=CPU, seed=5)
        assert loader.decoder == decoder
        loader.sampler.set_epoch(1, start=start)
        return list(loader)

    for start in (0, 4):  # an epoch from its start and resumed after its first batch
        ref, got = batches("torchvision", start), batches("nvimgcodec", start)
        assert [b.targets.tolist() for b in got] == [b.targets.tolist() for b in ref]
        assert [b.bad for b in got] == [b.bad for b in ref]
        assert all(torch.equal(b.images, r.images) for b, r in zip(got, ref, strict=True))
    assert sum(len(b.bad) for b in batches("nvimgcodec")) == 1  # the empty file
    assert [b.targets.tolist() for b in batches("nvimgcodec", 4)] == [
        b.targets.tolist() for b in batches("nvimgcodec")[1:]
    ]


def test_an_absent_decoder_is_refused_before_anything_is_written(tmp_path, capsys, demo48):
    if device_decoders.importlib.util.find_spec("nvidia.nvimgcodec") is not None:
        pytest.skip("nvImageCodec is installed here")
    with pytest.raises(ConfigError, match="nvidia-nvimgcodec"):
        device_decoders.check_gpu_decoder("nvimgcodec")
    device_decoders.check_gpu_decoder("torchvision")  # always there
    run = tmp_path / "run"
    root, _ = demo48
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data:\n  data_dir: {root}\nmodel:\n  num_classes: 10\n"
        f"train:\n  checkpoint_dir: {run}\n"
    )
    for command in ("train", "lr-find"):
        argv = [command, "-c", str(config), "--set", "data.decode=gpu",
                "--set", "data.gpu_decoder=nvimgcodec"]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "data.gpu_decoder: nvimgcodec needs" in err[0], err
        assert not run.exists()
    # (decode: auto does not choose gpu without the decoder: below)
    argv = ["bench", "--device", "cpu", "--only", "stages", "--set", "data.gpu_decoder=nvimgcodec"]
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()  # no auto-choice note before the error
    assert "data.gpu_decoder: nvimgcodec needs" in line


def test_without_the_nvidia_package_the_check_is_still_one_line(monkeypatch):
    # find_spec("nvidia.nvimgcodec") raises, not answers None, where there is no `nvidia`
    # package at all (CPU, ROCm and macOS wheels of torch).
    def no_parent(name, *args):
        raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}")

    monkeypatch.setattr(device_decoders.importlib.util, "find_spec", no_parent)
    assert not device_decoders.gpu_decoder_installed("nvimgcodec")
    assert device_decoders.gpu_decoder_installed("torchvision")
    with pytest.raises(ConfigError, match="nvidia-nvimgcodec"):
        device_decoders.check_gpu_decoder("nvimgcodec")


def test_decode_auto_does_not_choose_a_decoder_that_is_not_there(monkeypatch):
    from rn50.data import auto

    monkeypatch.setattr(auto, "gpu_decoder_installed", lambda name: name == "torchvision")
    monkeypatch.setattr(auto, "auto_decode", lambda *a: ("gpu", "data.decode auto -> gpu: why"))
    chosen = auto.choose_data(DataConfig(workers=0, gpu_decoder="nvimgcodec"), CPU)
    assert chosen.data.decode == "cpu"
    assert chosen.lines[-1].startswith("data.decode auto -> cpu: why; but data.gpu_decoder")
    assert auto.choose_data(DataConfig(workers=0), CPU).data.decode == "gpu"  # torchvision
    with pytest.raises(ConfigError, match="nvimgcodec needs"):  # asked for by name
        auto.choose_data(DataConfig(workers=0, decode="gpu", gpu_decoder="nvimgcodec"), CPU)
