"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write to a hidden temporary file beside `path`, fsync it, then rename it over `path`.

    The rename is atomic on POSIX filesystems; on any error the temporary file is removed and
    the previous `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
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
