"""`rn50 data demo | check | show | prepare`: the dataset tools."""

import argparse
import sys

from rn50.cli.common import check_run_files, config_args
from rn50.errors import UserError, excerpt

EXIT_DATA_ERRORS = 1  # `data check` found unreadable files or classes missing from val


def cmd_data_demo(args: argparse.Namespace) -> int:
    """Write the embedded demo dataset (scikit-learn's handwritten digits as RGB JPEGs) in the
    Kaggle ILSVRC layout."""
    from rn50.data.demo import write_demo_dataset
    from rn50.paths import check_output_dir

    if not 8 <= args.size <= 1024:  # 1,797 images of size^2 px: 1024 is already 5 GB of pixels
        raise UserError(f"--size must be 8 to 1024 px, got {excerpt(args.size)}")
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
    # Every output before the scan, not after an hour of it; none inside the dataset.
    for flag, path, kind in (("--json", args.json, "json"),
                             ("--skip-list", args.skip_list, "skip list")):
        if path:
            check_output_file(path, flag, kind, inside=args.path)
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
    check_output_file(out, "--out" if args.out else "<train.checkpoint_dir>/samples.png", "png")
    print(f"Wrote {show_samples(cfg, out, args.count)}")
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
    index = find_dataset(args.src)  # listed once: the count caps the workers, then the copy
    workers = cap_workers(args.workers, "--workers", work=len(index.train) + len(index.val),
                          least=1)
    s = prepare_dataset(args.src, args.dst, args.max_side, args.quality, workers,
                        progress=True, index=index)
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


def add_commands(add, sub) -> None:
    """Register these subcommands; `add(name, func, parent=...)` makes one."""
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
    config_args(p)
    p.add_argument("--out", metavar="FILE",
                   help="PNG to write (default <checkpoint_dir>/samples.png)")
    p.add_argument("--count", type=int, default=16, metavar="N",
                   help="images in the grid (default 16)")

    p = add("prepare", cmd_data_prepare, data_sub)
    p.add_argument("src", metavar="SRC", help="dataset root (ImageFolder or Kaggle ILSVRC)")
    p.add_argument("dst", metavar="DST", help="where to write the copy (new, empty, or resumed)")
    p.add_argument("--max-side", type=int, default=512, metavar="PX",
                   help="longest side of the copies (default 512)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes (default: every CPU this process may use)")
