"""Checkpoints and image files shared by the serving tests (predict, export, app)."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rn50.checkpoint import save_checkpoint
from rn50.config import Config
from rn50.model import build_model

# Real ImageNet ids and names, sorted by id as rn50 orders classes; "crane" is there twice in
# ImageNet too (the bird and the machine), which the app must keep apart.
CLASSES = [
    ("n01440764", "tench"),
    ("n01443537", "goldfish"),
    ("n01484850", "great white shark"),
    ("n02012849", "crane"),
    ("n02109961", "Eskimo dog, husky"),
    ("n02123045", "tabby, tabby cat"),
    ("n02504458", "African elephant"),
    ("n03126707", "crane"),
]


def make_checkpoint(
    path: Path,
    arch: str = "resnet18",
    resolution: int = 48,
    crop_ratio: float = 0.875,
    probabilities: list[float] | None = None,
    seed: int = 0,
    blurpool: bool = False,
    flip: bool = False,
) -> Path:
    """An rn50 checkpoint of a randomly initialized model over CLASSES.

    With `probabilities`, the last layer ignores the image (zero weights) and its bias is
    log(probabilities): every image then gets exactly those probabilities, a known answer.
    """
    cfg = Config()
    cfg.model.arch = arch
    cfg.model.num_classes = len(CLASSES)
    cfg.data.resolution = resolution
    cfg.data.crop_ratio = crop_ratio
    torch.manual_seed(seed)
    cfg.model.zero_init_residual = False  # random blocks: outputs that depend on the image
    cfg.model.blurpool = blurpool
    cfg.eval.flip = flip
    model = build_model(cfg.model)
    if probabilities is not None:
        with torch.no_grad():
            model.fc.weight.zero_()
            model.fc.bias.copy_(torch.tensor(probabilities).log())
    state = {
        "epoch": 3,
        "model": model.state_dict(),
        "config": cfg.to_dict(),
        "classes": [c for c, _ in CLASSES],
        "names": [n for _, n in CLASSES],
        "best_top1": 12.5,
        "best_epoch": 3,
    }
    return save_checkpoint(state, path)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A valid all-black 1-bit PNG of width x height px in ~50 KB (400 MP for the default),
    written row by row so the test never holds the pixels."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    parts = [comp.compress(row * 1000) for _ in range(height // 1000)]
    parts += [comp.compress(row * (height % 1000)), comp.flush()]
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )
    return path


def photo(name: str = "coffee") -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)())


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Uploads that must be refused: name -> (file, words the message must contain)."""
    folder.mkdir(parents=True, exist_ok=True)
    full = jpeg_bytes(photo())
    files = {
        "text": (b"these are not the pixels you are looking for\n" * 20, "not an image"),
        "empty": (b"", "empty"),
        "truncated": (full[: len(full) // 3], "truncated"),
        "html": (b"<html><body>hello</body></html>", "not an image"),
    }
    out = {}
    for name, (data, words) in files.items():
        p = folder / f"{name}.jpg"  # an image name, so nothing can go by the extension
        p.write_bytes(data)
        out[name] = (p, words)
    Image.new("RGB", (1, 1), (200, 30, 30)).save(folder / "one_pixel.png")
    out["one_pixel"] = (folder / "one_pixel.png", "1x1 px")
    out["huge"] = (huge_png(folder / "huge.png"), "too large")
    return out


def noise_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


def stop(proc, timeout: float = 15) -> None:
    """Terminate a server subprocess; kill it if it does not exit within `timeout` seconds."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
