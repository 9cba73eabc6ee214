"""Classify photos with an exported rn50 model: eval preprocessing, models, top-k.

Self-contained on purpose (numpy and Pillow; onnxruntime or torch only when a model of that
kind is loaded): a Hugging Face Space runs this file as it is, next to `model.onnx` or
`model.safetensors`, `classes.json` and `image.py`, and rn50 imports the same file
(`rn50.serve.space_template.inference`). Images are checked and decoded by rn50's one image
reader (rn50.data.image, which `rn50 export --space` copies beside this file as image.py), so
the CLI, `rn50 app`, the Space and training see the same pixels and give the same answers.
"""

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

# ImageError is re-exported: app.py (rn50's and the Space's) catches it from here.
try:  # inside rn50
    from rn50.data.image import ImageError as ImageError
    from rn50.data.image import first_line, open_image
except ModuleNotFoundError:  # in the Space folder, where image.py is a copy beside this file
    from image import ImageError as ImageError
    from image import first_line, open_image

# ImageNet channel statistics in the 0..255 scale, as float32 like rn50.data.batch.normalize,
# so both compute (x - mean) / std with the same float32 numbers.
MEAN_255 = np.array([0.485 * 255, 0.456 * 255, 0.406 * 255], dtype=np.float32)
STD_255 = np.array([0.229 * 255, 0.224 * 255, 0.225 * 255], dtype=np.float32)
INFO_FORMAT = "rn50-model-info"
INFO_FILE = "classes.json"
# What the page says when flip test-time augmentation is on.
FLIP_LINE = (
    "Flip test-time augmentation is on: each photo's logits are the mean of the network's "
    "logits for the photo and for its mirror image."
)


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
    # Flip test-time augmentation (rn50's eval.flip): the model file is the plain network, and
    # whoever runs it averages the logits of each image and of its horizontal mirror
    # (Classifier.logits does). Absent from older classes files: off.
    flip: bool = False

    def __post_init__(self):
        if not self.classes or len(self.names) != len(self.classes):
            raise ModelFileError(
                f"class list has {len(self.classes)} ids but {len(self.names)} names"
            )

    @property
    def num_classes(self) -> int:
        """The number of classes (outputs of the model)."""
        return len(self.classes)

    def summary(self) -> str:
        """One line for people: what model answers."""
        parts = [f"{self.arch}, {self.num_classes} classes, {self.resolution} px center crop"]
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}")
        if self.best_top1 is not None:
            parts.append(f"val top-1 {self.best_top1:.2f}%")
        line = "Trained with rn50: " + ", ".join(parts) + "."
        return line + ("\n\n" + FLIP_LINE if self.flip else "")

    def to_json(self) -> str:
        """This info as the JSON of classes.json."""
        return json.dumps({"format": INFO_FORMAT, **asdict(self)}, indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, source: str = "classes.json") -> "ModelInfo":
        """Parse classes.json text (`source` names it in errors); raises ModelFileError."""
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
        """Read a classes.json file; raises ModelFileError when it is missing or not rn50's."""
        p = Path(path)
        if not p.is_file():
            raise ModelFileError(f"no classes file at '{p}'")
        return cls.from_json(p.read_text(encoding="utf-8"), str(p))


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


def mirror(batch: Any) -> Any:
    """The horizontal mirror of an NCHW batch: a numpy array (copied contiguous, as ONNX
    Runtime and torch.from_numpy need) or a torch tensor (rn50's PyTorch backend)."""
    if isinstance(batch, np.ndarray):
        return np.ascontiguousarray(batch[..., ::-1])
    return batch.flip(-1)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities of logits (N x classes) along the last axis, computed stably in float64."""
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
            reason = first_line(e)
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
            raise ModelFileError(f"'{path}' is not a safetensors file ({first_line(e)})") from None
        self.model = torchvision.models.get_model(
            info.arch, weights=None, num_classes=info.num_classes
        )
        try:
            self.model.load_state_dict(weights, strict=True)
        except RuntimeError as e:
            raise ModelFileError(
                f"'{path}' does not fit {info.arch} with {info.num_classes} classes "
                f"({first_line(e)})"
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

    def logits(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images -> (N, classes) float32 logits; with info.flip, the mean of the logits
        of each image and of its horizontal mirror (flip test-time augmentation)."""
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = self.preprocess_fn(images[i : i + self.batch_size], self.info)
            logits = np.asarray(self.model(batch), dtype=np.float32)
            if self.info.flip:
                logits = (logits + np.asarray(self.model(mirror(batch)), dtype=np.float32)) / 2
            out.append(logits)
        return np.concatenate(out) if out else np.zeros((0, self.info.num_classes), np.float32)

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images -> (N, classes) softmax probabilities of `logits`."""
        return softmax(self.logits(images))

    def predict(self, images: Sequence[Image.Image], k: int = 5) -> list[list[Prediction]]:
        """The top `k` classes of each image, most likely first."""
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
