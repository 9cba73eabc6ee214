"""A cached dataset index: the file list of the last start, reused while no folder changed.

`find_dataset` lists every folder of the dataset; on ImageNet's 1.28 million files that takes
minutes on a network disk or a cold cache. Adding, removing or renaming a file changes the
modification time of the folder that holds it, so the index of the previous start is still
right when every folder it came from has the mtime it had then. Checking that is one stat per
folder (about 1,000 for ImageNet), and reading the saved list takes a second or two.

What is checked: every folder that holds an indexed image, every folder between those and the
dataset root, the folder that was given, and the LOC_ files (mtime, size and SHA-1 of their
bytes: an edit in place does not touch the folder's mtime, and a copy that keeps the old
mtime and size, e.g. one label swapped for another, must still be noticed). An index that
set entries aside (a folder that cannot be listed, a link loop: see DatasetIndex.skipped)
is never cached, since fixing them (chmod, a link re-pointed elsewhere) may change no mtime.
Not noticed: images added to a subfolder that held no image at the last scan (a new
subfolder itself is noticed); set data.index_cache: false after such a change, or delete
the cache file.

Cache files live in $RN50_CACHE_DIR, else $XDG_CACHE_HOME/rn50, else ~/.cache/rn50 (never in
the dataset, which may be read-only or shared), one per dataset path.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import time
from pathlib import Path

from rn50.data.layout import MAPPING_FILE, VAL_SOLUTION_FILE, DatasetIndex, find_dataset

log = logging.getLogger(__name__)

FORMAT = 3  # bump when the file's content or layout.py's indexing rules change
# A folder changed this recently may still be changing, or change within the same mtime tick
# (1-2 s on some filesystems) without its mtime moving: such an index is not saved.
SETTLE_S = 2.0


def cache_dir() -> Path:
    """Where index caches are kept: $RN50_CACHE_DIR, else $XDG_CACHE_HOME/rn50 or ~/.cache/rn50."""
    if os.environ.get("RN50_CACHE_DIR"):
        return Path(os.environ["RN50_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rn50"


def cache_path(path: str | os.PathLike[str]) -> Path:
    """The cache file of the dataset given as `path` (one per resolved path)."""
    key = hashlib.sha1(str(Path(path).expanduser().resolve()).encode()).hexdigest()[:20]
    return cache_dir() / "index" / f"{key}.json"


def load_dataset_index(
    path: str | os.PathLike[str], cache: bool = True, settle: bool = True
) -> DatasetIndex:
    """`find_dataset(path)`, from the cache when no folder changed since it was saved.

    Raises what find_dataset raises; a missing, stale or unreadable cache only means a scan.
    `settle=False` caches even a folder that changed moments ago: for a caller that just
    finished writing the dataset itself.
    """
    if not cache:
        return find_dataset(path)
    file = cache_path(path)
    index = _read(file, path)
    if index is not None:
        log.info("dataset index of %s read from %s", path, file)
        return index
    started = time.time()
    index = find_dataset(path)
    _write(file, path, index, started if settle else float("inf"))
    return index


def _tracked(path, index: DatasetIndex) -> tuple[list[str], list[str]]:
    """(folders, files) whose stat must match: see the module docstring."""
    root = str(index.root)
    folders = {root, str(Path(path).expanduser().resolve())}
    for p, _ in index.train + index.val:
        d = os.path.dirname(p)
        while d not in folders and len(d) > len(root):
            folders.add(d)
            d = os.path.dirname(d)
    # layout.py reads the LOC_ files from the root or a folder on the way from it to the
    # images (CLS-LOC and up); their appearing or vanishing changes those folders' mtimes.
    chain = []
    if index.train:
        d = os.path.dirname(index.train[0][0])
        while len(d) > len(root):
            chain.append(d)
            d = os.path.dirname(d)
    files = [os.path.join(d, n) for d in [root, *chain] for n in (MAPPING_FILE, VAL_SOLUTION_FILE)]
    return sorted(folders), sorted(files)


def _stat(paths: list[str], digest: bool = False) -> list[list | None]:
    """[mtime_ns, size] of each path (None: missing or unreadable); with `digest`, the SHA-1
    of its bytes too (for the small LOC_ files: 3 MB of CSV take milliseconds)."""
    out: list[list | None] = []
    for p in paths:
        try:
            st = os.stat(p)
            entry: list = [st.st_mtime_ns, st.st_size]
            if digest:
                with open(p, "rb") as f:
                    entry.append(hashlib.sha1(f.read()).hexdigest())
        except OSError:
            out.append(None)
        else:
            out.append(entry)
    return out


def _write(file: Path, path, index: DatasetIndex, started: float) -> None:
    root = str(index.root)
    prefix = root + os.sep
    samples = index.train + index.val
    if any(not p.startswith(prefix) or "\n" in p for p, _ in samples):
        return  # an image outside the root, a newline in a name: rare; scan every time
    if index.skipped:
        return  # see the module docstring: until the tree is clean, every start scans it
    folders, files = _tracked(path, index)
    folder_stats = _stat(folders)
    newest = max((s[0] for s in folder_stats if s is not None), default=0) / 1e9
    if newest > started - SETTLE_S:
        log.info("not caching the index of %s: a folder changed during the scan", root)
        return
    cut = len(prefix)
    record = {
        "format": FORMAT,
        "given": str(Path(path).expanduser().resolve()),
        "root": root,
        "layout": index.layout,
        "classes": list(index.classes),
        "names": list(index.names),
        "folders": [f[cut:] if f.startswith(prefix) else f for f in folders],
        "folder_stats": [s[0] if s else None for s in folder_stats],
        "files": files,
        "file_stats": _stat(files, digest=True),
        "skipped": [list(entry) for entry in index.skipped],
        "notes": list(index.notes),
        # One string of newline-separated paths and a list of labels per split: json parses
        # that several times faster than a list of 1.28M [path, label] pairs.
        "train_paths": "\n".join(p[cut:] for p, _ in index.train),
        "train_labels": [label for _, label in index.train],
        "val_paths": "\n".join(p[cut:] for p, _ in index.val),
        "val_labels": [label for _, label in index.val],
    }
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, separators=(",", ":"))
        os.replace(tmp, file)
    except OSError as e:  # a read-only home, a full disk: the next start scans again
        log.info("could not save the dataset index cache %s: %s", file, e)


def _read(file: Path, path) -> DatasetIndex | None:
    try:
        with open(file, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    try:
        if record["format"] != FORMAT or record["given"] != str(Path(path).expanduser().resolve()):
            return None
        prefix = record["root"] + os.sep
        folders = [f if os.path.isabs(f) else prefix + f for f in record["folders"]]
        if [s[0] if s else None for s in _stat(folders)] != record["folder_stats"]:
            return None
        if _stat(record["files"], digest=True) != record["file_stats"]:
            return None
        return DatasetIndex(
            root=Path(record["root"]),
            layout=record["layout"],
            classes=tuple(record["classes"]),
            names=tuple(record["names"]),
            train=_samples(prefix, record["train_paths"], record["train_labels"]),
            val=_samples(prefix, record["val_paths"], record["val_labels"]),
            skipped=tuple((p, why) for p, why in record["skipped"]),
            notes=tuple(record["notes"]),
        )
    except (KeyError, TypeError, ValueError, IndexError):
        return None  # a cache file from elsewhere or damaged: scan


def _samples(prefix: str, paths: str, labels: list[int]) -> tuple[tuple[str, int], ...]:
    rels = paths.split("\n") if paths else []
    if len(rels) != len(labels):
        raise ValueError("paths and labels differ in length")
    # 1.28M new tuples would set off the cyclic garbage collector again and again, for nothing
    # (they hold no cycles): about a third of the time, measured.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return tuple(zip(map(prefix.__add__, rels), labels, strict=True))
    finally:
        if enabled:
            gc.enable()
