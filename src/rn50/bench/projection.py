"""What an ImageNet-1k run takes and costs at the measured rates, and the same projection for
another recipe, price or GPU count from an earlier `rn50 bench --json` result.

An epoch of ImageNet-1k (1,281,167 images) takes 1,281,167 / min(data, model, end to end)
seconds, with the fastest model setting and the fastest rn50 data mode measured; a run of
`epochs` epochs on `gpus` devices costs hours x price per GPU-hour x gpus (assuming linear
scaling across devices, validation not counted).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from rn50.bench.plan import BenchPlan, epoch_resolutions

IMAGENET_TRAIN_IMAGES = 1_281_167


def projection(
    model_img_s: float,
    data_img_s: float,
    epochs: int,
    price: float,
    gpus: int,
    schedule: Sequence[tuple[int, float, float | None]] = (),
    end_to_end_img_s: float | None = None,
) -> dict:
    """Epoch time and run cost of ImageNet-1k at the slowest of the measured rates: the model
    step's, the data path's and, where there is one, the end-to-end run's (the loader
    feeding rn50's training step, which also shows what the two alone cannot: the workers
    and the training process sharing the CPU, the step waiting for its data).

    `schedule`: with progressive resizing, (resolution, model img/s, end-to-end img/s or None)
    of each epoch; the run's time is then the sum of its epochs' (epoch_s stays the
    full-resolution epoch).
    """
    rates = {"model": model_img_s, "data": data_img_s, "end to end": end_to_end_img_s}
    rate = _slowest(*rates.values())
    bottleneck = next(name for name, value in rates.items() if value == rate)
    epoch_s = IMAGENET_TRAIN_IMAGES / (rate * gpus)
    run_s = epoch_s * epochs
    if schedule:
        run_s = sum(
            IMAGENET_TRAIN_IMAGES / (_slowest(m, data_img_s, e) * gpus) for _, m, e in schedule
        )
    hours = run_s / 3600
    return {
        "images_per_epoch": IMAGENET_TRAIN_IMAGES,
        "model_img_s": model_img_s,
        "data_img_s": data_img_s,
        "end_to_end_img_s": end_to_end_img_s,
        "bottleneck": bottleneck,
        "img_s": rate,
        "gpus": gpus,
        "epoch_s": epoch_s,
        "epochs": epochs,
        "hours": hours,
        "resolutions": [r for r, _, _ in schedule],
        "price_per_gpu_hour": price,
        "cost": hours * price * gpus,
    }


def _slowest(*rates: float | None) -> float:
    """The lowest of the rates that were measured (None: not run; NaN: the run failed)."""
    return min(r for r in rates if r is not None and math.isfinite(r))


def project(result: dict, plan: BenchPlan) -> dict | None:
    """The projection of `plan`'s run (its epochs, resolution schedule, GPUs and price) from
    the measurements in `result` (run_bench's, or one read back from its JSON): the fastest
    model setting, the fastest rn50 data mode, and the model rate at each lower resolution.
    None without a model and a data figure; ValueError when a resolution of the schedule,
    or the full resolution itself, was not measured."""
    best_model = fastest(result.get("model", []))
    best_data = fastest([r for r in result.get("data", []) if r["mode"] != "torchvision"])
    if not (best_model and best_data):
        return None
    arch = result.get("plan", {}).get("arch", plan.arch)
    if arch != plan.arch:
        raise ValueError(f"the measurements are of {arch}, the run trains {plan.arch}")
    blurpool = result.get("plan", {}).get("blurpool", False)  # older files: none measured
    if blurpool != plan.blurpool:
        raise ValueError(
            f"the measurements are {'with' if blurpool else 'without'} model.blurpool, the run "
            f"trains {'with' if plan.blurpool else 'without'} it"
        )
    measured = best_model.get("resolution", plan.resolution)
    if plan.resolution != measured:
        raise ValueError(
            f"the model step was measured at {measured} px, the run trains at "
            f"{plan.resolution} px"
        )
    progressive = [r for r in result.get("progressive", []) if "img_s" in r]
    rates = {r["resolution"]: r["img_s"] for r in progressive}
    rates[measured] = best_model["img_s"]
    # The end-to-end runs: at the full resolution (older results do not say which: theirs)
    # and at each lower one.
    whole = {r["resolution"]: r.get("end_to_end_img_s") for r in progressive}
    if result.get("end_to_end"):
        whole[result["end_to_end"].get("resolution", measured)] = result["end_to_end"]["img_s"]
    wanted = epoch_resolutions(plan)
    missing = sorted(set(wanted) - set(rates))
    if missing:
        raise ValueError(
            f"no model figure at {', '.join(map(str, missing))} px "
            f"(measured at {', '.join(map(str, sorted(rates)))} px)"
        )
    schedule = [(r, rates[r], whole.get(r)) for r in wanted] if len(set(wanted)) > 1 else []
    out = projection(
        best_model["img_s"],
        best_data["img_s"],
        plan.epochs,
        plan.price_per_gpu_hour,
        plan.gpus,
        schedule,
        whole.get(measured),
    )
    out["model_setting"] = {
        k: best_model[k] for k in ("batch_size", "precision", "channels_last", "compile")
    }
    out["data_setting"] = {k: best_data[k] for k in ("mode", "workers")}
    return out


def fastest(records: list[dict]) -> dict | None:
    """The record with the highest finite "img_s" (failed settings, which have an "error"
    instead, left out); None when there is none."""
    ok = [r for r in records if "img_s" in r and math.isfinite(r["img_s"])]
    return max(ok, key=lambda r: r["img_s"]) if ok else None


def reproject(result: dict, plan: BenchPlan, source: str) -> dict:
    """`result` (an earlier `rn50 bench --json`, read from `source`) with the projection of
    `plan`'s run instead of its own: another recipe, price or GPU count, nothing measured
    again. A UserError when the measurements cannot answer for `plan`."""
    from rn50.errors import UserError

    try:
        projected = project(result, plan)
    except ValueError as e:
        raise UserError(f"{source}: {e}; run rn50 bench with this config instead") from None
    if projected is None:
        raise UserError(
            f"{source}: needs a model and a data measurement (it was run with --only)"
        )
    return {**result, "projection": projected, "projected_from": source}


def read_result(path: str) -> dict:
    """An `rn50 bench --json` output file; a UserError naming what is wrong with it."""
    from rn50.errors import UserError

    try:
        result = json.loads(Path(path).read_text())
    except OSError as e:
        raise UserError(f"--from: cannot read {path}: {e.strerror or e}") from None
    except ValueError:
        raise UserError(f"--from: {path} is not JSON (write it with rn50 bench --json)") from None
    if not isinstance(result, dict) or "plan" not in result or "device" not in result:
        raise UserError(f"--from: {path} is not the output of rn50 bench --json")
    return result
