"""Checkpoints: what they hold, atomic saving, safe loading, finding the newest one.

A checkpoint is a plain dict of tensors, numbers, strings and lists, so it loads with
`torch.load(weights_only=True)`: nothing in it can run code on the machine that opens it.
"""

import errno
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from rn50.errors import CheckpointError, StorageError
from rn50.fileio import atomic_open, atomic_write_with

FORMAT = "rn50-checkpoint"
VERSION = 1
EPOCH_FILE = re.compile(r"^checkpoint_epoch_(\d+)\.pth$")


def epoch_path(run_dir: str | os.PathLike, epoch: int) -> Path:
    return Path(run_dir) / f"checkpoint_epoch_{epoch:03d}.pth"


def best_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "model_best.pth"


def last_path(run_dir: str | os.PathLike) -> Path:
    """The rolling mid-epoch checkpoint."""
    return Path(run_dir) / "last.pth"


def plain_state(state: dict) -> dict:
    """Drop entries weights_only loading would refuse (callables some torch versions keep)."""
    return {k: v for k, v in state.items() if not callable(v)}


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write `state` (plus the format tag) atomically to `path`."""
    state = {"format": FORMAT, "version": VERSION, **state}
    try:
        atomic_write_with(path, lambda f: torch.save(state, f))
    except (OSError, RuntimeError) as e:
        # torch's zip writer reports a full disk as a RuntimeError ("unexpected pos ..."), so
        # the free space is what tells: the temporary file is gone, the space it needed is not.
        full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
        if not full and shutil.disk_usage(Path(path).parent).free >= tensor_bytes(state):
            raise
        raise StorageError(
            f"no space left on the device while writing '{path}'; the previous checkpoint is "
            f"intact: free some space and run the same command to resume"
        ) from None
    return Path(path)


def tensor_bytes(obj: Any) -> int:
    """Bytes of all tensors in a nested dict/list: about the size of the saved file."""
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def copy_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Atomically copy a checkpoint file (e.g. the epoch file to model_best.pth)."""
    with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, length=16 << 20)
    return Path(dst)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load an rn50 checkpoint safely, or raise CheckpointError with one line saying why."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no checkpoint at '{p}'; pass a .pth file written by 'rn50 train'")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # unpickling errors come in many types; all mean "not loadable"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"'{p}' is not a loadable rn50 checkpoint ({reason[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise CheckpointError(f"'{p}' is not an rn50 checkpoint (no '{FORMAT}' tag and weights)")
    return state


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint_epoch_NNN.pth with the highest NNN in run_dir, if any."""
    files = epoch_checkpoints(run_dir)
    return files[0] if files else None


def epoch_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """checkpoint_epoch_NNN.pth files in run_dir, newest (highest NNN) first."""
    d = Path(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), d / name) for name in os.listdir(d) if (m := EPOCH_FILE.match(name))]
    return [path for _, path in sorted(found, reverse=True)]


def load_resume_state(run_dir: str | os.PathLike, warn) -> tuple[Path, dict] | None:
    """The furthest-along readable checkpoint in run_dir: last.pth or the newest epoch file.

    An unreadable candidate (a disk error, a file cut short outside rn50) is reported through
    `warn` and skipped, falling back to the previous good one.
    """
    found: list[tuple[Path, dict]] = []
    candidates = [last_path(run_dir)] if last_path(run_dir).exists() else []
    for path in candidates + epoch_checkpoints(run_dir):
        try:
            found.append((path, load_checkpoint(path)))
        except CheckpointError as e:
            warn(f"{e}; falling back to the previous checkpoint")
            continue
        if path.name != last_path(run_dir).name:
            break  # the newest readable epoch file; older ones are behind it
    if not found:
        return None
    return max(found, key=lambda item: item[1].get("global_step", 0))


def check_classes(state: dict, num_classes: int, path: str | os.PathLike) -> None:
    """A checkpoint's output layer must match the run it is loaded into."""
    have = len(state.get("classes") or []) or state.get("config", {}).get("model", {}).get(
        "num_classes"
    )
    if have and have != num_classes:
        raise CheckpointError(
            f"'{path}' was trained for {have} classes but this run has {num_classes}; "
            f"use a checkpoint from a run on the same dataset"
        )


# Wrappers' prefixes in a saved state_dict: DistributedDataParallel's and torch.compile's.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_prefixes(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Keys without the prefixes DDP ("module.") and torch.compile ("_orig_mod.") add, in any
    order and number: "_orig_mod.module.fc.weight" -> "fc.weight"."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain state_dict from `path` (e.g. torchvision's resnet50 weights as a user saved
    them), without running any code in it: a .safetensors file, or a torch.save file loaded
    with weights_only=True, the dict itself or under "state_dict" or "model" (an rn50
    checkpoint); wrapper prefixes stripped. Raises CheckpointError with one line."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no weights file at '{p}'; pass a state_dict saved with "
                              f"torch.save or safetensors")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling and header errors come in many types
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"'{p}' is not a loadable weights file ({reason[:160]})") from None
    if isinstance(state, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not (isinstance(state, dict) and state
            and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise CheckpointError(f"'{p}' does not hold a state_dict (a dict of tensors)")
    return strip_prefixes(state)


def load_weights(model: torch.nn.Module, state_dict: dict, path: str | os.PathLike,
                 what: str) -> None:
    """model.load_state_dict(state_dict, strict=True), or CheckpointError with one line that
    names the first key whose shape differs, or the missing and unexpected keys; `what`
    describes the model, e.g. "resnet50 with 1000 classes"."""
    expected = model.state_dict()
    for key, value in expected.items():
        if key in state_dict and state_dict[key].shape != value.shape:
            have = "x".join(map(str, state_dict[key].shape)) or "scalar"
            want = "x".join(map(str, value.shape)) or "scalar"
            raise CheckpointError(
                f"'{path}' does not fit {what}: {key} is {have} in the file but {want} in the "
                f"model"
            )
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = [f"{len(missing)} keys missing (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (e.g. {unexpected[0][:80]})"] if unexpected else []
        raise CheckpointError(f"'{path}' does not fit {what}: {', '.join(parts)}")
    model.load_state_dict(state_dict, strict=True)
