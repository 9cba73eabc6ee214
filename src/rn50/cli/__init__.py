"""The `rn50` command line. Each subcommand parses its arguments, loads the config and calls
one library function; errors the user can fix print one line and exit with code 2."""

import argparse
import os
import sys
import typing
from collections.abc import Sequence

from rn50 import __version__
from rn50.cli import bench, data, serve, train
from rn50.cli.common import EXIT_USAGE
from rn50.errors import Diverged, UserError
from rn50.preempt import EXIT_PREEMPTED, Preempted

EXIT_DIVERGED = 3  # the run broke: the loss, the weights or the validation loss NaN/inf


class Parser(argparse.ArgumentParser):
    """argparse with rn50's error format: one line `rn50: error: ...`, at most ERROR_CHARS
    long (argparse quotes the bad value whole), and exit code 2; no usage block.

    `epilog_fn` makes the epilog only when the help is shown: `rn50 train --help` lists
    every config key, which every other command would otherwise pay for at start-up."""

    ERROR_CHARS = 300

    def __init__(self, *args, epilog_fn: typing.Callable[[], str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.epilog_fn = epilog_fn

    def format_help(self) -> str:
        """The help text, with the epilog made now when `epilog_fn` makes it."""
        if self.epilog_fn is not None and self.epilog is None:
            self.epilog = self.epilog_fn()
        return super().format_help()

    def error(self, message: str) -> typing.NoReturn:
        """Print `message` as one bounded line and exit with code 2."""
        text = " ".join(message.split())
        if len(text) > self.ERROR_CHARS:
            text = text[: self.ERROR_CHARS - 3] + "..."
        self.exit(EXIT_USAGE, f"rn50: error: {text} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The `rn50` parser: each command module (train, serve, data, bench) adds its commands."""
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

    train.add_commands(add)
    serve.add_commands(add)
    data.add_commands(add, sub)
    bench.add_commands(add)
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
    """Run one command (argv, default sys.argv[1:]); returns its exit code: 0, 1 (data check
    found errors), 2 (bad input, one line on stderr), 3 (the run broke), 75 (stopped by a
    signal after saving), 130 (Ctrl-C) or 141 (stdout closed)."""
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
