"""The `rn50` command line. Each subcommand parses its arguments, loads the config and calls
one library function; errors the user can fix print one line and exit with code 2."""

import argparse
import sys
from collections.abc import Sequence

from rn50 import __version__
from rn50.errors import UserError

EXIT_USAGE = 2


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

    p = add("eval", cmd_eval)
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a .pth written by train")
    _config_args(p, required=False)

    _config_args(add("config", cmd_config), required=False)

    data = sub.add_parser("data", help="dataset tools", description="Dataset tools.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    p = data_sub.add_parser(
        "demo", help=cmd_data_demo.__doc__.splitlines()[0], description=cmd_data_demo.__doc__
    )
    p.add_argument("out", metavar="DIR", help="where to write the dataset")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.set_defaults(func=cmd_data_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"rn50: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("rn50: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
