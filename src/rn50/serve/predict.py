"""Top-k classes of photos from an rn50 checkpoint (PyTorch) or an exported ONNX model.

The PyTorch backend preprocesses with rn50's own EvalTransform and normalize, using the
checkpoint's config (resolution, crop_ratio), so a prediction sees exactly what `rn50 eval`
sees. Image checks and decoding are shared with the app and the Space
(rn50.serve.space_template.inference); the ONNX backend uses that file's numpy preprocessing, which
the tests check pixel for pixel against EvalTransform.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rn50.checkpoint import check_classes, load_checkpoint, load_weights
from rn50.config import Config, from_dict
from rn50.data.schedule import eval_resolution
from rn50.errors import CheckpointError, UserError
from rn50.serve.space_template.inference import (
    INFO_FILE,
    Classifier,
    ImageError,
    ModelFileError,
    ModelInfo,
    OnnxModel,
    Prediction,
)

__all__ = ["ImageError", "Prediction", "Predictor", "example_images", "load_for_inference"]

# Photos bundled with scikit-image (no download): what the app offers as examples, what the
# ONNX export is checked on, and what the Space folder ships.
EXAMPLES = {
    "chelsea_cat": "chelsea",
    "coffee": "coffee",
    "rocket": "rocket",
    "astronaut": "astronaut",
}


def load_for_inference(path: str | Path) -> tuple[torch.nn.Module, Config, ModelInfo]:
    """A checkpoint -> (model in eval mode on the CPU, its config, classes and preprocessing).

    Raises CheckpointError with one line for a file that is not an rn50 checkpoint, has no
    class list (an initial_model.pth), or whose weights do not fit its class count (see
    rn50.checkpoint.load_weights, which also accepts DDP / torch.compile name prefixes).
    """
    from rn50.model import build_model

    state = load_checkpoint(path)
    if not state.get("config") or not state.get("classes"):
        raise CheckpointError(
            f"'{path}' holds weights only, without the config and class names needed to "
            f"predict (an initial_model.pth?); use model_best.pth or checkpoint_epoch_NNN.pth"
        )
    cfg = from_dict(state["config"])
    check_classes(state, cfg.model.num_classes, path)
    names = state.get("names") or state["classes"]
    if len(names) != len(state["classes"]):
        raise CheckpointError(
            f"'{path}' lists {len(state['classes'])} classes but {len(names)} names; "
            f"the checkpoint is damaged"
        )
    model = build_model(cfg.model)
    load_weights(
        model, state["model"], path,
        f"the checkpoint is damaged or not for {cfg.model.arch} with {cfg.model.num_classes} "
        f"classes",
    )  # fmt: skip
    model.eval()
    info = ModelInfo(
        arch=cfg.model.arch,
        classes=list(state["classes"]),
        names=list(names),
        resolution=eval_resolution(cfg.data),  # what validation measured
        crop_ratio=cfg.data.crop_ratio,
        epoch=state.get("epoch"),
        best_top1=state.get("best_top1"),
        # Not torchvision's network as it is: what rebuilds it must know (rn50.model).
        extra={"blurpool": True} if cfg.model.blurpool else {},
        flip=cfg.eval.flip,  # what validation measured
    )
    return model, cfg, info


class TorchBackend:
    """The checkpoint's network in fp32 on `device`, fed by rn50's eval transform."""

    def __init__(self, model: torch.nn.Module, info: ModelInfo, device: str = "cpu"):
        from rn50.data.transforms import EvalTransform

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.transform = EvalTransform(info.resolution, info.crop_ratio)
        self.num_outputs = info.num_classes

    def preprocess(self, images: Sequence[Image.Image], info: ModelInfo) -> torch.Tensor:
        """PIL images -> the normalized float batch (N x 3 x R x R) on the device, by the eval
        transform."""
        from rn50.data.batch import normalize

        batch = torch.stack([self.transform(im) for im in images]).to(self.device)
        return normalize(batch, channels_last=False)

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.model(batch).float().cpu().numpy()


class Predictor(Classifier):
    """Images -> top-k (label index, wnid, name, probability), from a checkpoint or ONNX file."""

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "cpu", flip: bool | None = None
    ) -> "Predictor":
        """PyTorch backend over an rn50 checkpoint (loaded with weights_only=True); flip TTA
        as the checkpoint's eval.flip unless `flip` says otherwise."""
        model, _, info = load_for_inference(path)
        if flip is not None:
            info.flip = flip
        backend = TorchBackend(model, info, device)
        return cls(backend, info, preprocess_fn=backend.preprocess)

    @classmethod
    def from_onnx(
        cls, path: str | Path, classes: str | Path | None = None, flip: bool | None = None
    ) -> "Predictor":
        """ONNX Runtime backend over `rn50 export --format onnx` output; the classes file
        defaults to the one written beside it. Flip TTA as the classes file's "flip" unless
        `flip` says otherwise."""
        path = Path(path)
        if classes is None:  # beside an `rn50 export` output, or inside a Space folder
            beside = classes_path(path)
            classes = beside if beside.is_file() else path.with_name(INFO_FILE)
        try:
            model = OnnxModel(path)  # the model file first: it is what the user named
            info = ModelInfo.load(classes)
            if flip is not None:
                info.flip = flip
            return cls(model, info)
        except ModelFileError as e:
            raise UserError(str(e)) from None


def classes_path(model_file: Path) -> Path:
    """model_best.onnx -> model_best.classes.json: what `rn50 export` writes beside a model."""
    return model_file.with_name(model_file.stem + ".classes.json")


def example_images() -> dict[str, Image.Image]:
    """Real photos shipped inside scikit-image (a cat, coffee, a rocket, an astronaut)."""
    import skimage.data

    return {name: Image.fromarray(getattr(skimage.data, fn)()) for name, fn in EXAMPLES.items()}


def write_examples(folder: str | Path) -> list[Path]:
    """Save the example photos as JPEGs (what a user would upload) in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, img in example_images().items():
        paths.append(folder / f"{name}.jpg")
        img.save(paths[-1], quality=92)
    return paths


def format_table(records: Sequence[dict]) -> str:
    """`rn50 predict`'s table: per image, rank, class id, name and probability."""
    lines = []
    for r in records:
        lines.append(r["image"])
        if "error" in r:
            lines.append(f"  error: {r['error']}")
            continue
        width = max(len(p["name"]) for p in r["top"])
        for p in r["top"]:
            lines.append(
                f"  {p['rank']}. {p['wnid']:<12} {p['name']:<{width}}  "
                f"{100 * p['probability']:6.2f}%"
            )
    return "\n".join(lines)
