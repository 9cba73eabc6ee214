"""`rn50 train`, `lr-find`, `eval`, `config` and `runs`: training, evaluating, and reading
configs and run directories."""

import argparse
import sys

from rn50.cli.common import check_run_files, config_args, flip_args
from rn50.errors import UserError


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
    from rn50.train.run_files import refuse_fresh_start_over
    from rn50.train.runtime import resolve_device

    cfg = load_config(args.config, args.overrides)
    initial = check_run_files(cfg)  # train.initial_model_path, read once
    if not cfg.train.resume:
        refuse_fresh_start_over(cfg.train.checkpoint_dir)
    with dist.process_group(resolve_device(cfg.train.device)):
        fit(cfg, initial)
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
    result = lr_find(cfg, check_run_files(cfg))
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
    if state is not None and not state.get("config") and not args.config:
        raise UserError(
            f"'{args.checkpoint}' holds weights only, no config (a run's initial_model.pth); "
            f"pass the run's --config, or evaluate a checkpoint_epoch_NNN.pth or model_best.pth"
        )
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
        check_output_file(args.out, "--out", "png")
        print(f"Wrote {plot_runs(args.plot, args.out)}")
        return 0
    runs = load_runs(args.dir, warn=lambda msg: print(f"rn50: warning: {msg}", file=sys.stderr))
    if not runs:
        print(f"No runs under {args.dir} (a run dir holds metrics.jsonl)")
        return 0
    print(format_table(runs))
    return 0


def add_commands(add) -> None:
    """Register these subcommands; `add(name, func, parent=...)` makes one."""

    def every_key() -> str:
        from rn50.config import describe

        return "config keys (section.key: default  # meaning):\n" + describe()

    config_args(add("train", cmd_train, epilog_fn=every_key))

    config_args(add("lr-find", cmd_lr_find))

    p = add("eval", cmd_eval)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", metavar="FILE", help="a .pth written by train")
    model.add_argument("--weights", metavar="FILE",
                       help="a torchvision-format state_dict (.pth/.pt or .safetensors)")
    flip_args(p, "eval.flip")
    config_args(p, required=False)

    config_args(add("config", cmd_config), required=False)

    p = add("runs", cmd_runs)
    p.add_argument("dir", nargs="?", default="runs", metavar="DIR",
                   help="folder to search for run dirs (default runs/)")
    p.add_argument("--plot", nargs="+", metavar="RUN", help="run dirs whose curves to overlay")
    p.add_argument("--out", default="runs_compare.png", metavar="FILE",
                   help="PNG for --plot (default runs_compare.png)")
