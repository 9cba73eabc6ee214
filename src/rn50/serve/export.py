"""Export a checkpoint: plain weights (safetensors), ONNX, TorchScript, a Hugging Face Space.

Every exported model file carries the same JSON (class ids and names, arch, resolution,
crop_ratio, flip) in its own metadata, and a `<name>.classes.json` copy is written beside it,
so a model file is never separated from the meaning of its outputs.

Flip test-time augmentation (eval.flip) is not baked into the graphs: every format holds the
plain network (the safetensors load into torchvision, the ONNX and TorchScript files compute
its logits), and `"flip": true` in the JSON tells the runner to average the logits of each
image and of its mirror, as rn50 predict and the Space's inference.py do. One implementation
serves every backend, and the same file serves with or without it.
"""

import importlib.metadata
import io
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from rn50.data import image
from rn50.errors import UserError
from rn50.fileio import atomic_write_text, atomic_write_with
from rn50.serve.predict import (
    EXAMPLES,
    classes_path,
    example_images,
    load_for_inference,
    write_examples,
)
from rn50.serve.space_template.inference import (
    INFO_FILE,
    ModelFileError,
    ModelInfo,
    OnnxModel,
    eval_resize_size,
    preprocess,
)

FORMATS = ("safetensors", "onnx", "torchscript")
SUFFIXES = {"safetensors": ".safetensors", "onnx": ".onnx", "torchscript": ".torchscript.pt"}
SPACE_BACKENDS = ("onnx", "torch")
# ONNX Runtime and PyTorch sum in different orders; in fp32 their logits differ by ~1e-6 of
# the logit scale (4.6e-5 at logits of ~100 for ResNet-50). An export that is wrong differs
# by whole units, so 1e-4 of the scale separates the two with room to spare.
ONNX_REL_TOLERANCE = 1e-4
TEMPLATE = Path(__file__).parent / "space_template"
SPACE_FILES = ("app.py", "inference.py", "ui.py")
# The one image reader, copied verbatim beside inference.py (which imports it as `image`).
READER = Path(image.__file__)
LFS_ATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in ("*.onnx", "*.safetensors", "*.jpg")
)


class ExportCheckError(UserError):
    """An exported model that does not compute what the checkpoint computes."""


def default_output(checkpoint: str | Path, fmt: str) -> Path:
    """runs/x/model_best.pth -> runs/x/model_best.onnx (etc.)."""
    return Path(checkpoint).with_suffix("").with_suffix(SUFFIXES[fmt])


def check_batch(info: ModelInfo) -> np.ndarray:
    """The example photos, preprocessed as the Space does: the batch exports are checked on."""
    return preprocess(list(example_images().values()), info)


def torch_logits(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    """PyTorch's logits (N x classes, float32) of a preprocessed batch (N x 3 x R x R)."""
    with torch.inference_mode():
        return model(torch.from_numpy(batch)).float().numpy()


def export_safetensors(model: torch.nn.Module, info: ModelInfo, out: Path) -> Path:
    """The state_dict as safetensors: loads into torchvision's model of the same arch with
    load_state_dict(strict=True); the metadata holds the classes JSON under "rn50"."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save(tensors, metadata={"format": "pt", "rn50": info.to_json()})
    atomic_write_with(out, lambda f: f.write(data))
    return out


def flip_line(info: ModelInfo) -> str:
    """What an export says about flip TTA: empty when off."""
    if not info.flip:
        return ""
    return (
        "Flip TTA (eval.flip) is on: the file holds the plain network; classes.json says "
        '"flip": true, and rn50 predict and the Space average the logits of each image and of '
        "its mirror"
    )


def architecture_line(info: ModelInfo) -> str:
    """What network a safetensors file's state_dict loads into (the file holds tensors only)."""
    build = f"{info.arch}(num_classes={info.num_classes})"
    if info.extra.get("blurpool"):
        return (
            f"Architecture: torchvision's {build} with FFCV's BlurPool (model.blurpool: true); "
            f"build it with rn50.model.build_model(ModelConfig(arch='{info.arch}', "
            f"num_classes={info.num_classes}, blurpool=True)), then load_state_dict(strict=True)"
        )
    return f"Architecture: torchvision.models.{build}; load_state_dict(strict=True)"


def export_onnx(model: torch.nn.Module, info: ModelInfo, out: Path) -> float:
    """ONNX with a dynamic batch axis ("images" float32 N x 3 x R x R -> "logits" N x classes),
    kept only when ONNX Runtime's logits on the example photos match PyTorch's; returns the
    largest absolute logit difference."""
    import onnx

    model = model.float().cpu().eval()
    dummy = torch.zeros(2, 3, info.resolution, info.resolution)
    with tempfile.TemporaryDirectory(prefix="rn50-onnx-") as tmp:
        raw = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter chatter about its own internals
            _onnx_export(model, dummy, raw)
        proto = onnx.load(str(raw))
        proto.metadata_props.add(key="rn50", value=info.to_json())
        checked = Path(tmp) / "checked.onnx"
        onnx.save(proto, str(checked))
        # A batch of 4 (the export traced 2) also proves the batch axis is dynamic.
        batch = check_batch(info)
        expected = torch_logits(model, batch)
        runtime = OnnxModel(checked)
        diff = max(
            float(np.abs(runtime(batch) - expected).max()),
            float(np.abs(runtime(batch[:1]) - expected[:1]).max()),
        )
        bound = ONNX_REL_TOLERANCE * max(1.0, float(np.abs(expected).max()))
        if not diff <= bound:
            raise ExportCheckError(
                f"ONNX Runtime's logits differ from PyTorch's by {diff:.3g} (bound {bound:.3g}) "
                f"on the example photos; '{out}' was not written"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(checked), str(out))
    return diff


def _onnx_export(model: torch.nn.Module, dummy: torch.Tensor, path: Path) -> None:
    """torch.onnx.export with a dynamic batch axis: the torch.export-based exporter where
    this torch's export takes dynamic_shapes, else the TorchScript-based one that older
    releases (2.4) use; export_onnx checks the result the same way either way."""
    import inspect

    names = {"input_names": ["images"], "output_names": ["logits"], "verbose": False}
    if "dynamic_shapes" in inspect.signature(torch.onnx.export).parameters:
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,  # one self-contained file (ResNet-50 is ~100 MB < 2 GB)
            **names,
        )
    else:
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            **names,
        )


def export_torchscript(model: torch.nn.Module, info: ModelInfo, out: Path) -> float:
    """A traced TorchScript module (for runtimes that still take TorchScript: LibTorch, older
    TorchServe); the classes JSON is the archive's extra file "rn50.json". Returns the largest
    absolute logit difference from the eager model on the example photos."""
    model = model.float().cpu().eval()
    batch = torch.from_numpy(check_batch(info))
    with warnings.catch_warnings():
        # PyTorch 2.14 marks torch.jit as deprecated; the format is still what LibTorch loads.
        warnings.simplefilter("ignore", FutureWarning)
        with torch.inference_mode():
            traced = torch.jit.trace(model, batch[:2], check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={"rn50.json": info.to_json()})
    with torch.inference_mode():
        diff = float((traced(batch) - model(batch)).abs().max())
    atomic_write_with(out, lambda f: f.write(buffer.getvalue()))
    return diff


def _earlier_export(classes_file: Path) -> bool:
    """Whether `classes_file` is a classes JSON that rn50 export wrote (beside a model file, or
    in a Space folder): what marks files rn50 may replace."""
    try:
        ModelInfo.load(classes_file)
    except (ModelFileError, OSError, ValueError):
        return False
    return True


def check_export_target(
    checkpoint: str | Path, fmt: str, out: str | Path | None, overwrite: bool = False
) -> Path:
    """The file `export_model` would write for `fmt` (`out`, default beside the checkpoint),
    checked before any work: it (or its .classes.json) is never the checkpoint itself, and an
    existing file is replaced only when it is an earlier export (its .classes.json is rn50's)
    or with `overwrite`. Raises UserError with one line otherwise."""
    target = Path(out) if out else default_output(checkpoint, fmt)
    source = Path(checkpoint)
    for path in (target, classes_path(target)):
        if path.exists() and source.exists() and path.samefile(source):
            raise UserError(
                f"--out {target} would replace the checkpoint '{checkpoint}' itself; name "
                f"another file"
            )
    if target.exists() and not overwrite and not _earlier_export(classes_path(target)):
        raise UserError(
            f"--out {target} exists and is not an earlier rn50 export (no "
            f"{classes_path(target).name} beside it); name a new file, or pass --overwrite "
            f"to replace it"
        )
    return target


def check_space_target(folder: str | Path, overwrite: bool = False) -> Path:
    """A --space folder `export_space` may write into: new, empty, an earlier rn50 Space export
    (its classes.json is rn50's), or anything with `overwrite`. Raises UserError with one line
    naming a few of the files a user's folder holds."""
    folder = Path(folder)
    if not folder.is_dir() or overwrite:
        return folder
    held = sorted(p.name for p in folder.iterdir())
    if held and not _earlier_export(folder / INFO_FILE):
        shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise UserError(
            f"--space {folder} is not empty ({shown}) and is not an earlier rn50 Space export; "
            f"pass a new or empty folder, or --overwrite to replace the files export writes"
        )
    return folder


def export_model(checkpoint: str | Path, fmt: str, out: str | Path | None = None) -> str:
    """Export one format; returns the lines to print."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}'; use one of {', '.join(FORMATS)}")
    model, _, info = load_for_inference(checkpoint)
    out = Path(out) if out else default_output(checkpoint, fmt)
    lines = []
    if fmt == "safetensors":
        export_safetensors(model, info, out)
        lines.append(architecture_line(info))
    elif fmt == "onnx":
        diff = export_onnx(model, info, out)
        lines.append(
            f"ONNX Runtime vs PyTorch on {len(EXAMPLES)} example photos: "
            f"max |logit difference| = {diff:.3g}"
        )
    else:
        diff = export_torchscript(model, info, out)
        lines.append(f"TorchScript vs eager PyTorch: max |logit difference| = {diff:.3g}")
    atomic_write_text(classes_path(out), info.to_json())
    lines += [flip_line(info)] if info.flip else []
    lines.append(f"Wrote {out} and {classes_path(out)}")
    return "\n".join(lines)


def requirements(backend: str) -> str:
    """The Space's requirements.txt: the versions tested here, pinned."""
    names = ["gradio", "numpy", "pillow"]
    names += ["onnxruntime"] if backend == "onnx" else ["torch", "torchvision", "safetensors"]
    return "".join(f"{n}=={importlib.metadata.version(n)}\n" for n in names)


def space_readme(info: ModelInfo, backend: str, title: str) -> str:
    """The Space's README.md: its metadata (Gradio SDK and version) and the model card, from the
    template."""
    template = (TEMPLATE / "README.md").read_text(encoding="utf-8")
    top1 = f"{info.best_top1:.2f}%" if info.best_top1 is not None else "n/a"
    values = {
        "title": title,
        "gradio_version": importlib.metadata.version("gradio"),
        "arch": info.arch,
        "num_classes": str(info.num_classes),
        "resolution": str(info.resolution),
        "resize": str(eval_resize_size(info.resolution, info.crop_ratio)),
        "epoch": str(info.epoch if info.epoch is not None else "n/a"),
        "top1": top1,
        "runtime": "ONNX Runtime" if backend == "onnx" else "PyTorch",
        "weights": "model.onnx" if backend == "onnx" else "model.safetensors",
        "tta": (
            " With flip test-time augmentation (`\"flip\": true` in classes.json), the logits "
            "of the image and of its mirror image are averaged." if info.flip else ""
        ),
    }
    for key, value in values.items():
        template = template.replace("{{" + key + "}}", value)
    return template


def export_space(
    checkpoint: str | Path, folder: str | Path, backend: str = "onnx", title: str = "rn50"
) -> str:
    """Write a folder ready to push to a Hugging Face Space (Gradio SDK, CPU): app.py,
    inference.py, ui.py, image.py (rn50's image reader), requirements.txt, README.md with the
    Space metadata, the weights (model.onnx, or model.safetensors for a PyTorch Space),
    classes.json, examples/ and a .gitattributes that puts the binaries in Git LFS."""
    if backend not in SPACE_BACKENDS:
        raise UserError(f"unknown Space backend '{backend}'; use onnx or torch")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"'{folder}' exists and is not a folder; pass a folder for --space")
    model, _, info = load_for_inference(checkpoint)
    if backend == "torch" and info.extra.get("blurpool"):
        raise UserError(
            f"'{checkpoint}' is a BlurPool model (model.blurpool), which the Space's PyTorch "
            f"backend (torchvision's {info.arch}) cannot build; use --space-backend onnx"
        )
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    if backend == "onnx":
        diff = export_onnx(model, info, folder / "model.onnx")
        lines.append(f"ONNX Runtime vs PyTorch: max |logit difference| = {diff:.3g}")
        stale = folder / "model.safetensors"
    else:
        export_safetensors(model, info, folder / "model.safetensors")
        stale = folder / "model.onnx"
    # The Space loads model.onnx when there is one: a previous export's file must not win.
    stale.unlink(missing_ok=True)
    atomic_write_text(folder / INFO_FILE, info.to_json())
    for name in SPACE_FILES:
        shutil.copyfile(TEMPLATE / name, folder / name)
    shutil.copyfile(READER, folder / "image.py")
    # Hugging Face refuses files over 10 MB outside Git LFS; these are the weights.
    atomic_write_text(folder / ".gitattributes", LFS_ATTRIBUTES)
    atomic_write_text(folder / "requirements.txt", requirements(backend))
    atomic_write_text(folder / "README.md", space_readme(info, backend, title))
    write_examples(folder / "examples")
    lines += [flip_line(info)] if info.flip else []
    lines.append(f"Wrote a Hugging Face Space to {folder} ({info.arch}, {backend} backend)")
    return "\n".join(lines)
