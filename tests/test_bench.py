"""rn50 bench in a tiny configuration: the JSON's shape and the projection's arithmetic."""

import json

import pytest

from rn50.bench.projection import IMAGENET_TRAIN_IMAGES, projection
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
    assert e2e["decode_ahead"] is None  # a setting of decode gpu only
    assert result["cores"] >= 1 and result["threads"] == 1


def test_the_projection_is_computed_from_the_measured_rates(result):
    # A known answer on the benchmark's own output: epoch = 1,281,167 / (min(data, model,
    # end to end) x GPUs), with the fastest model setting and rn50 data mode measured.
    p = result["projection"]
    model = max(r["img_s"] for r in result["model"])
    data = max(r["img_s"] for r in result["data"] if r["mode"] != "torchvision")
    e2e = result["end_to_end"]["img_s"]
    assert p["model_img_s"] == model and p["data_img_s"] == data
    assert p["end_to_end_img_s"] == e2e
    assert p["epoch_s"] == pytest.approx(IMAGENET_TRAIN_IMAGES / (min(model, data, e2e) * 2))
    assert p["hours"] == pytest.approx(p["epoch_s"] * 3 / 3600)
    assert p["cost"] == pytest.approx(p["hours"] * 2.5 * 2)
    slowest = min((model, "model"), (data, "data"), (e2e, "end to end"))[1]
    assert p["bottleneck"] == slowest


def test_projection_known_answer():
    p = projection(model_img_s=2000.0, data_img_s=1281.167, epochs=16, price=3.0, gpus=1)
    assert p["epoch_s"] == pytest.approx(1000.0) and p["bottleneck"] == "data"
    assert p["hours"] == pytest.approx(16000 / 3600)
    assert p["cost"] == pytest.approx(16000 / 3600 * 3.0)
    # The loader and the model together slower than either alone: that rate counts.
    p = projection(2000.0, 3000.0, 16, 3.0, 1, end_to_end_img_s=640.5835)
    assert p["epoch_s"] == pytest.approx(2000.0) and p["bottleneck"] == "end to end"
    # A failed end-to-end run (no rate) leaves the other two.
    p = projection(2000.0, 1281.167, 16, 3.0, 1, end_to_end_img_s=float("nan"))
    assert p["epoch_s"] == pytest.approx(1000.0) and p["bottleneck"] == "data"


def test_text_report_and_bad_arguments(capsys):
    args = [a for a in TINY if a != "--json"]
    args[args.index("--precisions") + 1] = "fp32"
    assert main(args + ["--only", "model,data"]) == 0
    out = capsys.readouterr().out
    assert "Model step" in out and "vs torchvision" in out and "ImageNet-1k projection" in out
    assert "cost at 2.5/GPU-hour" in out
    assert main(["bench", "--precisions", "fp8"]) == 2
    assert "--precisions: 'fp8' is not one of" in capsys.readouterr().err
    for bad in (["--repeats", "0"], ["--images", "0"], ["--precisions", "fp8"],
                ["--only", ""], ["--modes", " "], ["--batch-sizes", ""]):
        assert main(["bench", "--device", "cpu", *bad]) == 2
        # one line: the auto choices' notes (workers, decode) are not printed before it
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("rn50: error: "), bad


def test_end_to_end_with_decode_gpu_says_how_it_decodes(capsys):
    args = [a for a in TINY if a != "--json"] + ["--only", "e2e", "--set", "data.decode=gpu"]
    for ahead, label in ((0, "gpu, between steps"), (3, "gpu, 3 batches ahead")):
        assert main(args + ["--set", f"data.decode_ahead={ahead}"]) == 0
        assert f"End to end (decode {label}, 0 worker(s), batch 4" in capsys.readouterr().out


def test_end_to_end_is_compiled_when_compile_is_asked_for(capsys, monkeypatch):
    # torch.compile on a CPU takes minutes: a stand-in that records what it was given.
    import torch

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(model) or model)
    # each measurement compiles afresh, not for the dynamic shapes of the one before it
    monkeypatch.setattr(torch._dynamo, "reset", lambda: compiled.append("reset"))
    args = ["--only", "e2e", "--precisions", "fp32"]
    assert main(TINY + args) == 0
    assert json.loads(capsys.readouterr().out)["end_to_end"]["compile"] is False
    assert compiled == []
    assert main([a for a in TINY if a != "--json"] + args + ["--compile"]) == 0
    assert "batch 4, fp32, compiled): " in capsys.readouterr().out
    assert len(compiled) == 2 and compiled[0] == "reset"
    assert isinstance(compiled[1], torch.nn.Module)


def test_progressive_resizing_is_measured_and_projected(capsys, tmp_path):
    # 3 epochs at 64 px with a ramp from 32 px: epoch 1 at 32, epochs 2-3 at 64.
    args = [a for a in TINY if a != "--json"]
    args[args.index("--precisions") + 1] = "bf16"
    args += [
        "--json",
        "--set",
        "data.resolution=64",
        "--set",
        "data.min_resolution=32",
        "--set",
        "data.ramp_start_epoch=1",
        "--set",
        "data.ramp_end_epoch=2",
        "--channels-last",
        "on",
        "--modes",
        "cpu",
    ]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    (low,) = result["progressive"]
    assert low["resolution"] == 32 and low["img_s"] > 0 and low["end_to_end_img_s"] > 0
    (full,) = result["model"]
    assert full["resolution"] == 64
    p = result["projection"]
    assert p["resolutions"] == [32, 64, 64]
    data = result["data"][0]["img_s"]
    e2e_full = result["end_to_end"]["img_s"]
    assert result["end_to_end"]["resolution"] == 64
    seconds = sum(
        IMAGENET_TRAIN_IMAGES / (min(m, data, e) * 2)
        for m, e in (
            (low["img_s"], low["end_to_end_img_s"]),
            (full["img_s"], e2e_full),
            (full["img_s"], e2e_full),
        )
    )
    assert p["hours"] == pytest.approx(seconds / 3600)
    assert p["cost"] == pytest.approx(p["hours"] * 2.5 * 2)
    # Read back with --from and the same run: the same projection, nothing measured again.
    saved = tmp_path / "bench.json"
    saved.write_text(json.dumps(result))
    ramp = [a for a in args if a.startswith(("data.", "model.", "train.epochs"))]
    again = ["bench", "--json", "--from", str(saved), "--price-per-gpu-hour", "2.5", "--gpus", "2"]
    assert main(again + [x for a in ramp for x in ("--set", a)]) == 0
    reread = json.loads(capsys.readouterr().out)
    assert reread["projection"] == p and reread["projected_from"] == str(saved)


def test_projection_with_a_resolution_schedule_known_answer():
    # 2 epochs at 160 px, data-bound at 2000 img/s (640.5835 s each), and 1 at 192 px at
    # 1281.167 (1000 s).
    p = projection(
        model_img_s=1281.167,
        data_img_s=2000.0,
        epochs=3,
        price=1.0,
        gpus=1,
        schedule=[(160, 2562.334, None), (160, 2562.334, None), (192, 1281.167, None)],
    )
    assert p["epoch_s"] == pytest.approx(1000.0)  # the full-resolution epoch
    assert p["hours"] == pytest.approx((640.5835 * 2 + 1000.0) / 3600)
    # End to end measured at 160 px only, at 1281.167 img/s: those epochs take 1000 s each.
    p = projection(
        1281.167, 2000.0, 3, 1.0, 1,
        schedule=[(160, 2562.334, 1281.167), (160, 2562.334, 1281.167), (192, 1281.167, None)],
    )  # fmt: skip
    assert p["hours"] == pytest.approx(3000.0 / 3600)


def measured(tmp_path, progressive=True):
    """A hand-written `rn50 bench --json` result: the model step at 64 px (1281.167 img/s at
    best: 1000 s an ImageNet epoch) and at 32 px (2562.334), data at 2000 img/s at best."""
    def model(img_s, precision):
        return {"resolution": 64, "img_s": img_s, "batch_size": 4, "precision": precision,
                "channels_last": True, "compile": False}  # fmt: skip

    result = {
        "device": "a test card",
        "plan": {"resolution": 64, "arch": "resnet50"},
        "model": [model(900.0, "fp32"), model(1281.167, "bf16")],
        "data": [  # torchvision: the baseline, not an rn50 mode
            {"mode": m, "workers": 4, "img_s": v, "img_s_per_worker": v / 4}
            for m, v in (("torchvision", 9000.0), ("cpu", 2000.0), ("pil", 1500.0))
        ],
        "progressive": [{**model(2562.334, "bf16"), "resolution": 32}] if progressive else [],
    }
    path = tmp_path / "measured.json"
    path.write_text(json.dumps(result))
    return path


RAMP = ("--set data.resolution=64 --set data.min_resolution=32 --set data.ramp_start_epoch=1"
        " --set data.ramp_end_epoch=2 --set train.epochs=3").split()  # fmt: skip


def test_from_projects_another_run_from_saved_figures_known_answer(tmp_path, capsys):
    # Epochs at 32, 64, 64 px on 2 GPUs: the 32 px epoch is data-bound (2000 img/s: 640.58 s,
    # 320.29 s on 2 GPUs), the 64 px ones model-bound (1000 s, 500 s on 2).
    args = ["bench", "--json", "--from", str(measured(tmp_path)), *RAMP, "--gpus", "2",
            "--price-per-gpu-hour", "3"]  # fmt: skip
    assert main(args) == 0
    p = json.loads(capsys.readouterr().out)["projection"]
    assert p["resolutions"] == [32, 64, 64]
    assert p["epoch_s"] == pytest.approx(500.0)
    assert p["hours"] == pytest.approx((320.29175 + 500.0 + 500.0) / 3600)
    assert p["cost"] == pytest.approx(p["hours"] * 3 * 2)
    assert p["model_setting"]["precision"] == "bf16"  # the fastest setting
    assert p["data_setting"] == {"mode": "cpu", "workers": 4}  # the fastest rn50 mode
    # and as text
    assert main([a for a in args if a != "--json"]) == 0
    out = capsys.readouterr().out
    assert "Projected from the measurements in" in out and "cost at 3/GPU-hour: 2.20" in out


def test_from_uses_the_end_to_end_figures_it_holds(tmp_path, capsys):
    # The same measurements with end-to-end runs: 640.5835 img/s at 64 px (2000 s an epoch,
    # 1000 s on 2 GPUs) and none at 32 px (that epoch stays data-bound: 320.29 s on 2).
    path = measured(tmp_path)
    result = json.loads(path.read_text())
    result["end_to_end"] = {"resolution": 64, "img_s": 640.5835}
    path.write_text(json.dumps(result))
    assert main(["bench", "--json", "--from", str(path), *RAMP, "--gpus", "2"]) == 0
    p = json.loads(capsys.readouterr().out)["projection"]
    assert p["bottleneck"] == "end to end" and p["epoch_s"] == pytest.approx(1000.0)
    assert p["hours"] == pytest.approx((320.29175 + 1000.0 + 1000.0) / 3600)


def test_from_refuses_what_its_figures_cannot_answer(tmp_path, capsys):
    no_low = str(measured(tmp_path, progressive=False))
    cases = {
        # the schedule needs 32 px, measured only at 64
        ("--from", no_low, *RAMP): "no model figure at 32 px (measured at 64 px)",
        # the run trains at 128 px
        ("--from", no_low, "--set", "data.resolution=128"): "measured at 64 px, the run trains",
        ("--from", no_low, "--set", "model.arch=resnet18"): "of resnet50, the run trains resnet18",
        ("--from", no_low, "--steps", "3"): "--from measures nothing: leave out --steps",
        ("--from", no_low, "--device", "cpu"): "leave out --device",
        ("--from", str(tmp_path / "none.json")): "cannot read",
        ("--from", __file__): "is not JSON",
    }
    for args, message in cases.items():
        assert main(["bench", *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (args, err)


def test_cores_limits_the_process_and_is_recorded(capsys):
    import os

    before = os.sched_getaffinity(0)
    args = [a for a in TINY] + ["--only", "model", "--precisions", "fp32", "--cores", "1"]
    args[args.index("--threads") : args.index("--threads") + 2] = []
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cores_limit"] == 1 and result["cores"] == 1 and result["threads"] == 1
    assert os.sched_getaffinity(0) == before  # given back afterwards
    assert main(["bench", "--cores", str(len(before) + 1)]) == 2
    assert f"this process may use only {len(before)} cores" in capsys.readouterr().err


def test_sync_cost_and_gpu_stages_are_measured(capsys):
    from rn50.bench.gpu_stages import FORMER_STAGES, MAIN_STAGES, WORKER_STAGES

    args = [a for a in TINY] + ["--only", "sync,stages", "--precisions", "fp32"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    (sync,) = result["sync"]
    assert sync["compile"] is False and set(sync["img_s"]) == {"step", "deferred", "unchecked"}
    v = sync["img_s"]
    assert sync["sync_cost"] == pytest.approx(1 - v["step"] / v["unchecked"])
    assert sync["deferred_cost"] == pytest.approx(1 - v["deferred"] / v["unchecked"])
    stages = result["gpu_stages"]
    assert list(stages["stages"]) == [*WORKER_STAGES, *MAIN_STAGES, *FORMER_STAGES]
    # the training batch (--batch-sizes 4), not the data benchmark's
    assert stages["images"] == 8 and stages["batch_size"] == 4 and stages["batches"] == 2
    assert stages["sync_s"] == 0.0 and stages["left_out"] == 0 and stages["resolution"] == 32
    main_s = sum(stages["stages"][s]["total_s"] for s in MAIN_STAGES)
    assert stages["main_img_s"] == pytest.approx(8 / main_s)
    former_s = main_s - stages["stages"]["place"]["total_s"]
    former_s += sum(stages["stages"][s]["total_s"] for s in FORMER_STAGES)
    assert stages["per_image_main_img_s"] == pytest.approx(8 / former_s)
    # and as text
    assert main([a for a in args if a != "--json"]) == 0
    out = capsys.readouterr().out
    assert "decode gpu stage by stage" in out and "The step's host wait" in out


def test_sync_ratios_known_answer():
    from rn50.bench.sync_cost import sync_ratios

    r = sync_ratios({"step": 900.0, "deferred": 950.0, "unchecked": 1000.0})
    assert r["sync_cost"] == pytest.approx(0.10) and r["deferred_cost"] == pytest.approx(0.05)
    assert r["deferred_vs_step"] == pytest.approx(950 / 900)


def test_stage_summary_known_answer():
    from rn50.bench.gpu_stages import stage_summary

    # 256 images: the worker stages take 0.1 s in all, the main ones 0.128 s (2,000 img/s),
    # of which place 0.064 s with 0.060 s of host time. The former per-image place and its
    # stack take 0.256 s: with them the main stages took 0.128 - 0.064 + 0.256 = 0.32 s
    # (800 img/s), and place is 4 times faster.
    totals = {"read": (0.05, 0.05), "header": (0.02, 0.02), "crop_draw": (0.03, 0.03),
              "h2d_copy": (0.001, 0.004), "decode": (0.01, 0.05), "place": (0.060, 0.064),
              "normalize": (0.001, 0.010), "place_per_image": (0.24, 0.25),
              "stack": (0.001, 0.006)}  # fmt: skip
    s = stage_summary(totals, 256, 1e-5)
    assert s["main_img_s"] == pytest.approx(2000.0)
    assert s["worker_img_s"] == pytest.approx(2560.0)
    assert s["slowest_main_stage"] == "place"
    assert s["stages"]["place"]["us_per_image"] == pytest.approx(250.0)
    assert s["stages"]["place"]["host_share"] == pytest.approx(0.9375)
    assert s["stages"]["decode"]["img_s"] == pytest.approx(5120.0)
    assert s["per_image_main_img_s"] == pytest.approx(800.0)
    assert s["place_speedup"] == pytest.approx(4.0)
    del totals["place_per_image"]  # not measured: no comparison claimed
    assert "place_speedup" not in stage_summary(totals, 256, 1e-5)


def test_compile_modes_and_batch_sizes_side_by_side(capsys, monkeypatch):
    import torch

    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: seen.append(kw) or model)
    args = TINY + ["--only", "model", "--precisions", "bf16", "--channels-last", "on",
                   "--batch-sizes", "4,6", "--compile-modes", "default,max-autotune"]  # fmt: skip
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    settings = [(r["batch_size"], r["compile_mode"], r["lr"]) for r in result["model"]]
    assert settings == [
        (4, None, 0.1 * 4 / 256), (4, "default", 0.1 * 4 / 256),
        (4, "max-autotune", 0.1 * 4 / 256),
        (6, None, 0.1 * 6 / 256), (6, "default", 0.1 * 6 / 256),
        (6, "max-autotune", 0.1 * 6 / 256),
    ]  # fmt: skip
    # static shapes always; the mode only when it is not torch's default
    assert seen == [{"dynamic": False}, {"dynamic": False, "mode": "max-autotune"}] * 2
    t = result["step_target"]
    best = max(r["img_s"] for r in result["model"])
    assert t["img_s"] == best and t["fraction"] == pytest.approx(best / 8000.0)
    assert main(["bench", "--compile-modes", "fastest"]) == 2
    assert "--compile-modes: 'fastest' is not one of" in capsys.readouterr().err


def test_sigterm_removes_the_temporary_jpegs(tmp_path):
    """A real `rn50 bench` process, sent SIGTERM while it writes its JPEGs: it removes its
    temporary folder, says so in one line and exits 143 (Python's default would end it at
    once and leave the folder behind)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "TMPDIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rn50", "bench", "--only", "data", "--device", "cpu",
         "--images", "20000", "--modes", "cpu", "--workers", "1", "--repeats", "1",
         "--steps", "1", "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        folder = None
        while time.monotonic() < deadline and proc.poll() is None:
            found = list(tmp_path.glob("rn50-bench-*"))
            if found and any(p.is_file() for p in found[0].rglob("*.JPEG")):
                folder = found[0]
                break
            time.sleep(0.05)
        assert folder is not None, proc.communicate(timeout=60)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        "rn50: bench stopped by SIGTERM"), err
    assert not folder.exists() and out == ""


def test_stages_time_only_the_files_the_device_decoder_takes(capsys, tmp_path):
    """PNGs named .JPEG go to the workers in the gpu mode: they are left out of the stage
    timings and counted, not divided into the per-image figures; none at all is one line."""
    from PIL import Image

    from rn50.data.photos import write_imagenet_like

    root = write_imagenet_like(tmp_path / "mixed", 6, classes=2)
    jpegs = sorted((root / "train").rglob("*.JPEG"))
    for path in jpegs[:4]:  # 4 of 6 become PNGs with the same name
        Image.open(path).convert("RGB").save(path, format="PNG")
    args = TINY + ["--only", "stages", "--data-dir", str(root), "--images", "6"]
    assert main(args) == 0
    stages = json.loads(capsys.readouterr().out)["gpu_stages"]
    assert stages["images"] == 2 and stages["left_out"] == 4
    for path in jpegs[4:]:
        Image.open(path).convert("RGB").save(path, format="PNG")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rn50: error: bench --only stages: none of the 6 files")


def test_speed_ratio_words():
    from rn50.bench.report import plural, times

    assert times(3.24) == "3.2x faster" and times(0.25) == "4.0x slower"
    assert times(1.01) == "about as fast" and plural(1, "image") == "1 image"
    assert plural(0, "file") == "0 files"


def test_only_a_plan_that_decodes_on_the_device_needs_its_decoder(capsys):
    import torch

    from rn50.bench.plan import BenchPlan, uses_gpu_decoder

    def plan(**kw):
        return BenchPlan(device=torch.device("cpu"), **kw)

    assert uses_gpu_decoder(plan(parts=("stages",)))
    assert uses_gpu_decoder(plan(parts=("data",), modes=("cpu", "gpu")))
    assert not uses_gpu_decoder(plan(parts=("data",), modes=("cpu",)))
    assert uses_gpu_decoder(plan(parts=("e2e",), decode="gpu"))
    assert not uses_gpu_decoder(plan(parts=("model", "e2e"), decode="cpu"))
    # nvImageCodec is not installed here: the model step alone is measured all the same
    args = TINY + ["--only", "model", "--set", "data.gpu_decoder=nvimgcodec"]
    assert main(args) == 0
    capsys.readouterr()
