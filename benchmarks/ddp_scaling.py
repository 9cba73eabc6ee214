"""Training throughput of 1 process against torchrun with 2 ranks (gloo, CPU) on the demo data.

    .venv/bin/python benchmarks/ddp_scaling.py [--data data/demo] [--repeats 3] [--epochs 2]

Runs `rn50 train --config configs/demo.yaml` (ResNet-50, 32 px, bf16 autocast) with the same
global batch of 64 in three set-ups:

    1 process,  1 thread    data.batch_size=64                     OMP_NUM_THREADS=1
    1 process,  2 threads   data.batch_size=64                     OMP_NUM_THREADS=2
    2 ranks,    1 thread    data.batch_size=32, torchrun (gloo)    OMP_NUM_THREADS=1 each

and prints the training images/s of the last epoch (the first one warms up), all ranks
together, as the median of --repeats runs (the set-ups take turns). Data loading runs in the
training process (data.workers=0), so each rank uses exactly one core. Create the data
first: `rn50 data demo data/demo`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SETUPS = {
    "1 process x 1 thread": (1, 1, 64),  # (ranks, threads per rank, batch per rank)
    "1 process x 2 threads": (1, 2, 64),
    "torchrun 2 ranks x 1 thread": (2, 1, 32),
}


def train_images_per_s(data: str, epochs: int, ranks: int, threads: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        overrides = [
            f"data.data_dir={data}",
            f"data.batch_size={batch}",
            "data.workers=0",
            f"train.epochs={epochs}",
            f"train.checkpoint_dir={run_dir}",
            "train.log_every=0",
        ]
        rn50 = ["-m", "rn50", "train", "--config", "configs/demo.yaml"]
        rn50 += [arg for o in overrides for arg in ("--set", o)]
        launcher = [sys.executable]
        if ranks > 1:
            launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(launcher + rn50, env=env, check=True, capture_output=True)
        last = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()[-1]
        return json.loads(last)["images_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/demo")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    runs: dict[str, list[float]] = {name: [] for name in SETUPS}
    for _ in range(args.repeats):  # interleaved: a busy spell of the machine hits every set-up
        for name, (ranks, threads, batch) in SETUPS.items():
            runs[name].append(train_images_per_s(args.data, args.epochs, ranks, threads, batch))
            # Other work on the machine skews these numbers: say how busy it was.
            load = os.getloadavg()[0]
            print(f"  {name}: {runs[name][-1]:.1f} img/s (load average {load:.2f})", flush=True)
    medians = {name: statistics.median(r) for name, r in runs.items()}
    for name, r in runs.items():
        each = ", ".join(f"{x:.1f}" for x in r)
        print(f"{name:30s} {medians[name]:6.1f} img/s  (runs: {each})")
    base = medians["1 process x 1 thread"]
    two = medians["torchrun 2 ranks x 1 thread"]
    print(f"2 ranks / 1 rank: {two / base:.2f}x (ideal 2.00x)")
    print(f"2 ranks / 1 process with both cores: {two / medians['1 process x 2 threads']:.2f}x")


if __name__ == "__main__":
    main()
