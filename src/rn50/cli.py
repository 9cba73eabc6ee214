"""The `rn50` command line. Each subcommand parses its arguments, loads the config and calls
one library function; errors the user can fix print one line and exit with code 2."""

import argparse
import os
import sys
import typing
from collections.abc import Sequence

from rn50 import __version__
from rn50.errors import Diverged, UserError, excerpt
from rn50.preempt import EXIT_PREEMPTED, Preempted

EXIT_USAGE = 2
EXIT_DIVERGED = 3  # the loss stayed NaN/inf; the last good checkpoint is kept
EXIT_DATA_ERRORS = 1  # `data check` found unreadable files or classes missing from val


def _config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--config",
        "-c",
        required=required,
        metavar="FILE",
        help="YAML file with the values that differ from the defaults",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set optim.max_lr=0.5 (repeatable)",
    )


def check_run_files(cfg, writes_run_dir: bool = True) -> None:
    """The files a config names, checked before anything is read or written; data.workers
    capped to this machine's share of CPUs (rn50.resources.cap_workers).

    data.data_dir must be a folder; data.skip_list a text file; train.initial_model_path,
    when set, a loadable checkpoint or a file that can be written; train.checkpoint_dir (when
    the command writes there) a folder that can be written. Raises UserError with one line.
    """
    from rn50.config import check_data_dir
    from rn50.paths import check_input_file, check_output_dir, check_output_file
    from rn50.resources import cap_workers, local_processes, note

    check_data_dir(cfg.data)
    if cfg.data.skip_list:
        check_input_file(
            cfg.data.skip_list, "data.skip_list", "write one with 'rn50 data check DATA_DIR "
            "--skip-list FILE' (it always holds a header)", text=True,
        )
    if writes_run_dir:
        check_output_dir(cfg.train.checkpoint_dir, "train.checkpoint_dir")
        initial = cfg.train.initial_model_path
        if initial and os.path.lexists(initial):
            from rn50.checkpoint import load_checkpoint

            hint = "delete it (it is written again) or set train.initial_model_path to another path"
            load_checkpoint(check_input_file(initial, "train.initial_model_path", hint))
        elif initial:
            check_output_file(initial, "train.initial_model_path")
    if cfg.data.workers != "auto":  # auto: rn50.data.auto chooses within the share
        # A line when the count the user chose is lowered (rank 0 only).
        chosen = os.environ.get("RANK", "0") == "0"
        cfg.data.workers = cap_workers(cfg.data.workers, "data.workers",
                                       share=local_processes(), say=note if chosen else None)


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model from scratch (or resume the run in train.checkpoint_dir).

    On several GPUs or machines, launch the same command with torchrun, e.g.
    torchrun --nproc_per_node=8 -m rn50 train --config FILE: one process per GPU, each
    training on its share of every global batch (DistributedDataParallel; rank 0 logs and
    writes the files). See README: Multi-GPU and multi-node.
    """
    from rn50 import distributed as dist
    from rn50.config import load_config
    from rn50.train.loop import fit
    from rn50.train.runtime import resolve_device

    cfg = load_config(args.config, args.overrides)
    check_run_files(cfg)
    with dist.process_group(resolve_device(cfg.train.device)):
        fit(cfg)
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    """Run the LR range test for a training config and suggest optim.max_lr.

    Sweeps the LR exponentially from lr_finder.start_lr to lr_finder.end_lr over
    lr_finder.num_iter real training steps (same model, data, precision and optimizer as
    training, on a copy of the initial weights), smooths the loss with a bias-corrected
    moving average and stops when it diverges (lr_finder.diverge_factor x its best).
    Rules (lr_finder.rule): divergence (default) = the LR where the sweep diverged /
    lr_finder.divergence_divisor (3); edge = the last LR before the loss (running median of
    5) rises lr_finder.edge_rise above its lowest value; steepest = the LR of the steepest
    descent of the smoothed loss before its minimum; minimum = the LR of the lowest smoothed
    loss / lr_finder.min_divisor. README.md compares them on real runs. Writes
    lr_finder_<time>_start<a>_end<b>_iter<n>.png and .csv to train.checkpoint_dir.
    Set optim.max_lr: auto to run this before training automatically.
    """
    from rn50.config import load_config
    from rn50.train.lr_finder import lr_find

    cfg = load_config(args.config, args.overrides)
    check_run_files(cfg)
    result = lr_find(cfg)
    print(f"Use it with: --set optim.max_lr={result.max_lr:.4g}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint or torchvision-format weights on the val set: loss, top-1, top-5.

    --checkpoint: the checkpoint's own config is used (data, resolution, model, eval.flip);
    --config and --set change it, e.g. --set data.data_dir=/other/imagenet. The checkpoint's
    class ids are compared with the dataset's: a dataset class the checkpoint does not know
    stops it with one line; the same ids in another order (or a subset of them) are scored
    by id, and it says so.
    --weights FILE: a torchvision state_dict of model.arch (torch.save or .safetensors; e.g.
    torchvision's resnet50 IMAGENET1K_V1, 76.13% / 92.86% published) on the val set of
    --config; with 1000 classes the dataset's class ids must be ImageNet-1k's sorted wnids.
    Checks that a val set, its labels and this eval transform reproduce published numbers.
    --flip/--no-flip turns flip test-time augmentation on or off (eval.flip). Under torchrun
    each process evaluates its share of the images and rank 0 prints the totals. Unreadable
    images are named in warnings and counted.
    """
    from rn50 import distributed as dist
    from rn50.checkpoint import load_checkpoint
    from rn50.config import from_dict, load_config
    from rn50.data.schedule import eval_resolution
    from rn50.data.transforms import eval_resize_size
    from rn50.runlog import ConsoleLog
    from rn50.train.evaluate import evaluate_checkpoint, evaluate_weights
    from rn50.train.runtime import resolve_device

    state = load_checkpoint(args.checkpoint) if args.checkpoint else None
    base = from_dict(state.get("config", {})) if state else None
    cfg = load_config(args.config, args.overrides, base=base)
    if args.flip is not None:
        cfg.eval.flip = args.flip
    check_run_files(cfg, writes_run_dir=False)
    with dist.process_group(resolve_device(cfg.train.device)):
        # Every process names the unreadable files of its share.
        warn = ConsoleLog().warn
        if state:
            r = evaluate_checkpoint(state, args.checkpoint, cfg, warn)
        else:
            r = evaluate_weights(args.weights, cfg, warn)
        if not dist.is_main():
            return 0
    if state:
        print(f"Checkpoint: {args.checkpoint} (epoch {state.get('epoch', '?')})")
        if r["classes"] == "mapped":
            print("Classes: the dataset's class ids differ in order or number from the "
                  "checkpoint's; each val image is scored against the output of its class id")
    else:
        print(f"Weights: {args.weights} ({cfg.model.arch}, {cfg.model.num_classes} classes)")
    crop = eval_resolution(cfg.data)
    print(f"Transform: short side resized to {eval_resize_size(crop, cfg.data.crop_ratio)} px, "
          f"center crop {crop} px (torchvision's for its ResNet-50 weights: 256, 224); "
          f"flip TTA {'on' if cfg.eval.flip else 'off'}")
    print(f"Val images: {r['count']}")
    if r["skipped"]:
        print(f"Skipped unreadable images: {r['skipped']} (named in the warnings above)")
    print(f"Val Loss: {r['loss']:.4f} Top-1: {r['top1']:.2f}% Top-5: {r['top5']:.2f}%")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print every config key with its default and meaning, or the resolved config of a file."""
    from rn50.config import describe, load_config

    if args.config or args.overrides:
        print(load_config(args.config, args.overrides).to_yaml(), end="")
    else:
        print(describe())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Print the top classes of each image with their names and probabilities.

    Uses the checkpoint's own eval transform (short side resized to resolution / crop_ratio,
    center crop) and its class names. --onnx FILE runs a model from `rn50 export --format onnx`
    with ONNX Runtime instead (classes from the .classes.json beside it, or --classes).
    With eval.flip (or --flip) each image's logits are the mean of its own and its mirror's.
    A file that cannot be classified (not an image, truncated, under 8x8 px, over 100
    megapixels) gets one error line on stderr, and the exit code is 2.
    """
    import json

    from rn50.serve.predict import Predictor, format_table

    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {excerpt(args.top)}")
    if args.onnx:
        predictor = Predictor.from_onnx(args.onnx, args.classes, args.flip)
    else:
        predictor = Predictor.from_checkpoint(args.checkpoint, args.device, args.flip)
    records = predictor.predict_files(args.images, args.top)
    good = [r for r in records if "error" not in r]
    if args.json:
        print(json.dumps(records, indent=1, ensure_ascii=False))
    elif good:
        print(format_table(good))
    for r in records:
        if "error" in r:
            print(f"rn50: error: {r['image']}: {r['error']}", file=sys.stderr)
    return EXIT_USAGE if len(good) < len(records) else 0


def cmd_app(args: argparse.Namespace) -> int:
    """Serve a web page for a checkpoint: upload or paste a photo, see the top-5 classes.

    A Gradio app on http://127.0.0.1:7860 unless --host/--port say otherwise (never a public
    share link), with example photos from scikit-image. A bad upload shows what is wrong with
    it and the page keeps working. Stop it with Ctrl+C.
    """
    from rn50.serve.app import serve

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {excerpt(args.port)}")
    serve(args.checkpoint, args.host, args.port, args.device)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint as safetensors, ONNX or TorchScript, or as a Hugging Face Space.

    --format safetensors  the weights alone; load them into torchvision's model of the same
                          arch with load_state_dict(strict=True)
    --format onnx         input "images" (N x 3 x R x R, batch axis dynamic), output "logits";
                          checked against PyTorch with ONNX Runtime on the example photos (the
                          max logit difference is printed; a file over the bound is not kept)
    --format torchscript  a traced module (PyTorch deprecates TorchScript; for LibTorch)
    Each goes to --out (default: beside the checkpoint) with <name>.classes.json next to it;
    the same class list is in the file's own metadata.

    --space DIR writes a folder to push to a Hugging Face Space (Gradio SDK, CPU): app.py,
    inference.py, ui.py, requirements.txt, README.md with the Space metadata, model.onnx
    (ONNX Runtime, no PyTorch) or with --space-backend torch model.safetensors, classes.json
    and examples/.
    """
    from rn50.paths import check_output_dir, check_output_file
    from rn50.serve.export import export_model, export_space

    if args.space:
        check_output_dir(args.space, "--space")
    elif args.out:
        check_output_file(args.out, "--out")
    if args.space:
        print(export_space(args.checkpoint, args.space, args.space_backend))
    else:
        print(export_model(args.checkpoint, args.format, args.out))
    return 0


def cmd_data_demo(args: argparse.Namespace) -> int:
    """Write the embedded demo dataset (scikit-learn's handwritten digits as RGB JPEGs) in the
    Kaggle ILSVRC layout."""
    from rn50.data.demo import write_demo_dataset
    from rn50.paths import check_output_dir

    check_output_dir(args.out, "DIR")
    index = write_demo_dataset(args.out, size=args.size)
    print(
        f"Demo dataset in {index.root}: {len(index.classes)} classes, "
        f"{len(index.train)} train and {len(index.val)} val images"
    )
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    """Decode every image of a dataset (either layout) and report what would go wrong.

    Reports counts per split and class, classes with no val images, unreadable files (zero
    bytes, truncated, not an image), files the trainer converts on every read (not JPEG
    inside a .JPEG name, CMYK, grayscale, 16-bit, alpha, palette) and byte-identical
    duplicates (within a split, and across train and val, which inflates val accuracy).

    Also named and counted as errors: entries not indexed (symbolic link loops, broken links,
    folders that cannot be listed, FIFOs/sockets/devices under image names, names that are
    not UTF-8, images where class folders belong) and label problems (LOC_val_solution.csv
    rows whose boxes name different synsets or that repeat an ImageId with another class,
    class folders differing only in case or spaces).

    Exit code: 0 no errors (warnings allowed), 1 errors found (unreadable files, entries not
    indexed, label problems, or classes with no readable val or train image), 2 no dataset
    at PATH, a train class folder that cannot be listed, or a bad argument.
    --skip-list FILE writes the unreadable files (paths relative to the dataset root) for
    data.skip_list; --fix-to DIR writes a copy that checks clean: converted files re-encoded
    as RGB, unreadable ones left out, the rest hard-linked.
    """
    from rn50.data.check.fix import check_fix_target, write_fixed_copy
    from rn50.data.check.report import format_report, write_json
    from rn50.data.check.scan import check_dataset
    from rn50.data.layout import find_dataset
    from rn50.data.skiplist import write_skip_list
    from rn50.paths import check_output_dir, check_output_file
    from rn50.resources import cap_workers

    if args.max_paths < 0:
        raise UserError(f"--max-paths must be 0 or more, got {excerpt(args.max_paths)}")
    if args.workers is not None and args.workers < 1:  # every argument before the dataset
        raise UserError(f"--workers must be at least 1, got {excerpt(args.workers)}")
    # Every output before the scan, not after an hour of it.
    for flag, path in (("--json", args.json), ("--skip-list", args.skip_list)):
        if path:
            check_output_file(path, flag)
    if args.fix_to:
        check_output_dir(args.fix_to, "--fix-to")
    index = find_dataset(args.path)
    if args.fix_to:
        check_fix_target(args.fix_to, index.root)
    files = len(index.train) + len(index.val)
    workers = cap_workers(args.workers, "--workers", work=files, least=1)
    report = check_dataset(index, workers=workers, progress=True)
    print(format_report(report, max_paths=args.max_paths))
    if args.json:
        write_json(report, args.json)
        print(f"Full report: {args.json}")
    if args.skip_list:
        write_skip_list(report, args.skip_list)
        print(f"Skip list ({len(report.errors)} file(s)): {args.skip_list}")
    if args.fix_to:
        fixed = write_fixed_copy(report, index, args.fix_to, progress=True)
        print(
            f"Fixed copy in {fixed.out_dir}: {fixed.reencoded} re-encoded, {fixed.linked} "
            f"hard-linked, {fixed.copied} copied, {fixed.left_out} unreadable left out"
        )
    return EXIT_DATA_ERRORS if report.has_errors else 0


def cmd_data_show(args: argparse.Namespace) -> int:
    """Save a grid of the first training images of a config, as the model sees them.

    The images come from the run's own train loader (train.seed, epoch 1): after the random
    resized crop and flip, normalized as on the device, then mapped back to pixels for display.
    Each tile is titled with its class name. Default output: <train.checkpoint_dir>/samples.png.
    """
    from pathlib import Path

    from rn50.config import load_config
    from rn50.data.show import show_samples
    from rn50.paths import check_output_file

    cfg = load_config(args.config, args.overrides)
    check_run_files(cfg, writes_run_dir=False)
    out = args.out or Path(cfg.train.checkpoint_dir) / "samples.png"
    check_output_file(out, "--out" if args.out else "<train.checkpoint_dir>/samples.png")
    print(f"Wrote {show_samples(cfg, out, args.count)}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """List the runs under DIR (folders with a metrics.jsonl), or overlay their curves.

    The table gives each run's epochs done/planned, best val top-1 (and its epoch), that
    epoch's top-5, the time trained, images/s and the cost (when train.price_per_gpu_hour was
    set). --plot RUN [RUN ...] writes val top-1, val loss and train loss per epoch of those
    run dirs, overlaid, to --out.
    """
    from rn50.paths import check_output_file
    from rn50.runs import format_table, load_runs, plot_runs

    if args.plot:
        check_output_file(args.out, "--out")
        print(f"Wrote {plot_runs(args.plot, args.out)}")
        return 0
    runs = load_runs(args.dir, warn=lambda msg: print(f"rn50: warning: {msg}", file=sys.stderr))
    if not runs:
        print(f"No runs under {args.dir} (a run dir holds metrics.jsonl)")
        return 0
    print(format_table(runs))
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    """Write a resized copy of a dataset (same layout and names) that decodes faster.

    Images whose longest side is above --max-side are resized to it (Lanczos) and saved as JPEG
    at --quality; smaller JPEGs are copied byte for byte; CMYK, PNG and other files become RGB
    JPEGs; unreadable files are left out and listed. Runs in --workers processes with a
    progress bar, and resumes: run the same command again after an interruption (other
    settings are refused). The copy's file index is cached, so training on it starts in
    seconds. Then train with --set data.data_dir=DST.
    """
    from rn50.data.layout import find_dataset
    from rn50.data.prepare import prepare_dataset
    from rn50.paths import check_output_dir
    from rn50.resources import cap_workers

    check_output_dir(args.dst, "DST")
    index = find_dataset(args.src)  # cached: prepare_dataset's own call reads it back
    workers = cap_workers(args.workers, "--workers", work=len(index.train) + len(index.val),
                          least=1)
    s = prepare_dataset(args.src, args.dst, args.max_side, args.quality, workers,
                        progress=True)
    for line in s.warnings:  # entries set aside while indexing: not copied
        print(f"warning: {line}", file=sys.stderr)
    if s.removed_temps:
        print(s.removed_temps)
    print(f"Prepared {s.out_dir}: {s.total - len(s.bad)} of {s.total} files ({s.resized} "
          f"resized, {s.copied} copied, {s.converted} converted, {s.already_done} done before)")
    if s.bad:
        shown = "\n  ".join(s.bad[:10]) + (f"\n  ... and {len(s.bad) - 10} more"
                                           if len(s.bad) > 10 else "")
        print(f"Left out {len(s.bad)} unreadable file(s):\n  {shown}")
    return 0


# bench's flags that choose what to measure (meaningless with --from).
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

    from rn50.bench.plan import (
        COMPILE_MODES,
        DATA_MODES,
        PARTS,
        PRECISIONS,
        default_plan,
        parse_list,
    )
    from rn50.bench.projection import read_result, reproject
    from rn50.bench.report import format_report
    from rn50.bench.run import run_bench
    from rn50.config import load_config
    from rn50.paths import check_input_file
    from rn50.resources import available_cpus, cap_workers, note
    from rn50.train.runtime import resolve_device

    cfg = load_config(args.config, args.overrides)
    if args.from_file and os.path.lexists(args.from_file):  # a missing one: read_result says
        check_input_file(args.from_file, "--from", "pass a file written by rn50 bench --json",
                         text=True)
    # --from needs no device: only the run's length, schedule and price are read from cfg.
    device = "cpu" if args.from_file else resolve_device(args.device or cfg.train.device)
    plan = default_plan(cfg, torch.device(device), args.full,
                        say=None if args.from_file else note)
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
    if args.cores and args.cores > available_cpus():
        raise UserError(f"--cores {args.cores}: this process may use only "
                        f"{available_cpus()} cores")
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
    # Progress goes to stderr, so that stdout holds only the table or the JSON.
    result = run_bench(plan, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=1) if args.json else format_report(result))
    return 0


class Parser(argparse.ArgumentParser):
    """argparse with rn50's error format: one line `rn50: error: ...`, at most ERROR_CHARS
    long (argparse quotes the bad value whole), and exit code 2; no usage block."""

    ERROR_CHARS = 300

    def error(self, message: str) -> typing.NoReturn:
        text = " ".join(message.split())
        if len(text) > self.ERROR_CHARS:
            text = text[: self.ERROR_CHARS - 3] + "..."
        self.exit(EXIT_USAGE, f"rn50: error: {text} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from rn50.config import describe

    parser = Parser(
        prog="rn50", description="Train ResNet-50 from scratch on ImageNet-1k, and serve it."
    )
    parser.add_argument("--version", action="version", version=f"rn50 {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, parent=sub, **kw):
        """A subcommand of `parent` whose help is `func`'s docstring and which runs `func`."""
        kw.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        p = parent.add_parser(
            name, help=func.__doc__.splitlines()[0], description=func.__doc__, **kw
        )
        p.set_defaults(func=func)
        return p

    _config_args(
        add(
            "train",
            cmd_train,
            epilog="config keys (section.key: default  # meaning):\n" + describe(),
        )
    )

    _config_args(add("lr-find", cmd_lr_find))

    p = add("eval", cmd_eval)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", metavar="FILE", help="a .pth written by train")
    model.add_argument("--weights", metavar="FILE",
                       help="a torchvision-format state_dict (.pth/.pt or .safetensors)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="flip test-time augmentation on or off (default: eval.flip)")
    _config_args(p, required=False)

    _config_args(add("config", cmd_config), required=False)

    p = add("predict", cmd_predict)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files to classify")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", metavar="FILE", help="a .pth written by train")
    model.add_argument("--onnx", metavar="FILE", help="a .onnx written by export")
    p.add_argument("--classes", metavar="FILE", help="classes JSON for --onnx")
    p.add_argument("--top", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="flip test-time augmentation on or off (default: the checkpoint's "
                   "eval.flip, or the classes file's flip)")

    p = add("app", cmd_app)
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a .pth written by train")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")

    p = add("export", cmd_export)
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a .pth written by train")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--format", choices=["safetensors", "onnx", "torchscript"])
    what.add_argument("--space", metavar="DIR", help="write a Hugging Face Space folder here")
    p.add_argument("--out", metavar="FILE", help="output file for --format")
    p.add_argument(
        "--space-backend",
        choices=["onnx", "torch"],
        default="onnx",
        help="runtime of the Space: onnx (ONNX Runtime, default) or torch (PyTorch)",
    )

    data = sub.add_parser("data", help="dataset tools", description="Dataset tools.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    p = add("demo", cmd_data_demo, data_sub, formatter_class=argparse.HelpFormatter)
    p.add_argument("out", metavar="DIR", help="where to write the dataset")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")

    p = add("check", cmd_data_check, data_sub)
    p.add_argument("path", metavar="PATH", help="dataset root (ImageFolder or Kaggle ILSVRC)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="decoding processes (default: every CPU this process may use)")
    p.add_argument("--json", metavar="FILE", help="write the full report (every path) as JSON")
    p.add_argument("--skip-list", metavar="FILE", help="write the unreadable files, one a line")
    p.add_argument("--fix-to", metavar="DIR",
                   help="write a fixed copy to this new or empty folder")
    p.add_argument("--max-paths", type=int, default=10, metavar="N",
                   help="paths shown per list in the text report (default 10)")

    p = add("show", cmd_data_show, data_sub)
    _config_args(p)
    p.add_argument("--out", metavar="FILE",
                   help="PNG to write (default <checkpoint_dir>/samples.png)")
    p.add_argument("--count", type=int, default=16, metavar="N",
                   help="images in the grid (default 16)")

    p = add("runs", cmd_runs)
    p.add_argument("dir", nargs="?", default="runs", metavar="DIR",
                   help="folder to search for run dirs (default runs/)")
    p.add_argument("--plot", nargs="+", metavar="RUN", help="run dirs whose curves to overlay")
    p.add_argument("--out", default="runs_compare.png", metavar="FILE",
                   help="PNG for --plot (default runs_compare.png)")
    p = add("prepare", cmd_data_prepare, data_sub)
    p.add_argument("src", metavar="SRC", help="dataset root (ImageFolder or Kaggle ILSVRC)")
    p.add_argument("dst", metavar="DST", help="where to write the copy (new, empty, or resumed)")
    p.add_argument("--max-side", type=int, default=512, metavar="PX",
                   help="longest side of the copies (default 512)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes (default: every CPU this process may use)")

    p = add("bench", cmd_bench)
    _config_args(p, required=False)
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
    return parser


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `yes | head`


def _quiet_stdout() -> None:
    """After the reader of stdout went away (`rn50 config | head`): point stdout at
    /dev/null, so that Python's final flush at exit does not print a second traceback."""
    import contextlib

    with contextlib.suppress(OSError, ValueError, AttributeError):  # no real file: nothing to do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe can still be caught
        return rc
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except UserError as e:
        print(f"rn50: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Preempted:
        return EXIT_PREEMPTED  # the log already says what was saved and how to resume
    except Diverged as e:
        print(f"rn50: error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        print("rn50: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
