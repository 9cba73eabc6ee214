"""Where this process stands among the ranks of a run (1 of 1 without torchrun).

torchrun starts one process per device and tells each where it stands through environment
variables; `process_group` joins them for the length of a command. Nothing happens at import.
The helpers below work unchanged in a single process, where they cost nothing.
"""

import os
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from rn50.errors import ConfigError

# What torchrun sets for every process it starts (torch.distributed's env:// rendezvous).
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

# The tensors of the latest collectives, kept alive past the process group's teardown. With
# torch 2.4's gloo, a worker thread that drops the last reference to a finished all-reduce's
# tensor (one Python has already let go of) needs the GIL, while the main thread holds it
# in the group's destructor, waiting for that worker: a deadlock at the very end of a run
# (seen in rn50 eval and rn50 train under torchrun; py-spy --native shows both threads).
_recent: deque[torch.Tensor] = deque(maxlen=8)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank, 0 to world_size() - 1 (0 without torchrun)."""
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    """The number of processes of the run (1 without torchrun)."""
    return dist.get_world_size() if _active() else 1


def local_rank() -> int:
    """This process's index on its machine: the GPU it drives."""
    return int(os.environ.get("LOCAL_RANK", 0)) if _active() else 0


def backend() -> str:
    """The process group's backend ("nccl", "gloo"), or "none" without one."""
    return dist.get_backend() if _active() else "none"


def is_main() -> bool:
    """Rank 0 alone prints, logs and writes files."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """True when torchrun's environment is complete; a half-set one is a ConfigError."""
    present = [name for name in TORCHRUN_ENV if os.environ.get(name)]
    if not present:
        return False
    missing = [name for name in TORCHRUN_ENV if name not in present]
    if missing:
        raise ConfigError(
            f"{', '.join(present)} {'is' if len(present) == 1 else 'are'} set but "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not; launch with "
            f"torchrun (e.g. torchrun --nproc_per_node=8 -m rn50 train ...), which sets them "
            f"all, or unset them for a single process"
        )
    return True


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each process drives GPU LOCAL_RANK of its machine."""
    if device.type == "cuda" and _active():
        return torch.device("cuda", local_rank())
    return device


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Join torchrun's process group while the block runs: NCCL for GPUs, gloo for CPUs.

    Without torchrun's environment this does nothing: a single process.
    """
    if _active() or not launched_by_torchrun():
        yield
        return
    store, rank_, world = _attempt_store()
    if device.type == "cuda":
        local = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(local)  # before NCCL starts, or every rank talks through GPU 0
        dist.init_process_group("nccl", store=store, rank=rank_, world_size=world, device_id=local)
    else:
        dist.init_process_group("gloo", store=store, rank=rank_, world_size=world)
    try:
        yield
        dist.barrier()  # leave together: no rank tears down while another still reduces
    finally:
        dist.destroy_process_group()


def _attempt_store() -> tuple[dist.Store, int, int]:
    """torchrun's key-value store (env://), with keys of this launch attempt only.

    After a restart (--max-restarts) torchrun gives the new processes the store of the failed
    attempt, which still holds where each old rank listened; a new rank that reads such a key
    before it is overwritten connects to a dead process (refused, or a hang). So every attempt
    (TORCHELASTIC_RESTART_COUNT) keeps its keys under a prefix of its own.
    """
    store, rank_, world = next(dist.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"rn50/attempt_{attempt}", store), rank_, world


def _flag_device() -> torch.device:
    # NCCL reduces only GPU tensors, gloo (here) only CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_true(flag: bool | torch.Tensor) -> bool:
    """Whether `flag` holds on every rank (one tiny all-reduce; free in a single process).

    Every rank must take the same branch around a collective (DDP's gradient all-reduce, a
    checkpoint's meter sums) or the run hangs: decisions that depend on local state (a NaN
    loss, a signal, a clock) go through here.
    """
    if not _active():
        return bool(flag)
    t = torch.as_tensor(flag).to(_flag_device(), torch.int32).reshape(1)
    all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def any_true(flag: bool | torch.Tensor) -> bool:
    """Whether `flag` holds on at least one rank."""
    return any_each(flag)[0]


def any_each(*flags: bool | torch.Tensor) -> list[bool]:
    """For each flag, whether it holds on at least one rank (all in one all-reduce)."""
    if not _active():
        return [bool(f) for f in flags]
    t = torch.tensor([bool(f) for f in flags], dtype=torch.int32, device=_flag_device())
    all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """A copy of `t` summed over all ranks (`t` itself in a single process)."""
    if not _active():
        return t
    total = t.clone()
    all_reduce(total)
    return total


def all_reduce(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """dist.all_reduce of `t` in place, `t` kept alive past the group's teardown (see
    _recent); returns `t` (untouched in a single process)."""
    if _active():
        dist.all_reduce(t, op=op)
        _recent.append(t)
    return t


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (a picklable value: a path, a number)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    Each rank's last training forward updated them from its own batch; evaluation must use
    the ones rank 0 saves in the checkpoint.
    """
    if _active():
        for buf in module.buffers():
            dist.broadcast(buf, src=0)
