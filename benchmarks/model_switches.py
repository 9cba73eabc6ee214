"""Training-step images/s of ResNet-50 for each model-path switch, on synthetic data.

    .venv/bin/python benchmarks/model_switches.py [--resolution 112] [--batch 16]
        [--steps 2] [--repeats 3] [--device cpu] [--json]

Each setting runs rn50's own training step (rn50.train.step.train_step: autocast, GradScaler,
OneCycleLR, the optimizer of rn50.optim with its parameter groups) on random images, with
one config key changed from rn50's defaults (bf16 autocast where the device has it,
channels_last, fused SGD, no weight decay on BatchNorm, zero-init of the last BatchNorm of
each block). One warm-up step, then --repeats timed runs of --steps steps; the settings take
turns within each repeat, so a change of load on the machine hits them alike; the median is
printed, with its ratio to the defaults. `rn50 bench` covers precision x channels_last x
torch.compile x batch size; this script covers the switches it does not. zero_init_residual
and no_bn_weight_decay change no computation of a step (only the initial weights and which
parameters decay), so they are measured as a check that they cost nothing.
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn

from rn50.bench.timing import sync
from rn50.config import Config
from rn50.ema import ModelEMA
from rn50.model import build_model
from rn50.optim import build_optimizer, build_scheduler
from rn50.train.runtime import Runtime, resolve_precision
from rn50.train.step import train_step

# name -> (section, key, value) changed from the defaults; None: the defaults themselves.
SETTINGS = {
    "defaults (bf16, channels_last, fused SGD)": None,
    "train.precision: fp32": ("train", "precision", "fp32"),
    "model.channels_last: false": ("model", "channels_last", False),
    "optim.fused: false": ("optim", "fused", False),
    "optim.no_bn_weight_decay: false": ("optim", "no_bn_weight_decay", False),
    "model.zero_init_residual: false": ("model", "zero_init_residual", False),
    "train.label_smoothing: 0.1": ("train", "label_smoothing", 0.1),
    "train.ema: true": ("train", "ema", True),
    "train.accum_steps: 2 (2 x half batch)": ("train", "accum_steps", 2),
    "data.resolution x 5/7 (a progressive-resizing stage)": ("data", "resolution", None),
}


class Setting:
    """One config's model, optimizer, schedule and batch, ready to step."""

    def __init__(self, cfg: Config, device: torch.device, batch: int, steps: int):
        self.rt = Runtime(
            device, resolve_precision(cfg.train.precision, device), cfg.model.channels_last
        )
        torch.manual_seed(0)
        memory_format = torch.channels_last if self.rt.channels_last else torch.contiguous_format
        self.model = build_model(cfg.model).to(device, memory_format=memory_format).train()
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, 10_000)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.rt.use_scaler)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
        self.ema = ModelEMA(self.model, cfg.train.ema_decay) if cfg.train.ema else None
        res, accum = cfg.data.resolution, cfg.train.accum_steps
        micro = batch // accum
        self.batches = [
            (
                torch.randn(micro, 3, res, res, device=device).contiguous(
                    memory_format=memory_format
                ),
                torch.randint(0, cfg.model.num_classes, (micro,), device=device),
            )
            for _ in range(accum)
        ]
        self.images, self.steps = micro * accum, steps

    def step(self) -> None:
        train_step(self.model, self.batches, self.criterion, self.optimizer, self.scaler,
                   self.scheduler, self.rt)  # fmt: skip
        if self.ema is not None:
            self.ema.update(self.model)

    def timed(self) -> float:
        sync(self.rt.device)
        t0 = time.perf_counter()
        for _ in range(self.steps):
            self.step()
        sync(self.rt.device)
        return self.images * self.steps / (time.perf_counter() - t0)


def config_for(change, resolution: int) -> Config:
    cfg = Config()
    cfg.data.resolution = resolution
    if change is not None:
        section, key, value = change
        if key == "resolution":
            value = max(32, round(resolution * 5 / 7 / 16) * 16)  # 224 -> 160, 112 -> 80
        setattr(getattr(cfg, section), key, value)
    return cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolution", type=int, default=112)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    settings = {}
    for name, change in SETTINGS.items():
        cfg = config_for(change, args.resolution)
        setting = Setting(cfg, device, args.batch, args.steps)
        setting.step()  # warm-up: allocation, autotuning, the fused kernels' first launch
        settings[name] = (setting, cfg.data.resolution)
    runs: dict[str, list[float]] = {name: [] for name in settings}
    names = list(settings)
    for i in range(args.repeats):
        # A different setting goes first in each repeat: the first one after a pause runs
        # slower on a CPU (caches, frequency), which must not always hit the same setting.
        for name in names[i % len(names):] + names[: i % len(names)]:
            runs[name].append(settings[name][0].timed())
    base = statistics.median(runs[next(iter(runs))])
    rows = [
        {
            "setting": name,
            "resolution": settings[name][1],
            "img_s": statistics.median(values),
            "vs_defaults": statistics.median(values) / base,
            "runs": values,
        }
        for name, values in runs.items()
    ]
    if args.json:
        print(json.dumps({"device": str(device), "args": vars(args), "rows": rows}, indent=1))
        return
    print(f"ResNet-50 training step, batch {args.batch}, {args.device}, median of "
          f"{args.repeats} x {args.steps} steps")  # fmt: skip
    print("| setting | resolution | images/s | vs defaults | runs |")
    print("| --- | ---: | ---: | ---: | --- |")
    for r in rows:
        runs_text = ", ".join(f"{v:.2f}" for v in r["runs"])
        print(f"| {r['setting']} | {r['resolution']} | {r['img_s']:.2f} | "
              f"{r['vs_defaults']:.2f}x | {runs_text} |")  # fmt: skip


if __name__ == "__main__":
    main()
