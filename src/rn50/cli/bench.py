"""`rn50 bench`: measure the model step, the data path and both together, or project a
run from an earlier measurement."""

import argparse
import os
import sys

from rn50.cli.common import config_args
from rn50.errors import UserError, excerpt

MAX_IMAGES = 100_000  # bench --images: files written for one data measurement

MEASURE_FLAGS = ("full", "only", "batch_sizes", "precisions", "compile", "channels_last",
                 "modes", "workers", "images", "data_dir", "steps", "repeats", "threads",
                 "cores", "compile_modes")


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure training speed: model step, data path, both together; project an ImageNet run.

    model: training steps on synthetic data for each precision, channels_last on/off,
    torch.compile on/off and batch size. data: the loader alone on ImageNet-like JPEGs made
    from real photos (or --data-dir's train files), for each decode mode (cpu, gpu, pil) and
    worker count, against torchvision's ImageFolder + RandomResizedCrop/flip/ToTensor/
    Normalize. e2e: the model fed by the loader, stepped as training steps it. Then: an
    ImageNet-1k epoch takes 1,281,167 / min(data, model, e2e) img/s, and the run costs
    hours x --price-per-gpu-hour x --gpus.
    Medians of --repeats runs. A CPU gets a small matrix unless --full (fp16 and compile
    there take long); lists given here replace the defaults. --json prints JSON.
    --only sync: the step's host wait (train.sync_check); --only stages: decode gpu stage by
    stage; --compile-modes: torch.compile modes side by side; --cores N: as if on N cores.

    --from FILE measures nothing: it projects the config's run (its epochs and resolution
    schedule, --gpus, --price-per-gpu-hour) from an earlier --json result, e.g. another
    recipe or another price from one GPU measurement.
    """
    import dataclasses
    import json

    import torch

    from rn50 import resources
    from rn50.bench.plan import (
        COMPILE_MODES,
        DATA_MODES,
        PARTS,
        PRECISIONS,
        default_plan,
        parse_list,
        uses_gpu_decoder,
    )
    from rn50.bench.projection import read_result, reproject
    from rn50.bench.report import format_report
    from rn50.bench.run import run_bench
    from rn50.config import DataConfig, check_data_dir, load_config
    from rn50.data.device_decoders import check_gpu_decoder
    from rn50.paths import check_input_file
    from rn50.resources import cap_workers, note
    from rn50.train.runtime import resolve_device

    cfg = load_config(args.config, args.overrides)
    if args.from_file and os.path.lexists(args.from_file):  # a missing one: read_result says
        check_input_file(args.from_file, "--from", "pass a file written by rn50 bench --json",
                         text=True)
    # --from needs no device: only the run's length, schedule and price are read from cfg.
    device = "cpu" if args.from_file else resolve_device(args.device or cfg.train.device)
    # The auto choices' notes wait until every flag is checked: a bad flag is one line.
    notes: list[str] = []
    plan = default_plan(cfg, torch.device(device), args.full,
                        say=None if args.from_file else notes.append)
    for flag in ("batch_sizes", "precisions", "modes", "workers", "only", "compile_modes"):
        given = getattr(args, flag)
        if given is not None and not given.strip():  # '' would measure nothing, silently
            raise UserError(f"--{flag.replace('_', '-')} needs at least one item, got ''")
    changes = {
        "batch_sizes": args.batch_sizes and parse_list(args.batch_sizes, int, "--batch-sizes"),
        "precisions": args.precisions
        and parse_list(args.precisions, str, "--precisions", PRECISIONS),
        "modes": args.modes and parse_list(args.modes, str, "--modes", DATA_MODES),
        "workers": args.workers and tuple(sorted({
            cap_workers(w, "--workers") for w in parse_list(args.workers, int, "--workers")
        })),
        "parts": args.only and parse_list(args.only, str, "--only", PARTS),
        "compile": (False, True) if args.compile or args.compile_modes else None,
        "compile_modes": args.compile_modes
        and parse_list(args.compile_modes, str, "--compile-modes", COMPILE_MODES),
        "channels_last": {"on": (True,), "off": (False,), "both": (True, False), None: None}[
            args.channels_last
        ],
        "images": args.images, "steps": args.steps, "repeats": args.repeats,
        "data_dir": args.data_dir, "epochs": args.epochs, "gpus": args.gpus,
        "price_per_gpu_hour": args.price_per_gpu_hour, "threads": args.threads,
        "cores": args.cores,
    }
    for name in ("images", "steps", "repeats", "epochs", "gpus", "threads", "cores"):
        if changes[name] is not None and changes[name] < 1:
            raise UserError(f"--{name} must be at least 1, got {excerpt(changes[name])}")
    # JPEGs written to a temporary folder (~50 KB each): 100,000 is 5 GB already.
    if changes["images"] is not None and changes["images"] > MAX_IMAGES:
        got = excerpt(changes["images"])
        raise UserError(f"--images must be at most {MAX_IMAGES:,}, got {got}")
    if args.cores and args.cores > resources.available_cpus():
        raise UserError(f"--cores {args.cores}: this process may use only "
                        f"{resources.available_cpus()} cores")
    if args.cores and args.workers is None and not args.from_file:
        # as if the machine had N cores: the default worker counts and the end-to-end
        # run's workers fit in them
        plan = dataclasses.replace(
            plan,
            workers=tuple(sorted({1, args.cores})),
            e2e_workers=min(plan.e2e_workers, args.cores),
        )
    plan = dataclasses.replace(plan, **{k: v for k, v in changes.items() if v is not None})
    if args.from_file:
        measuring = [f"--{k.replace('_', '-')}" for k in MEASURE_FLAGS if getattr(args, k)]
        if measuring or args.device:
            flags = ", ".join(measuring + (["--device"] if args.device else []))
            raise UserError(f"--from measures nothing: leave out {flags}")
        result = reproject(read_result(args.from_file), plan, args.from_file)
        print(json.dumps(result, indent=1) if args.json else format_report(result))
        return 0
    # before anything is written or measured
    if plan.data_dir:
        check_data_dir(DataConfig(data_dir=plan.data_dir), "--data-dir")
    if uses_gpu_decoder(plan):
        check_gpu_decoder(plan.gpu_decoder)
    for line in notes:
        note(line)
    # Progress goes to stderr, so that stdout holds only the table or the JSON.
    result = run_bench(plan, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=1) if args.json else format_report(result))
    return 0


def add_commands(add) -> None:
    """Register these subcommands; `add(name, func, parent=...)` makes one."""
    p = add("bench", cmd_bench)
    config_args(p, required=False)
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: train.device)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--from", dest="from_file", metavar="FILE",
                   help="measure nothing: project the config's run from an earlier --json "
                   "result")
    p.add_argument("--full", action="store_true",
                   help="the whole matrix: fp16 too, compile on and off, more workers/batches")
    p.add_argument("--only", metavar="PARTS",
                   help="some of model,data,e2e,sync,stages (default model,data,e2e)")
    p.add_argument("--batch-sizes", metavar="LIST", help="model batch sizes, e.g. 64,128")
    p.add_argument("--precisions", metavar="LIST", help="some of fp32,bf16,fp16")
    p.add_argument("--compile", action="store_true", help="also measure with torch.compile")
    p.add_argument("--channels-last", choices=["on", "off", "both"],
                   help="memory layouts to measure (default both)")
    p.add_argument("--modes", metavar="LIST",
                   help="data modes: some of torchvision,pil,cpu,gpu (default all)")
    p.add_argument("--workers", metavar="LIST", help="loader worker counts, e.g. 1,2")
    p.add_argument("--images", type=int, metavar="N", help="files read per data measurement")
    p.add_argument("--data-dir", metavar="DIR", help="read this dataset's train files instead")
    p.add_argument("--steps", type=int, metavar="N", help="timed model steps per repeat")
    p.add_argument("--repeats", type=int, metavar="N", help="timed runs per figure (median)")
    p.add_argument("--epochs", type=int, metavar="E", help="epochs of the projected run")
    p.add_argument("--gpus", type=int, metavar="N", help="devices of the projected run (1)")
    p.add_argument("--price-per-gpu-hour", type=float, metavar="X",
                   help="price of one GPU-hour (default: train.price_per_gpu_hour)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads of the model steps (default: torch's choice)")
    p.add_argument("--cores", type=int, metavar="N",
                   help="measure as if the process had N cores: it and its loader workers "
                   "run on N of its cores (sched_setaffinity), torch uses N threads")
    p.add_argument("--compile-modes", metavar="LIST",
                   help="torch.compile modes of the compiled model settings (implies "
                   "--compile): some of default,max-autotune,max-autotune-no-cudagraphs,"
                   "reduce-overhead")
