"""Flip test-time augmentation (eval.flip): the logits are the mean of the network's logits for
each image and for its mirror, in validation, `rn50 eval`, predict (PyTorch and ONNX) and the
exports; each expected value is computed here from the two passes, independently of rn50's
code path."""

import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from rn50.checkpoint import load_checkpoint
from rn50.cli import main
from rn50.config import from_dict
from rn50.data.batch import normalize
from rn50.data.image import load_rgb
from rn50.data.layout import find_dataset
from rn50.data.transforms import EvalTransform
from rn50.model import build_model
from rn50.runlog import read_metrics
from rn50.serve.predict import Predictor, example_images, load_for_inference
from rn50.serve.space_template.inference import FLIP_LINE, Classifier, ModelInfo, preprocess
from tests.conftest import tiny_config
from tests.serving import make_checkpoint

VAL_LINE = re.compile(r"Val Loss: (\S+) Top-1: (\S+)% Top-5: (\S+)%")


def two_pass_mean(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The expected flip-TTA logits: both passes written out, the mirror by reversed indices."""
    mirrored = x[..., torch.arange(x.shape[-1] - 1, -1, -1)]
    with torch.no_grad():
        return (model(x) + model(mirrored)) / 2


def val_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, top-1 %) as `rn50 eval` prints them."""
    loss = nn.functional.cross_entropy(logits, targets).item()
    top1 = 100.0 * (logits.argmax(1) == targets).float().mean().item()
    return loss, top1


def assert_printed(got: tuple[float, float], want: tuple[float, float]) -> None:
    """(loss, top-1) as printed (4 and 2 decimals) against the exact values."""
    assert got[0] == pytest.approx(want[0], abs=1e-4) and got[1] == pytest.approx(want[1], abs=6e-3)


def run_eval(capsys, *argv) -> tuple[float, float, str]:
    capsys.readouterr()
    assert main(["eval", *map(str, argv)]) == 0
    out = capsys.readouterr().out
    m = VAL_LINE.search(out)
    assert m, out
    return float(m.group(1)), float(m.group(2)), out


@pytest.fixture(scope="module")
def flip_run(tmp_path_factory, tiny_data):
    """One epoch of ResNet-18 on tiny_data trained with eval.flip on (fp32, PIL decoding)."""
    from rn50.train.loop import fit

    run_dir = tmp_path_factory.mktemp("flip") / "run"
    cfg = tiny_config(
        tiny_data, run_dir,
        model={"arch": "resnet18", "zero_init_residual": "false"},
        train={"epochs": 1, "precision": "fp32"},
        data={"decode": "pil", "hflip": "false"},
        eval={"flip": "true"},
    )
    fit(cfg)
    return run_dir


def expected_val(ckpt, tiny_data) -> dict[str, tuple[float, float]]:
    """The checkpoint's val (loss, top-1) with and without the flip, from PIL + EvalTransform."""
    state = load_checkpoint(ckpt)
    cfg = from_dict(state["config"])
    model = build_model(cfg.model)
    model.load_state_dict(state["model"])
    model.eval()
    index = find_dataset(tiny_data)
    transform = EvalTransform(cfg.data.resolution, cfg.data.crop_ratio)
    x = normalize(torch.stack([transform(load_rgb(p)) for p, _ in index.val]), False)
    y = torch.tensor([label for _, label in index.val])
    with torch.no_grad():
        plain = model(x)
    return {"flip": val_scores(two_pass_mean(model, x), y), "plain": val_scores(plain, y)}


def test_validation_and_eval_use_the_flip_of_the_checkpoint(capsys, flip_run, tiny_data):
    ckpt = flip_run / "checkpoint_epoch_001.pth"
    expected = expected_val(ckpt, tiny_data)
    assert expected["flip"][0] != pytest.approx(expected["plain"][0], abs=1e-3)  # can fail

    logged = read_metrics(flip_run / "metrics.jsonl")[-1]  # validation during training
    assert (logged["val_loss"], logged["val_top1"]) == pytest.approx(expected["flip"], abs=1e-4)

    loss, top1, out = run_eval(capsys, "--checkpoint", ckpt)  # on by default: the checkpoint's
    assert_printed((loss, top1), expected["flip"])
    assert "flip TTA on" in out
    loss, top1, out = run_eval(capsys, "--checkpoint", ckpt, "--no-flip")
    assert_printed((loss, top1), expected["plain"])
    assert "flip TTA off" in out
    with pytest.raises(SystemExit) as stop:  # both: refused, not the last one winning
        main(["eval", "--checkpoint", str(ckpt), "--no-flip", "--flip"])
    assert stop.value.code == 2 and "not allowed with" in capsys.readouterr().err


@pytest.fixture(scope="module")
def flip_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("flipck") / "model_best.pth", flip=True)


@pytest.fixture(scope="module")
def photos():
    return list(example_images().values())


def test_predict_torch_backend_averages_the_two_passes(flip_ckpt, photos):
    model, _, info = load_for_inference(flip_ckpt)
    assert info.flip
    x = torch.from_numpy(preprocess(photos, info))
    with torch.no_grad():
        plain = model(x).numpy()
    expected = two_pass_mean(model, x).numpy()
    assert not np.allclose(expected, plain, atol=1e-3)  # the mirror changes the answer

    got = Predictor.from_checkpoint(flip_ckpt).logits(photos)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(Predictor.from_checkpoint(flip_ckpt, flip=False).logits(photos),
                               plain, atol=1e-5)
    probs = Predictor.from_checkpoint(flip_ckpt).probabilities(photos)
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(expected), 1).numpy(),
                               atol=1e-6)


def test_predict_cli_flip_flags(capsys, flip_ckpt, tmp_path, photos):
    path = tmp_path / "coffee.jpg"
    photos[1].save(path, quality=95)
    model, _, info = load_for_inference(flip_ckpt)
    x = torch.from_numpy(preprocess([load_rgb(path)], info))
    with torch.no_grad():
        answers = {"on": torch.softmax(two_pass_mean(model, x), 1)[0],
                   "off": torch.softmax(model(x), 1)[0]}
    for flags, which in (([], "on"), (["--no-flip"], "off")):
        assert main(["predict", "--checkpoint", str(flip_ckpt), "--json", str(path), *flags]) == 0
        top = json.loads(capsys.readouterr().out)[0]["top"]
        expected = answers[which]
        assert [t["index"] for t in top] == expected.argsort(descending=True)[:5].tolist()
        assert [t["probability"] for t in top] == pytest.approx(
            expected.sort(descending=True).values[:5].tolist(), abs=1e-6)


def test_onnx_export_and_predict_average_the_two_passes(capsys, flip_ckpt, tmp_path, photos):
    import onnxruntime as ort

    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(flip_ckpt), "--format", "onnx",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Flip TTA (eval.flip) is on" in printed
    info = ModelInfo.load(tmp_path / "m.classes.json")
    assert info.flip is True
    meta = ort.InferenceSession(str(out)).get_modelmeta().custom_metadata_map["rn50"]
    assert json.loads(meta)["flip"] is True

    # The graph is the plain network: one pass of ONNX Runtime gives the PyTorch logits.
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = preprocess(photos, info)
    plain = session.run(None, {"images": x})[0]
    mirrored = session.run(None, {"images": np.ascontiguousarray(np.flip(x, axis=3))})[0]
    expected = (plain + mirrored) / 2
    np.testing.assert_allclose(Predictor.from_onnx(out).logits(photos), expected, atol=1e-6)
    np.testing.assert_allclose(Predictor.from_onnx(out, flip=False).logits(photos), plain,
                               atol=1e-6)
    # ... and the ONNX flip equals PyTorch's.
    np.testing.assert_allclose(Predictor.from_checkpoint(flip_ckpt).logits(photos), expected,
                               atol=1e-4)

    image = tmp_path / "a.jpg"
    photos[0].save(image, quality=95)
    assert main(["predict", "--onnx", str(out), "--json", "--top", "3", str(image)]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    x = preprocess([load_rgb(image)], info)
    two = (session.run(None, {"images": x})[0]
           + session.run(None, {"images": np.ascontiguousarray(x[..., ::-1])})[0]) / 2
    assert [t["index"] for t in top] == np.argsort(-two[0], kind="stable")[:3].tolist()


def test_space_and_app_say_when_the_flip_is_on(capsys, flip_ckpt, tmp_path, monkeypatch):
    folder = tmp_path / "space"
    assert main(["export", "--checkpoint", str(flip_ckpt), "--space", str(folder)]) == 0
    assert "Flip TTA (eval.flip) is on" in capsys.readouterr().out
    space = Classifier.from_folder(folder)
    assert space.info.flip and FLIP_LINE in space.info.summary()
    assert "flip test-time augmentation" in (folder / "README.md").read_text()
    plain = make_checkpoint(tmp_path / "plain.pth")
    assert FLIP_LINE not in Predictor.from_checkpoint(plain).info.summary()

    # rn50 app: the page's description holds the line.
    import gradio as gr

    from rn50.serve import app
    from rn50.serve.space_template import ui

    shown = {}
    monkeypatch.setattr(ui, "launch", lambda demo, *a, **k: shown.setdefault("demo", demo))
    app.serve(str(flip_ckpt))
    texts = [b.value for b in shown["demo"].blocks.values() if isinstance(b, gr.Markdown)]
    assert any(FLIP_LINE in (t or "") for t in texts), texts


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_and_safetensors_record_the_flip(capsys, flip_ckpt, tmp_path):
    """The files hold the plain network; their JSON says that the runner averages the two."""
    from safetensors import safe_open

    model, _, _ = load_for_inference(flip_ckpt)
    out = tmp_path / "m.torchscript.pt"
    assert main(["export", "--checkpoint", str(flip_ckpt), "--format", "torchscript",
                 "--out", str(out)]) == 0
    assert "Flip TTA (eval.flip) is on" in capsys.readouterr().out
    files = {"rn50.json": ""}
    scripted = torch.jit.load(str(out), _extra_files=files)
    assert json.loads(files["rn50.json"])["flip"] is True
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))  # one pass: no flip inside
    out = tmp_path / "m.safetensors"
    assert main(["export", "--checkpoint", str(flip_ckpt), "--format", "safetensors",
                 "--out", str(out)]) == 0
    with safe_open(out, "pt") as f:
        assert ModelInfo.from_json(f.metadata()["rn50"]).flip is True
