"""What several commands share: the --config/--set arguments, and the check of the files a
config names before anything is read or written."""

import argparse
import os

EXIT_USAGE = 2  # a problem with the input: one line says which and how to fix it


def config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--config FILE (required unless `required` is False) and repeatable --set KEY=VALUE."""
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


def flip_args(p: argparse.ArgumentParser, default: str) -> None:
    """--flip and --no-flip (dest `flip`: True, False, or None when neither is given; the
    `default` text says what None means). Both on one command line are refused with one line
    (a mutually exclusive group), rather than the last one winning unsaid."""
    flip = p.add_mutually_exclusive_group()
    flip.add_argument("--flip", dest="flip", action="store_const", const=True, default=None,
                      help=f"flip test-time augmentation on (default: {default})")
    flip.add_argument("--no-flip", dest="flip", action="store_const", const=False,
                      help="flip test-time augmentation off")


def check_run_files(cfg, writes_run_dir: bool = True):
    """The files a config names, checked before anything is read or written (data.workers is
    capped to the machine where the loaders' count is chosen: rn50.data.auto.choose_data).

    data.data_dir must be a folder; data.skip_list a text file; train.initial_model_path,
    when set, a loadable checkpoint or a file that can be written; train.checkpoint_dir (when
    the command writes there) a folder that can be written. Raises UserError with one line.
    Returns the checkpoint at train.initial_model_path, when there is one, as read here
    (rn50.train.resume.Preloaded: hand it to fit or lr_find, which then do not read it
    again); else None.
    """
    from rn50.config import check_data_dir
    from rn50.paths import check_input_file, check_output_dir, check_output_file

    check_data_dir(cfg.data)
    if cfg.data.decode == "gpu":  # auto does not choose gpu without the decoder
        from rn50.data.device_decoders import check_gpu_decoder

        check_gpu_decoder(cfg.data.gpu_decoder)
    if cfg.data.skip_list:
        check_input_file(
            cfg.data.skip_list, "data.skip_list", "write one with 'rn50 data check DATA_DIR "
            "--skip-list FILE' (it always holds a header)", text=True,
        )
    preloaded = None
    if writes_run_dir:
        check_output_dir(cfg.train.checkpoint_dir, "train.checkpoint_dir")
        initial = cfg.train.initial_model_path
        if initial and os.path.lexists(initial):
            from rn50.checkpoint import load_checkpoint
            from rn50.train.resume import Preloaded

            hint = "delete it (it is written again) or set train.initial_model_path to another path"
            state = load_checkpoint(check_input_file(initial, "train.initial_model_path", hint))
            preloaded = Preloaded(initial, state)
        elif initial:
            check_output_file(initial, "train.initial_model_path")
    return preloaded
