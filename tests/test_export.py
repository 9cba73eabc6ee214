"""rn50 export: safetensors for torchvision, ONNX checked by ONNX Runtime, TorchScript, and a
Hugging Face Space folder that serves the same answers as `rn50 predict` from a fresh venv."""

import ast
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml

from rn50.cli import main
from rn50.serve import export
from rn50.serve.predict import Predictor, example_images, load_for_inference, write_examples
from rn50.serve.space_template.inference import Classifier, ModelInfo, preprocess
from tests.serving import CLASSES, make_checkpoint, stop


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model_best.pth", resolution=56)


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return write_examples(tmp_path_factory.mktemp("examples"))


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_safetensors_load_into_torchvision_resnet50(capsys, tmp_path):
    """ResNet-50 itself: the file loads into torchvision's resnet50 with strict=True and gives
    the checkpoint's logits."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    ckpt = make_checkpoint(tmp_path / "r50.pth", arch="resnet50", resolution=32)
    rc, out, _ = run_cli(capsys, "export", "--checkpoint", ckpt, "--format", "safetensors")
    assert rc == 0
    weights = tmp_path / "r50.safetensors"
    assert f"Wrote {weights} and {tmp_path / 'r50.classes.json'}" in out
    tv = torchvision.models.resnet50(num_classes=len(CLASSES))
    tv.load_state_dict(load_file(weights), strict=True)
    tv.eval()
    model, _, info = load_for_inference(ckpt)
    x = torch.from_numpy(preprocess(list(example_images().values()), info))
    with torch.no_grad():
        assert torch.equal(tv(x), model(x))
    with safe_open(weights, "pt") as f:
        meta = ModelInfo.from_json(f.metadata()["rn50"])
    assert meta.classes == [c for c, _ in CLASSES] and meta.arch == "resnet50"
    assert ModelInfo.load(tmp_path / "r50.classes.json") == meta


def test_onnx_dynamic_batch_and_same_top5(capsys, tmp_path, ckpt, examples):
    out_file = tmp_path / "m.onnx"
    rc, out, _ = run_cli(capsys, "export", "--checkpoint", ckpt, "--format", "onnx",
                         "--out", out_file)
    assert rc == 0
    m = re.search(r"on 4 example photos: max \|logit difference\| = (\S+)", out)
    assert m and float(m.group(1)) <= 1e-4, out

    import onnxruntime as ort

    session = ort.InferenceSession(str(out_file), providers=["CPUExecutionProvider"])
    [inp] = session.get_inputs()
    assert inp.name == "images" and isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 56, 56]
    assert json.loads(session.get_modelmeta().custom_metadata_map["rn50"])["resolution"] == 56
    model, _, info = load_for_inference(ckpt)
    for n in (1, 3, 5):  # batch sizes other than the export's 2
        x = np.random.default_rng(n).standard_normal((n, 3, 56, 56)).astype(np.float32)
        with torch.no_grad():
            np.testing.assert_allclose(session.run(None, {"images": x})[0],
                                       model(torch.from_numpy(x)).numpy(), atol=1e-4)

    torch_p = Predictor.from_checkpoint(ckpt)
    onnx_p = Predictor.from_onnx(out_file)  # classes from m.classes.json beside it
    for path in examples:
        expected, _ = torch_p.predict_file(path)
        got, _ = onnx_p.predict_file(path)
        assert [p.index for p in got] == [p.index for p in expected], path.name
        assert [p.probability for p in got] == pytest.approx(
            [p.probability for p in expected], abs=1e-5
        )
    # The examples really differ: a model that ignored its input would pass the above too.
    assert len({tuple(p.index for p in torch_p.predict_file(e)[0]) for e in examples}) > 1

    rc, cli_out, _ = run_cli(capsys, "predict", "--onnx", out_file, "--json", examples[0])
    assert rc == 0
    assert [t["index"] for t in json.loads(cli_out)[0]["top"]] == [
        p.index for p in torch_p.predict_file(examples[0])[0]
    ]


def test_onnx_that_disagrees_is_not_written(capsys, tmp_path, ckpt, monkeypatch):
    """The check can fail: a runtime off by 0.1 per logit stops the export, exit 2."""
    real_call = export.OnnxModel.__call__
    monkeypatch.setattr(export.OnnxModel, "__call__", lambda self, x: real_call(self, x) + 0.1)
    rc, out, err = run_cli(capsys, "export", "--checkpoint", ckpt, "--format", "onnx",
                           "--out", tmp_path / "bad.onnx")
    assert rc == 2 and "ONNX Runtime's logits differ from PyTorch's by 0.1" in err
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript(capsys, tmp_path, ckpt):
    rc, out, _ = run_cli(capsys, "export", "--checkpoint", ckpt, "--format", "torchscript")
    assert rc == 0 and "TorchScript vs eager PyTorch: max |logit difference| = 0" in out
    files = {"rn50.json": ""}
    scripted = torch.jit.load(str(ckpt.with_suffix(".torchscript.pt")), _extra_files=files)
    assert json.loads(files["rn50.json"])["names"] == [n for _, n in CLASSES]
    model, _, _ = load_for_inference(ckpt)
    x = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


def test_export_refuses_what_is_not_a_checkpoint(capsys, tmp_path):
    (tmp_path / "x.pth").write_text("hello")
    rc, out, err = run_cli(capsys, "export", "--checkpoint", tmp_path / "x.pth", "--space",
                           tmp_path / "space")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "rn50 checkpoint" in err
    assert not (tmp_path / "space").exists()


def _space(capsys, ckpt, folder, *extra):
    rc, out, _ = run_cli(capsys, "export", "--checkpoint", ckpt, "--space", folder, *extra)
    assert rc == 0, out
    return out


@pytest.fixture(scope="module")
def onnx_space(ckpt, tmp_path_factory):
    """A Space folder with the default (ONNX) backend, exported once for the tests below."""
    folder = tmp_path_factory.mktemp("onnx_space") / "space"
    assert main(["export", "--checkpoint", str(ckpt), "--space", str(folder)]) == 0
    return folder


def test_space_folder_contents(onnx_space):
    folder = onnx_space
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*")}
    assert {"app.py", "inference.py", "ui.py", "requirements.txt", "README.md", "model.onnx",
            "classes.json", ".gitattributes", "examples/coffee.jpg", "image.py"} <= names
    # The one image reader, verbatim: the Space reads images exactly as training does.
    assert (folder / "image.py").read_bytes() == export.READER.read_bytes()
    assert "model.safetensors" not in names
    meta = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    import gradio

    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__
    assert meta["app_file"] == "app.py" and "{{" not in (folder / "README.md").read_text()
    reqs = (folder / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in reqs} == {"gradio", "numpy", "pillow", "onnxruntime"}
    assert "*.onnx filter=lfs" in (folder / ".gitattributes").read_text()
    # Self-contained: the Space's code imports neither rn50 nor (at module level) torch.
    for name in ("app.py", "inference.py", "ui.py", "image.py"):
        tree = ast.parse((folder / name).read_text())
        top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import)
               for a in n.names}
        top |= {n.module.split(".")[0] for n in tree.body
                if isinstance(n, ast.ImportFrom) and n.module}
        assert not top & {"rn50", "torch", "torchvision"}, (name, top)


def test_space_torch_backend(capsys, tmp_path, ckpt, examples):
    """--space-backend torch: model.safetensors run by PyTorch; a stale model.onnx is removed
    (the Space would prefer it)."""
    folder = tmp_path / "space"
    _space(capsys, ckpt, folder)
    _space(capsys, ckpt, folder, "--space-backend", "torch")
    assert not (folder / "model.onnx").exists() and (folder / "model.safetensors").is_file()
    reqs = (folder / "requirements.txt").read_text()
    assert "torch==" in reqs and "safetensors==" in reqs and "onnxruntime" not in reqs
    space = Classifier.from_folder(folder)
    torch_p = Predictor.from_checkpoint(ckpt)
    for path in examples:
        got, expected = space.predict_file(path)[0], torch_p.predict_file(path)[0]
        assert [p.index for p in got] == [p.index for p in expected]
        assert [p.probability for p in got] == pytest.approx(
            [p.probability for p in expected], abs=1e-6
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, seconds: float) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def gradio_predict(base: str, image: Path) -> list:
    """One prediction request through Gradio's HTTP API, as a browser or client sends it."""
    import httpx

    with open(image, "rb") as f:
        r = httpx.post(f"{base}/gradio_api/upload", files={"files": (image.name, f)}, timeout=30)
    r.raise_for_status()
    payload = {"path": r.json()[0], "orig_name": image.name, "meta": {"_type": "gradio.FileData"}}
    r = httpx.post(f"{base}/gradio_api/call/predict", json={"data": [payload]}, timeout=30)
    r.raise_for_status()
    events = httpx.get(f"{base}/gradio_api/call/predict/{r.json()['event_id']}", timeout=60).text
    assert "event: complete" in events, events
    return json.loads(events.split("event: complete\ndata:", 1)[1].strip().splitlines()[0])


@pytest.mark.slow
def test_space_in_a_fresh_venv_answers_like_rn50_predict(
    capsys, tmp_path, ckpt, examples, onnx_space
):
    """The Space folder, with only its requirements.txt installed in a new venv (no rn50, no
    torch), serves the same top-5 as `rn50 predict --json`."""
    folder = onnx_space
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "-r", str(folder / "requirements.txt")],
        check=True, timeout=600,
    )
    has = subprocess.run([str(py), "-c", "import importlib.util as u; "
                          "print(u.find_spec('torch') is None and u.find_spec('rn50') is None)"],
                         capture_output=True, text=True, check=True)
    assert has.stdout.strip() == "True"

    image = examples[1]
    rc, out, _ = run_cli(capsys, "predict", "--checkpoint", ckpt, "--json", image)
    assert rc == 0
    expected = json.loads(out)[0]["top"]

    # The Space's own command line in that venv: the same JSON.
    cli = subprocess.run([str(py), "app.py", str(image), "--json"], cwd=folder,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    got = json.loads(cli.stdout)[0]["top"]
    assert [t["wnid"] for t in got] == [t["wnid"] for t in expected]
    assert [t["probability"] for t in got] == pytest.approx(
        [t["probability"] for t in expected], abs=1e-4)

    # The Space served from that venv, asked over HTTP.
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    proc = subprocess.Popen([str(py), "app.py", "--port", str(port)], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/", proc, 120)
        labels, status = gradio_predict(base, image)
    finally:
        stop(proc, 10)
    names = [t["name"] for t in expected]
    label_names = [c["label"] for c in labels["confidences"]]
    # The page keeps the two "crane"s apart by their ids; other names are shown as they are.
    assert [n.split(" (n")[0] for n in label_names] == names
    assert [c["confidence"] for c in labels["confidences"]] == pytest.approx(
        [t["probability"] for t in expected], abs=1e-4)
    assert f"Top-1: **{names[0]}** ({expected[0]['wnid']})" in status


def test_export_never_writes_over_the_checkpoint_or_a_users_file(capsys, ckpt, tmp_path):
    """--out naming the checkpoint, or a file that is no earlier export, is refused before any
    work, with one line; an earlier export is replaced; --overwrite replaces a user's file."""
    before = ckpt.read_bytes()
    for out in (ckpt, tmp_path / "link.pth"):
        if out != ckpt:
            out.symlink_to(ckpt)
        rc, _, err = run_cli(capsys, "export", "--checkpoint", ckpt, "--format", "safetensors",
                             "--out", out, "--overwrite")
        assert rc == 2 and "would replace the checkpoint" in err and err.count("\n") == 1, err
    assert ckpt.read_bytes() == before
    mine = tmp_path / "notes.safetensors"
    mine.write_text("my own file")
    rc, _, err = run_cli(capsys, "export", "--checkpoint", ckpt, "--format", "safetensors",
                         "--out", mine)
    assert rc == 2 and "is not an earlier rn50 export" in err and "--overwrite" in err, err
    assert mine.read_text() == "my own file"
    assert not (tmp_path / "notes.classes.json").exists()
    rc, _, _ = run_cli(capsys, "export", "--checkpoint", ckpt, "--format", "safetensors",
                       "--out", mine, "--overwrite")
    assert rc == 0 and mine.read_bytes()[:8] != b"my own f"
    # now an earlier export: exporting again replaces it without the flag
    rc, _, _ = run_cli(capsys, "export", "--checkpoint", ckpt, "--format", "safetensors",
                       "--out", mine)
    assert rc == 0


def test_space_refuses_a_folder_of_the_users_files(capsys, ckpt, tmp_path, onnx_space):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "app.py").write_text("print('my app')\n")
    rc, _, err = run_cli(capsys, "export", "--checkpoint", ckpt, "--space", folder)
    assert rc == 2 and "is not empty (app.py)" in err and err.count("\n") == 1, err
    assert (folder / "app.py").read_text() == "print('my app')\n"
    assert sorted(p.name for p in folder.iterdir()) == ["app.py"]
    # an earlier export is written again without the flag (onnx_space holds one)
    assert main(["export", "--checkpoint", str(ckpt), "--space", str(onnx_space)]) == 0
