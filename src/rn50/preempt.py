"""Stop cleanly on SIGTERM/SIGINT: finish the step, save, exit with EXIT_PREEMPTED.

Spot and preemptible machines send SIGTERM shortly before they go away; Ctrl-C sends SIGINT.
The first signal only sets a flag that the training loop checks after each step; a second
one restores the default handler and re-sends itself, so the process ends at once.
"""

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later" - run the same command to resume


class Preempted(Exception):
    """The run stopped on a signal after saving its state."""


class SignalGuard:
    """Context manager: while active, SIGTERM and SIGINT request a stop instead of killing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def name(self) -> str:
        """The received signal's name ("SIGTERM"), or "" when none arrived."""
        return signal.Signals(self.received).name if self.received else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # second signal: stop now
            self.__exit__()
            os.kill(os.getpid(), signum)
            return
        self.received = signum

    def __enter__(self) -> "SignalGuard":
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous.clear()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


@contextlib.contextmanager
def exit_on_sigterm(what: str) -> Iterator[None]:
    """Context: SIGTERM raises SystemExit(143) (128 + SIGTERM, the exit status of a process
    the signal ended), so that `finally` blocks and context managers run: a temporary folder
    is removed. Python's default for SIGTERM ends the process at once, leaving it behind.

    `what` names the work in the one line on stderr ("rn50: bench stopped by SIGTERM").
    A second SIGTERM while that unwinds ends the process at once. Processes forked inside
    (loader workers) are not this one: there SIGTERM keeps its default. Outside the main
    thread, where handlers cannot be set, signals are left alone.
    """
    owner = os.getpid()

    def stop(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the next one ends the process
        if os.getpid() != owner:  # a forked child: end as SIGTERM ends it by default
            os.kill(os.getpid(), signal.SIGTERM)
            return
        print(f"rn50: {what} stopped by SIGTERM", file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.SIGTERM)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
