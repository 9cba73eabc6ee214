"""How many worker processes a command may start: what was asked, capped to the machine.

Every worker count (data.workers of train/eval/lr-find, `data check --workers`, `data prepare
--workers`, `bench --workers`) goes through `cap_workers`: more processes than CPUs only share
the same CPUs (and each holds its own memory: 1,200 of them took 4.5 GB), and more than there
are pieces of work leaves the extra ones idle.
"""

import os
import sys
from collections.abc import Callable

from rn50.errors import UserError


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask (set by taskset, cgroup cpusets, Slurm,
    container limits), else os.cpu_count(); at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def local_processes() -> int:
    """Processes of this run on this machine that each start data workers: torchrun's
    LOCAL_WORLD_SIZE (one per local GPU), else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    except ValueError:  # not torchrun's: a single process
        return 1


def note(message: str) -> None:
    """One line on stderr (stdout stays the command's result: a table, JSON)."""
    print(f"rn50: note: {message}", file=sys.stderr, flush=True)


def cap_workers(
    requested: int | None,
    name: str,
    work: int | None = None,
    least: int = 0,
    share: int = 1,
    say: Callable[[str], None] | None = note,
) -> int:
    """The number of worker processes to start for a request of `requested` (None: one a CPU).

    The cap is available_cpus() // share (share: processes of this machine that each start
    workers, e.g. torchrun's LOCAL_WORLD_SIZE; at least 1 each) and `work` (pieces of work,
    e.g. files; none when None). A request below `least` is a UserError naming `name` (the
    flag or key); a request that is capped gets one line through `say`, naming why. 0 stays 0
    (work in the calling process) where `least` allows it.
    """
    if requested is not None and requested < least:
        raise UserError(f"{name} must be at least {least}, got {requested}")
    cpus = available_cpus()
    machine = max(1, cpus // max(1, share))
    limit = machine if work is None else max(1, min(machine, work))
    if requested is None:
        return limit
    if requested <= limit:
        return requested
    if say is not None:
        if work is not None and work < machine:
            why = f"there are only {work} to do"
        elif share > 1:
            why = f"this process may use {cpus} CPUs, shared by {share} processes"
        else:
            why = f"this process may use {cpus} CPU{'s' if cpus != 1 else ''}"
        say(f"{name} {requested} lowered to {limit}: {why}")
    return limit
