"""Atomic file writes: a reader sees the old file or the new one, never half of one; and the
removal of the temporary files that killed writers left behind."""

import contextlib
import os
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

# A writer's temporary file: ".<name>.tmp-<host>-<pid>"; ".<name>.tmp<pid>" before the host was
# part of the name.
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp(?:-(?P<host>.+)-)?(?P<pid>\d+)$")


def host_name() -> str:
    """This machine's name as it appears in temporary file names (no path separators)."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"


def temp_path(path: str | os.PathLike) -> Path:
    """The hidden temporary file beside `path` that this process writes before renaming it
    to `path`: ".<name>.tmp-<host>-<pid>", so that remove_stale_temps knows its writer."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{host_name()}-{os.getpid()}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one of another user counts)."""
    if pid <= 0:
        return True  # not a process id: never taken for a dead writer
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False  # larger than any process id
    return True


def stale_temps(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Temporary files under `folder` (named as temp_path names them) whose writer is gone:
    written on this machine by a process that no longer runs. Files of other machines (a
    shared filesystem) are never listed; names without a host (written before the host was
    part of the name) are taken for this machine's."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    here = host_name()
    walk = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    found = []
    for parent, _, names in walk:
        for name in names:
            m = TEMP_NAME.match(name)
            if m is None or m.group("host") not in (None, here) or pid_alive(int(m.group("pid"))):
                continue
            path = Path(parent) / name
            if path.is_file() and not path.is_symlink():
                found.append(path)
    return sorted(found)


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = False) -> str | None:
    """Delete stale_temps(folder, recursive); returns the line that says what was removed
    (how many, their size and the first names), or None when there was nothing."""
    removed, size = [], 0
    for path in stale_temps(folder, recursive):
        with contextlib.suppress(FileNotFoundError):
            size += path.stat().st_size
            path.unlink()
            removed.append(path)
    if not removed:
        return None
    names = ", ".join(str(p.relative_to(folder)) for p in removed[:5])
    more = f" and {len(removed) - 5} more" if len(removed) > 5 else ""
    return (
        f"Removed {len(removed)} temporary file(s) of killed writers ({size / 1e6:.1f} MB) "
        f"in {folder}: {names}{more}"
    )


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write to a hidden temporary file beside `path`, fsync it, then rename it over `path`.

    The rename is atomic on POSIX filesystems; on any error the temporary file is removed and
    the previous `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (a reader sees the old file or the new one)."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_with(path: str | os.PathLike, write: Callable[[IO], None]) -> None:
    """Atomically write a binary file produced by `write(file_object)` (e.g. torch.save)."""
    with atomic_open(path, "wb") as f:
        write(f)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable across a power loss; not possible on every platform.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


LOCK_FILE = ".rn50.lock"


def lock_run_dir(run_dir: str | os.PathLike) -> IO[str]:
    """Take `run_dir`'s lock for this process (an exclusive flock on run_dir/.rn50.lock, held
    until the returned file is closed or the process ends, however it ends), creating the
    folder. Two trainings writing one run dir would interleave their checkpoints and
    records. Raises UserError naming the process that holds it."""
    import fcntl

    from rn50.errors import UserError

    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")  # noqa: SIM115 - held open for the whole run
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise UserError(
            f"train.checkpoint_dir {run_dir} is in use by another rn50 run ({holder}); wait "
            f"for it to end, or use another train.checkpoint_dir"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"process {os.getpid()} on {host_name()}\n")
    f.flush()
    return f
