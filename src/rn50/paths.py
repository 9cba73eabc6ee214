"""Checks of the paths a user names, made before a command reads or writes anything.

A command that will write a file or a folder checks it first (`check_output_file`,
`check_output_dir`), so a wrong path is one line at the start, not a traceback after an hour's
work; a file it reads is checked to be one (`check_input_file`, `read_text_file`). Each raises
UserError with the path (a bounded excerpt of it) and what to do.
"""

import codecs
import errno
import os
import stat
from pathlib import Path

from rn50.errors import UserError, excerpt

PATH_CHARS = 240  # a path in a message: room for a deep one, not for a megabyte
TEXT_SAMPLE = 1 << 16


def _show(path: str | os.PathLike) -> str:
    """A path quoted in a message: long paths are cut (see rn50.errors.excerpt)."""
    return excerpt(str(path), PATH_CHARS)


def is_link_loop(path: str | os.PathLike) -> bool:
    """Whether `path` cannot be reached for a symbolic link loop (ELOOP: it, or a link on its
    way, leads back to itself); is_dir() and exists() answer only False there."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ELOOP
    except ValueError:  # an embedded NUL byte
        return False
    return False


def link_loop(path: str | os.PathLike, what: str) -> str | None:
    """The one-line message for a `path` (named `what`, e.g. "data.data_dir") that cannot be
    reached for a symbolic link loop (ELOOP: it, or a link on its way, leads back to itself),
    else None. is_dir() and exists() say only False there, which reads as "no such folder"."""
    if not is_link_loop(path):
        return None
    return (f"{what} {_show(path)} is a symbolic link loop (it, or a link on its way, "
            f"leads back to itself, never to a folder); point {what} at your dataset folder")


def _stat(path: Path, what: str) -> os.stat_result | None:
    """os.stat of `path`, None when nothing is there; a path the OS cannot use is an error."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as e:  # ENAMETOOLONG, ELOOP, EACCES, an embedded NUL byte
        reason = getattr(e, "strerror", None) or str(e)
        raise UserError(f"{what} {_show(path)} is not a usable path ({reason})") from None


def _check_parent(path: Path, what: str) -> None:
    """The nearest existing folder above `path` is a folder this process can write in."""
    for parent in path.absolute().parents:
        st = _stat(parent, what)
        if st is None:
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise UserError(
                f"{what} {_show(path)} cannot be created: {_show(parent)} is a "
                f"file, not a folder"
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(
                f"{what} {_show(path)} cannot be created: no permission to write in "
                f"{_show(parent)}"
            )
        return


# What each kind of output file rn50 writes begins with: an existing file is replaced only
# when it begins the same way (an earlier output of the same command), never a user's file.
OUTPUT_KINDS = {
    "png": (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    "json": (b"{", "a JSON report"),
    "skip list": (b"# rn50 skip list", "an rn50 skip list"),
}


def check_output_file(
    path: str | os.PathLike, what: str, kind: str | None = None, inside: str | None = None
) -> Path:
    """`path` can be written as a file: it is absent or a regular file, its folder writable.

    `what` names the path in the message (e.g. "--json"). With `kind` (a key of
    OUTPUT_KINDS), an existing file is replaced only when it begins as that kind of output
    does (an earlier run of the same command wrote it), never a user's other file. With
    `inside` (a dataset root), the path must not be under it. Raises UserError otherwise.
    """
    p = Path(path).expanduser()
    if inside is not None and _under(p, Path(inside)):
        raise UserError(f"{what} {_show(p)} is inside the dataset {_show(inside)}; write it "
                        f"elsewhere")
    st = _stat(p, what)
    if st is not None and kind is not None and stat.S_ISREG(st.st_mode):
        magic, name = OUTPUT_KINDS[kind]
        with open(p, "rb") as f:
            start = f.read(len(magic))
        if start != magic:
            raise UserError(f"{what} {_show(p)} exists and is not {name} rn50 wrote; name a "
                            f"new file, or move that one away")
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {_show(p)} is a folder; name a file to write")
    if st is not None and not stat.S_ISREG(st.st_mode):
        # Writing goes through a temporary file renamed over the target: it would replace a
        # device or a pipe (/dev/null, /dev/stdout) with a plain file.
        raise UserError(f"{what} {_show(p)} is not a regular file; name a file to write")
    _check_parent(p, what)
    return p


def check_output_dir(path: str | os.PathLike, what: str) -> Path:
    """`path` can be a folder to write into: absent (it will be created) or a writable folder.

    Raises UserError when it is a file, or when a file or a read-only folder is above it.
    """
    p = Path(path).expanduser()
    st = _stat(p, what)
    if st is None:
        _check_parent(p, what)
    elif not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {_show(p)} is a file; name a folder")
    elif not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"{what} {_show(p)}: no permission to write in this folder")
    return p


def check_input_file(path: str | os.PathLike, what: str, hint: str, text: bool = False) -> Path:
    """`path` is a regular, readable, non-empty file; else UserError "<what> ...; <hint>".

    With `text`, its first TEXT_SAMPLE bytes must also be UTF-8 (a binary file is refused
    without reading all of it).
    """
    p = Path(path).expanduser()
    st = _stat(p, what)
    shown = _show(p)
    if st is None:
        raise UserError(f"{what} not found: {shown}; {hint}")
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {shown} is a folder, not a file; {hint}")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {shown} is not a regular file; {hint}")
    if st.st_size == 0:
        raise UserError(f"{what} {shown} is empty; {hint}")
    if not os.access(p, os.R_OK):
        raise UserError(f"{what} {shown}: no permission to read it")
    if text:
        with open(p, "rb") as f:
            sample = f.read(TEXT_SAMPLE)
        try:  # incremental: a character cut at the end of the sample is not an error
            codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
        except UnicodeDecodeError as e:
            raise UserError(
                f"{what} {shown} is not a text file (byte {e.start} is not UTF-8); {hint}"
            ) from None
    return p


def read_text_file(path: str | os.PathLike, what: str, hint: str, max_bytes: int) -> str:
    """The UTF-8 text of `path` (checked as check_input_file), at most `max_bytes` long.

    The size is checked before reading, so a wrong file (a dataset archive) costs no memory.
    """
    p = check_input_file(path, what, hint)
    size = p.stat().st_size
    if size > max_bytes:
        raise UserError(
            f"{what} {_show(p)} is {size:,} bytes, more than {max_bytes:,} bytes; is "
            f"it the right file? {hint}"
        )
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{what} {_show(p)} is not a text file (byte {e.start} is not UTF-8); {hint}"
        ) from None
    except OSError as e:
        raise UserError(f"{what} {_show(p)} cannot be read ({e.strerror})") from None


def _under(path: Path, root: Path) -> bool:
    """Whether `path` (resolved, links followed) is `root` or inside it."""
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True
