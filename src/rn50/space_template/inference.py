"""Classify photos with an exported rn50 model: image checks, eval preprocessing, top-k.

Self-contained on purpose (numpy and Pillow; onnxruntime or torch only when a model of that
kind is loaded): a Hugging Face Space runs this file as it is, next to `model.onnx` or
`model.safetensors` and `classes.json`, and rn50 imports the same file
(`rn50.space_template.inference`), so the CLI, `rn50 app` and the Space check and decode
images with one piece of code and give the same answers.
"""

import io
import json
import math
import os
import re
import stat
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Above the largest phone photos (108 MP sensors bin to 12 MP; 50 MP full-size files are rare).
# Decoding 100 MP to RGB takes ~300 MB; a 20000 x 20000 upload (400 MP, 1.2 GB) is refused.
MAX_PIXELS = 100_000_000
# Smaller than this is a mistake (a tracking pixel, an icon), not a photo to classify.
MIN_SIDE = 8
# ImageNet channel statistics in the 0..255 scale, as float32 like rn50.data.batch.normalize,
# so both compute (x - mean) / std with the same float32 numbers.
MEAN_255 = np.array([0.485 * 255, 0.456 * 255, 0.406 * 255], dtype=np.float32)
STD_255 = np.array([0.229 * 255, 0.224 * 255, 0.225 * 255], dtype=np.float32)
INFO_FORMAT = "rn50-model-info"
INFO_FILE = "classes.json"


class ImageError(ValueError):
    """A file or upload that cannot be classified; the message says why in one line."""


class ModelFileError(ValueError):
    """A model or classes file that is missing, damaged or does not fit the other."""


class Prediction(NamedTuple):
    """One of the top-k classes of an image."""

    index: int  # output unit = label index (position of the wnid in sorted order)
    wnid: str  # class id: the dataset folder name, e.g. n02504458
    name: str  # human-readable name, e.g. "African elephant"
    probability: float  # softmax probability, 0..1


@dataclass
class ModelInfo:
    """What a served model needs besides its weights: classes and the eval preprocessing."""

    arch: str
    classes: list[str]
    names: list[str]
    resolution: int  # side of the square center crop fed to the network, px
    crop_ratio: float  # the short side is resized to floor(resolution / crop_ratio) first
    epoch: int | None = None
    best_top1: float | None = None  # val top-1 of the checkpoint, percent
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not self.classes or len(self.names) != len(self.classes):
            raise ModelFileError(
                f"class list has {len(self.classes)} ids but {len(self.names)} names"
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def summary(self) -> str:
        """One line for people: what model answers."""
        parts = [f"{self.arch}, {self.num_classes} classes, {self.resolution} px center crop"]
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}")
        if self.best_top1 is not None:
            parts.append(f"val top-1 {self.best_top1:.2f}%")
        return "Trained with rn50: " + ", ".join(parts) + "."

    def to_json(self) -> str:
        return json.dumps({"format": INFO_FORMAT, **asdict(self)}, indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, source: str = "classes.json") -> "ModelInfo":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelFileError(f"{source} is not JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(d, dict) or d.pop("format", None) != INFO_FORMAT:
            raise ModelFileError(f"{source} is not an rn50 classes file (no '{INFO_FORMAT}' tag)")
        try:
            return cls(**d)
        except TypeError as e:
            raise ModelFileError(f"{source} has unexpected fields ({e})") from None

    @classmethod
    def load(cls, path: str | Path) -> "ModelInfo":
        p = Path(path)
        if not p.is_file():
            raise ModelFileError(f"no classes file at '{p}'")
        return cls.from_json(p.read_text(encoding="utf-8"), str(p))


# ---------------------------------------------------------------------------------------------
# Decoding and checking one image


def _read_file(p: Path) -> bytes:
    """The bytes of a regular file, or ImageError saying what `p` is instead (a FIFO would
    block a read forever, a device never end it)."""
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise ImageError(f"no such file: '{p}'") from None
    except OSError as e:  # a link loop, a folder that cannot be entered
        raise ImageError(f"cannot read '{p}' ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        what = "a folder" if stat.S_ISDIR(mode) else "a FIFO, socket or device"
        raise ImageError(f"'{p}' is {what}, not an image file")
    try:
        return p.read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read '{p}' ({e.strerror or e})") from None


def open_image(source: str | Path | bytes | Image.Image) -> tuple[Image.Image, str]:
    """Decode a file path, bytes or PIL image into an RGB image, or raise ImageError.

    Returns (image, note); the note says what was converted ("" when nothing was), e.g.
    "CMYK converted to RGB". Refuses non-images, truncated files, images below MIN_SIDE px
    or above MAX_PIXELS, before decoding the pixels where the header tells.
    """
    if isinstance(source, Image.Image):
        _check_size(*source.size)
        return _to_rgb(source)
    if isinstance(source, (str, Path)):
        data = _read_file(Path(source))
    else:
        data = bytes(source)
    if not data:
        raise ImageError("the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit (89 MP); ours (MAX_PIXELS) is checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        m = re.search(r"\((\d+) pixels\)", str(e))
        pixels = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
        raise ImageError(_too_large(pixels)) from None
    except UnidentifiedImageError:
        raise ImageError(
            "not an image file Pillow can read (use JPEG, PNG, WebP, GIF, BMP or TIFF)"
        ) from None
    except Exception as e:  # a damaged header raises whatever its plugin raises
        raise ImageError(f"the image header is damaged ({_first_line(e)})") from None
    _check_size(*img.size)
    try:
        img.load()  # decode now: a truncated or corrupt file fails here, not in the model
    except Exception as e:
        raise ImageError(f"the image is truncated or corrupt ({_first_line(e)})") from None
    try:
        # Phone photos are stored sideways with an EXIF orientation tag; show what people see.
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        pass
    return _to_rgb(img)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def _too_large(pixels: str) -> str:
    return (
        f"the image is too large ({pixels}); the limit is {MAX_PIXELS // 1_000_000} megapixels, "
        f"so downscale it first"
    )


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageError(_too_large(f"{width}x{height} px"))
    if min(width, height) < MIN_SIDE:
        raise ImageError(
            f"the image is {width}x{height} px; at least {MIN_SIDE}x{MIN_SIDE} px is needed"
        )


def _to_rgb(img: Image.Image) -> tuple[Image.Image, str]:
    """Any Pillow mode -> 8-bit RGB, keeping what a person would see."""
    mode = img.mode
    if mode == "RGB":
        return img, ""
    if mode == "L":
        return img.convert("RGB"), ""
    if mode.startswith("I") or mode == "F":
        # 16-bit and float images: Pillow's convert clips to 0..255, which turns an ordinary
        # 16-bit photo white; scale the full range down instead.
        a = np.asarray(img).astype(np.float64)
        if mode == "F":
            a = a * 255.0 if a.max(initial=0.0) <= 1.0 else a
        elif mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / 257.0  # 65535 -> 255
        gray = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        return gray.convert("RGB"), f"{_mode_name(mode)} scaled to 8-bit RGB"
    if "A" in mode or "a" in mode or (mode == "P" and "transparency" in img.info):
        # Transparent pixels carry arbitrary colours (often black); show them as white paper.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return (
            Image.alpha_composite(background, rgba).convert("RGB"),
            f"{_mode_name(mode)} flattened onto white",
        )
    try:
        return img.convert("RGB"), f"{_mode_name(mode)} converted to RGB"
    except Exception:
        raise ImageError(f"colour mode {mode} is not supported; save the image as RGB") from None


def _mode_name(mode: str) -> str:
    names = {"P": "palette", "PA": "palette+alpha", "LA": "grayscale+alpha", "1": "1-bit"}
    if mode.startswith("I;16") or mode == "I":
        return "16-bit"
    if mode == "F":
        return "floating-point"
    return names.get(mode, mode)


# ---------------------------------------------------------------------------------------------
# Preprocessing: the eval transform of training, in numpy and Pillow


def eval_resize_size(resolution: int, crop_ratio: float) -> int:
    """Short side before the center crop: 224 / 0.875 = 256 (as rn50.data.transforms)."""
    return math.floor(resolution / crop_ratio)


def eval_crop(img: Image.Image, resolution: int, crop_ratio: float) -> np.ndarray:
    """RGB image -> uint8 (resolution, resolution, 3): resize the short side, center-crop.

    Pixel for pixel what torchvision's Resize(size) + CenterCrop(resolution) do to a PIL
    image (bilinear with antialiasing, the same output size and crop offsets); the tests
    check equality with rn50's EvalTransform.
    """
    size = eval_resize_size(resolution, crop_ratio)
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    top = int(round((new_h - resolution) / 2.0))
    left = int(round((new_w - resolution) / 2.0))
    img = img.crop((left, top, left + resolution, top + resolution))
    return np.asarray(img, dtype=np.uint8)


def normalize(batch: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) with ImageNet mean and std."""
    x = (batch.astype(np.float32) - MEAN_255) / STD_255
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def preprocess(images: Sequence[Image.Image], info: ModelInfo) -> np.ndarray:
    """RGB images -> the float32 NCHW batch the network takes."""
    return normalize(np.stack([eval_crop(im, info.resolution, info.crop_ratio) for im in images]))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def top_k(probs: np.ndarray, info: ModelInfo, k: int = 5) -> list[Prediction]:
    """The k most probable classes of one image, most probable first."""
    order = np.argsort(-probs, kind="stable")[: min(k, len(probs))]
    return [
        Prediction(int(i), info.classes[i], info.names[i], float(probs[i])) for i in order
    ]


# ---------------------------------------------------------------------------------------------
# Models: a callable float32 NCHW batch -> float32 (N, classes) logits


class OnnxModel:
    """An ONNX file run by ONNX Runtime on the CPU."""

    def __init__(self, path: str | Path):
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:
            reason = _first_line(e)
            raise ModelFileError(f"'{path}' is not a loadable ONNX model ({reason})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.num_outputs = self.session.get_outputs()[0].shape[-1]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


class TorchModel:
    """A torchvision model with plain safetensors weights, run by PyTorch on the CPU."""

    def __init__(self, path: str | Path, info: ModelInfo):
        import torch
        import torchvision
        from safetensors.torch import load_file

        self.torch = torch
        try:
            weights = load_file(str(path))  # safetensors: tensors only, nothing to execute
        except Exception as e:
            raise ModelFileError(f"'{path}' is not a safetensors file ({_first_line(e)})") from None
        self.model = torchvision.models.get_model(
            info.arch, weights=None, num_classes=info.num_classes
        )
        try:
            self.model.load_state_dict(weights, strict=True)
        except RuntimeError as e:
            raise ModelFileError(
                f"'{path}' does not fit {info.arch} with {info.num_classes} classes "
                f"({_first_line(e)})"
            ) from None
        self.model.eval()
        self.num_outputs = info.num_classes

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(batch)).float().numpy()


class Classifier:
    """Images in, top-k classes out, over any model callable (ONNX, PyTorch, ...)."""

    def __init__(
        self,
        model: Callable[[np.ndarray], np.ndarray],
        info: ModelInfo,
        preprocess_fn: Callable[[Sequence[Image.Image], ModelInfo], np.ndarray] = preprocess,
        batch_size: int = 16,
    ):
        outputs = getattr(model, "num_outputs", None)
        if isinstance(outputs, int) and outputs != info.num_classes:
            raise ModelFileError(
                f"the model has {outputs} outputs but the classes file lists "
                f"{info.num_classes} classes; export both from the same checkpoint"
            )
        self.model = model
        self.info = info
        self.preprocess_fn = preprocess_fn
        self.batch_size = batch_size  # bounds memory when classifying many files at once

    @classmethod
    def from_folder(cls, folder: str | Path) -> "Classifier":
        """A folder written by `rn50 export --space`: classes.json + model.onnx or
        model.safetensors (ONNX preferred: no PyTorch needed)."""
        folder = Path(folder)
        info = ModelInfo.load(folder / INFO_FILE)
        if (folder / "model.onnx").is_file():
            return cls(OnnxModel(folder / "model.onnx"), info)
        if (folder / "model.safetensors").is_file():
            return cls(TorchModel(folder / "model.safetensors", info), info)
        raise ModelFileError(f"no model.onnx or model.safetensors in '{folder}'")

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images -> (N, classes) softmax probabilities."""
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = self.preprocess_fn(images[i : i + self.batch_size], self.info)
            out.append(softmax(np.asarray(self.model(batch))))
        return np.concatenate(out) if out else np.zeros((0, self.info.num_classes))

    def predict(self, images: Sequence[Image.Image], k: int = 5) -> list[list[Prediction]]:
        return [top_k(p, self.info, k) for p in self.probabilities(images)]

    def predict_file(
        self, source: str | Path | bytes | Image.Image, k: int = 5
    ) -> tuple[list[Prediction], str]:
        """Check, decode and classify one image: (top-k, conversion note); ImageError if bad."""
        img, note = open_image(source)
        return self.predict([img], k)[0], note

    def predict_files(self, paths: Sequence[str], k: int = 5) -> list[dict]:
        """One record per file, in order: {"image", "top": [{"rank", "index", "wnid", "name",
        "probability"}, ...]}, or {"image", "error"} for a file that cannot be classified.
        (The JSON of `rn50 predict --json` and of the Space's `python app.py --json`.)"""
        records = []
        for path in paths:
            try:
                preds = self.predict_file(path, k)[0]
            except ImageError as e:
                records.append({"image": str(path), "error": str(e)})
                continue
            top = [{"rank": r, **p._asdict()} for r, p in enumerate(preds, 1)]
            records.append({"image": str(path), "top": top})
        return records
