"""The `rn50` command line. Each subcommand parses its arguments, loads the config and calls
one library function; errors the user can fix print one line and exit with code 2."""

import argparse
import sys
from collections.abc import Sequence

from rn50 import __version__
from rn50.errors import Diverged, UserError
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


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model from scratch (or resume the run in train.checkpoint_dir)."""
    from rn50.config import load_config
    from rn50.engine import fit

    fit(load_config(args.config, args.overrides))
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    """Run the LR range test for a training config and suggest optim.max_lr.

    Sweeps the LR exponentially from lr_finder.start_lr to lr_finder.end_lr over
    lr_finder.num_iter real training steps (same model, data, precision and optimizer as
    training, on a copy of the initial weights), smooths the loss with a bias-corrected
    moving average and stops when it diverges (lr_finder.diverge_factor x its best).
    Rules (lr_finder.rule): steepest = the LR of the steepest descent of the smoothed loss
    (after a running median of 5 removes lone spikes) before its minimum; minimum = the LR of
    the lowest smoothed loss / lr_finder.min_divisor. Writes
    lr_finder_<time>_start<a>_end<b>_iter<n>.png and .csv to train.checkpoint_dir.
    Set optim.max_lr: auto to run this before training automatically.
    """
    from rn50.config import load_config
    from rn50.lr_finder import lr_find

    result = lr_find(load_config(args.config, args.overrides))
    print(f"Use it with: --set optim.max_lr={result.max_lr:.4g}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint on the validation set: val loss, top-1 and top-5.

    The checkpoint's own config is used (data, resolution, model); --config and --set change it,
    e.g. --set data.data_dir=/other/imagenet.
    """
    from rn50.checkpoint import load_checkpoint
    from rn50.config import from_dict, load_config
    from rn50.engine import evaluate_checkpoint

    state = load_checkpoint(args.checkpoint)
    cfg = load_config(args.config, args.overrides, base=from_dict(state.get("config", {})))
    r = evaluate_checkpoint(state, args.checkpoint, cfg)
    print(f"Checkpoint: {args.checkpoint} (epoch {state.get('epoch', '?')})")
    print(f"Val images: {r['count']}")
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
    A file that cannot be classified (not an image, truncated, under 8x8 px, over 100
    megapixels) gets one error line on stderr, and the exit code is 2.
    """
    import json

    from rn50.predict import Predictor, format_table

    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    if args.onnx:
        predictor = Predictor.from_onnx(args.onnx, args.classes)
    else:
        predictor = Predictor.from_checkpoint(args.checkpoint, args.device)
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
    from rn50.app import serve

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
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
    from rn50.export import export_model, export_space

    if args.space:
        print(export_space(args.checkpoint, args.space, args.space_backend))
    else:
        print(export_model(args.checkpoint, args.format, args.out))
    return 0


def cmd_data_demo(args: argparse.Namespace) -> int:
    """Write the embedded demo dataset (scikit-learn's handwritten digits as RGB JPEGs) in the
    Kaggle ILSVRC layout."""
    from rn50.data.demo import write_demo_dataset

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

    Exit code: 0 no errors (warnings allowed), 1 errors found (unreadable files, or classes
    with no readable val or train image), 2 no dataset at PATH or a bad argument.
    --skip-list FILE writes the unreadable files (paths relative to the dataset root) for
    data.skip_list; --fix-to DIR writes a copy that checks clean: converted files re-encoded
    as RGB, unreadable ones left out, the rest hard-linked.
    """
    from rn50.data.doctor import (
        check_dataset,
        check_fix_target,
        format_report,
        write_fixed_copy,
        write_json,
        write_skip_list,
    )
    from rn50.data.layout import find_dataset

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if args.max_paths < 0:
        raise UserError(f"--max-paths must be 0 or more, got {args.max_paths}")
    index = find_dataset(args.path)
    if args.fix_to:
        check_fix_target(args.fix_to, index.root)  # before the scan, not after an hour of it
    report = check_dataset(index, workers=args.workers, progress=True)
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


def build_parser() -> argparse.ArgumentParser:
    from rn50.config import describe

    parser = argparse.ArgumentParser(
        prog="rn50", description="Train ResNet-50 from scratch on ImageNet-1k, and serve it."
    )
    parser.add_argument("--version", action="version", version=f"rn50 {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, **kw):
        p = sub.add_parser(
            name,
            help=func.__doc__.splitlines()[0],
            description=func.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kw,
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
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a .pth written by train")
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
    p = data_sub.add_parser(
        "demo", help=cmd_data_demo.__doc__.splitlines()[0], description=cmd_data_demo.__doc__
    )
    p.add_argument("out", metavar="DIR", help="where to write the dataset")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.set_defaults(func=cmd_data_demo)

    p = data_sub.add_parser(
        "check",
        help=cmd_data_check.__doc__.splitlines()[0],
        description=cmd_data_check.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="PATH", help="dataset root (ImageFolder or Kaggle ILSVRC)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="decoding processes (default: every CPU this process may use)")
    p.add_argument("--json", metavar="FILE", help="write the full report (every path) as JSON")
    p.add_argument("--skip-list", metavar="FILE", help="write the unreadable files, one a line")
    p.add_argument("--fix-to", metavar="DIR",
                   help="write a fixed copy to this new or empty folder")
    p.add_argument("--max-paths", type=int, default=10, metavar="N",
                   help="paths shown per list in the text report (default 10)")
    p.set_defaults(func=cmd_data_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
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
