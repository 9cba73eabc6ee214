"""`rn50 predict`, `app` and `export`: what a trained checkpoint is used for."""

import argparse
import sys

from rn50.cli.common import EXIT_USAGE, flip_args
from rn50.errors import UserError, excerpt


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
    the same class list is in the file's own metadata. An existing output file is replaced
    only when it is an earlier export (its .classes.json is rn50's) or with --overwrite, and
    never when it is the checkpoint itself.

    --space DIR writes a folder to push to a Hugging Face Space (Gradio SDK, CPU): app.py,
    inference.py, ui.py, requirements.txt, README.md with the Space metadata, model.onnx
    (ONNX Runtime, no PyTorch) or with --space-backend torch model.safetensors, classes.json
    and examples/. A non-empty DIR must be an earlier export (or pass --overwrite): a user's
    own files there are not written over.
    """
    from rn50.paths import check_output_dir, check_output_file
    from rn50.serve.export import (
        check_export_target,
        check_space_target,
        export_model,
        export_space,
    )

    if args.space:
        check_output_dir(args.space, "--space")
        check_space_target(args.space, args.overwrite)
    else:
        if args.out:
            check_output_file(args.out, "--out")
        check_export_target(args.checkpoint, args.format, args.out, args.overwrite)
    if args.space:
        print(export_space(args.checkpoint, args.space, args.space_backend))
    else:
        print(export_model(args.checkpoint, args.format, args.out))
    return 0


def add_commands(add) -> None:
    """Register these subcommands; `add(name, func, parent=...)` makes one."""
    p = add("predict", cmd_predict)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files to classify")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", metavar="FILE", help="a .pth written by train")
    model.add_argument("--onnx", metavar="FILE", help="a .onnx written by export")
    p.add_argument("--classes", metavar="FILE", help="classes JSON for --onnx")
    p.add_argument("--top", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    flip_args(p, "the checkpoint's eval.flip, or the classes file's flip")

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
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file or the files of a non-empty --space "
                   "folder that is not an earlier export (never the checkpoint itself)")
    p.add_argument(
        "--space-backend",
        choices=["onnx", "torch"],
        default="onnx",
        help="runtime of the Space: onnx (ONNX Runtime, default) or torch (PyTorch)",
    )
