"""rn50 bench in a tiny configuration: the JSON's shape and the projection's arithmetic."""

import json

import pytest

from rn50.bench import IMAGENET_TRAIN_IMAGES, projection
from rn50.cli import main

# resnet18 at 32 px, one thread, one step: the whole benchmark in a few seconds.
TINY = (
    "bench --json --device cpu --threads 1 --set model.arch=resnet18 --set model.num_classes=10"
    " --set data.resolution=32 --set data.workers=0 --set train.epochs=3 --batch-sizes 4"
    " --precisions fp32,bf16 --steps 1 --repeats 2 --images 8 --workers 0"
    " --modes torchvision,pil,cpu,gpu --price-per-gpu-hour 2.5 --gpus 2"
).split()


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(TINY) == 0
    return json.loads(out.getvalue())


def test_every_setting_asked_for_is_measured(result):
    model = result["model"]
    assert [(r["precision"], r["channels_last"], r["compile"]) for r in model] == [
        ("fp32", True, False),
        ("fp32", False, False),
        ("bf16", True, False),
        ("bf16", False, False),
    ]
    for r in model:
        assert r["arch"] == "resnet18" and r["resolution"] == 32 and r["batch_size"] == 4
        assert len(r["runs"]) == 2 and r["img_s"] > 0
    assert [(r["mode"], r["workers"]) for r in result["data"]] == [
        ("torchvision", 0),
        ("pil", 0),
        ("cpu", 0),
        ("gpu", 0),
    ]
    assert all(r["img_s"] > 0 and r["img_s_per_worker"] == r["img_s"] for r in result["data"])
    assert [r["mode"] for r in result["data_vs_torchvision"]] == ["pil", "cpu", "gpu"]
    base = result["data"][0]["img_s"]
    for r, ratio in zip(result["data"][1:], result["data_vs_torchvision"], strict=True):
        assert ratio["vs_torchvision"] == pytest.approx(r["img_s"] / base)
    e2e = result["end_to_end"]
    assert e2e["decode"] == "cpu" and e2e["img_s"] > 0 and e2e["images"] > 0
    assert result["cores"] >= 1 and result["threads"] == 1


def test_the_projection_is_computed_from_the_measured_rates(result):
    # A known answer on the benchmark's own output: epoch = 1,281,167 / (min(data, model) x
    # GPUs), with the fastest model setting and the fastest rn50 data mode measured.
    p = result["projection"]
    model = max(r["img_s"] for r in result["model"])
    data = max(r["img_s"] for r in result["data"] if r["mode"] != "torchvision")
    assert p["model_img_s"] == model and p["data_img_s"] == data
    assert p["epoch_s"] == pytest.approx(IMAGENET_TRAIN_IMAGES / (min(model, data) * 2))
    assert p["hours"] == pytest.approx(p["epoch_s"] * 3 / 3600)
    assert p["cost"] == pytest.approx(p["hours"] * 2.5 * 2)
    assert p["bottleneck"] == ("data" if data < model else "model")


def test_projection_known_answer():
    p = projection(model_img_s=2000.0, data_img_s=1281.167, epochs=16, price=3.0, gpus=1)
    assert p["epoch_s"] == pytest.approx(1000.0) and p["bottleneck"] == "data"
    assert p["hours"] == pytest.approx(16000 / 3600)
    assert p["cost"] == pytest.approx(16000 / 3600 * 3.0)


def test_text_report_and_bad_arguments(capsys):
    args = [a for a in TINY if a != "--json"]
    args[args.index("--precisions") + 1] = "fp32"
    assert main(args + ["--only", "model,data"]) == 0
    out = capsys.readouterr().out
    assert "Model step" in out and "vs torchvision" in out and "ImageNet-1k projection" in out
    assert "cost at 2.5/GPU-hour" in out
    assert main(["bench", "--precisions", "fp8"]) == 2
    assert "--precisions: 'fp8' is not one of" in capsys.readouterr().err
    assert main(["bench", "--repeats", "0"]) == 2
