"""Checkpoints: what they hold, atomic saving, safe loading, finding the newest one.

A checkpoint is a plain dict of tensors, numbers, strings and lists, so it loads with
`torch.load(weights_only=True)`: nothing in it can run code on the machine that opens it.
"""

import errno
import os
import pickle
import pickletools
import re
import shutil
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from rn50.errors import CheckpointError, StorageError, one_line
from rn50.fileio import atomic_open, atomic_write_with

FORMAT = "rn50-checkpoint"
VERSION = 1
EPOCH_FILE = re.compile(r"^checkpoint_epoch_(\d+)\.pth$")


def epoch_path(run_dir: str | os.PathLike, epoch: int) -> Path:
    """run_dir/checkpoint_epoch_NNN.pth, the checkpoint written after epoch `epoch`."""
    return Path(run_dir) / f"checkpoint_epoch_{epoch:03d}.pth"


def best_path(run_dir: str | os.PathLike) -> Path:
    """run_dir/model_best.pth, a copy of the epoch checkpoint with the best val top-1."""
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


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False
) -> dict:
    """Load an rn50 checkpoint safely, or raise CheckpointError with one line saying why.

    Only tensors and plain data are read (`torch.load(weights_only=True)`); a file holding
    other pickled objects is refused in rn50's words, naming one of them. `mmap`: map the
    tensors' storage instead of reading it (a check of the file, or of a few fields, then
    costs no read of the weights).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no checkpoint at '{p}'; pass a .pth file written by 'rn50 train'")
    if not p.is_file():
        what = "a folder" if p.is_dir() else "not a regular file (a device, FIFO or socket)"
        raise CheckpointError(f"'{p}' is {what}, not a checkpoint; pass a .pth file written by "
                              f"'rn50 train'")
    state = safe_torch_load(p, "rn50 checkpoint", map_location, mmap)
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        plain = isinstance(state, dict) and state and all(
            isinstance(v, torch.Tensor) for v in state.values()
        )
        hint = " (a plain state_dict: evaluate it with rn50 eval --weights)" if plain else ""
        raise CheckpointError(
            f"'{p}' is not an rn50 checkpoint (no '{FORMAT}' tag and weights){hint}"
        )
    return state


def safe_torch_load(
    p: Path, what: str, map_location: str | torch.device = "cpu", mmap: bool = False
) -> Any:
    """torch.load(p, weights_only=True), or CheckpointError with one line: a file holding
    pickled objects is refused in rn50's words, naming one of them; `what` names the kind of
    file in other refusals ("rn50 checkpoint", "weights file")."""
    try:
        with warnings.catch_warnings():
            # torch's chatter about pickle protocols of a file it is about to refuse anyway.
            warnings.simplefilter("ignore")
            return torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # unpickling errors come in many types; all mean "not loadable"
        refused = isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower()
        found = pickled_object(p, str(e)) if refused else None
        if found:
            raise CheckpointError(
                f"'{p}' holds pickled Python objects (e.g. {found}); rn50 loads only tensors "
                f"and plain data, and will not unpickle it"
            ) from None
        # torch's own words for a refused file suggest loading it unsafely: never quoted.
        kind = what.replace("rn50 ", "")
        reason = f"not a PyTorch {kind}, or a damaged one" if refused else plain_reason(e)
        raise CheckpointError(f"'{p}' is not a loadable {what} ({reason})") from None


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def plain_reason(e: BaseException, limit: int = 160) -> str:
    """The first line of `e`'s message without terminal escape codes, at most `limit` chars."""
    text = ANSI_ESCAPE.sub("", str(e)).strip()
    first = text.splitlines()[0].strip() if text else type(e).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."


def pickled_object(path: Path, message: str) -> str | None:
    """The name of a class or function pickled in `path` (what weights_only refused): the
    first global the pickle stream imports ("argparse.Namespace"), else the one torch's
    `message` names ("Unsupported global: GLOBAL exec ..."); None when neither tells (the
    file is not a pickle at all)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next(n for n in z.namelist() if n.endswith("data.pkl"))
                data = z.read(name)
        else:
            data = path.read_bytes()
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                return str(arg).replace(" ", ".").replace("__builtin__", "builtins")
            if op.name == "STACK_GLOBAL" and len(strings) >= 2:
                return ".".join(strings[-2:])
            if isinstance(arg, str):
                strings.append(arg)
    except Exception:  # not a pickle stream, or a damaged one: torch's message may tell
        pass
    found = re.search(r"GLOBAL ([\w.]+)", message)
    return found.group(1) if found else None


PREFIXES = ("module.", "_orig_mod.")
"""What wrappers put before every weight's name: DistributedDataParallel ("module.") and
torch.compile ("_orig_mod."), in either order and nesting."""


def strip_prefixes(weights: dict) -> dict:
    """A copy of a state_dict without the wrappers' PREFIXES, as the plain network names its
    weights; a state_dict without them comes back equal. Stripped with torch's
    `consume_prefix_in_state_dict_if_present`, repeatedly (DDP around a compiled model)."""
    weights = dict(weights)
    while True:
        for prefix in PREFIXES:
            if weights and all(k.startswith(prefix) for k in weights):
                consume_prefix_in_state_dict_if_present(weights, prefix)
                break
        else:
            return weights


def load_weights(model: torch.nn.Module, weights: dict, path: str | os.PathLike, fix: str) -> None:
    """Put `weights` (a state_dict read from checkpoint `path`, maybe saved from a DDP or
    compiled model) into `model`, every tensor, or raise CheckpointError with one line.

    The one place every command that reads weights goes through (eval, predict, export, the
    app, resume, train.initial_model_path): the first weight whose shape differs is named
    with both shapes; missing and unexpected names are counted with the first of each. `fix`
    ends the line: what the user can do about it.
    """
    if not isinstance(weights, dict):
        raise CheckpointError(f"'{path}' holds no weights under 'model'; {fix}")
    weights = strip_prefixes(weights)
    own = model.state_dict()
    for key, value in weights.items():
        if key in own and (not isinstance(value, torch.Tensor) or value.shape != own[key].shape):
            have = "x".join(map(str, value.shape)) if isinstance(value, torch.Tensor) else "none"
            want = "x".join(map(str, own[key].shape)) or "scalar"
            raise CheckpointError(
                f"'{path}': weight '{key}' has shape {have or 'scalar'} in the file but "
                f"{want} in the model; {fix}"
            )
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if missing or unexpected:
        parts = [f"{len(missing)} missing (first: '{missing[0]}')"] if missing else []
        parts += [f"{len(unexpected)} unexpected (first: '{unexpected[0]}')"] if unexpected else []
        raise CheckpointError(
            f"'{path}': the weights do not fit the model: {', '.join(parts)}; {fix}"
        )
    model.load_state_dict(weights, strict=True)


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
    """The furthest-along readable checkpoint in run_dir: last.pth or the newest epoch file
    (None when run_dir holds neither).

    An unreadable candidate (a disk error, a file cut short outside rn50) is never deleted or
    overwritten: when a readable one is behind it, it is renamed to NAME.unreadable (the run
    would otherwise write over it) and `warn` says so and which file the run resumes from;
    when none is readable, CheckpointError says what to do (nothing is changed).
    """
    found: list[tuple[Path, dict]] = []
    bad: list[tuple[Path, CheckpointError]] = []
    candidates = [last_path(run_dir)] if last_path(run_dir).exists() else []
    for path in candidates + epoch_checkpoints(run_dir):
        try:
            found.append((path, load_checkpoint(path)))
        except CheckpointError as e:
            bad.append((path, e))
            continue
        if path.name != last_path(run_dir).name:
            break  # the newest readable epoch file; older ones are behind it
    if bad and not found:
        names = ", ".join(f"'{p}'" for p, _ in bad)
        raise CheckpointError(
            f"{one_line(bad[0][1])}; no readable checkpoint is left to resume from ({names}): "
            f"move the file(s) away to start this run again from scratch, or use a new "
            f"train.checkpoint_dir"
        )
    if not found:
        return None
    chosen = max(found, key=lambda item: item[1].get("global_step", 0))
    for path, e in bad:
        kept = set_aside(path)
        warn(f"{one_line(e)}; kept it as '{kept}' and resuming from '{chosen[0]}'")
    return chosen


def set_aside(path: Path) -> Path:
    """Rename an unreadable checkpoint to NAME.unreadable (NAME.unreadable.N when taken), out
    of the way of the files a run writes; returns the new path."""
    target, n = path.with_name(path.name + ".unreadable"), 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.unreadable.{n}"), n + 1
    os.replace(path, target)
    return target


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


def first_difference(saved: Sequence[str], here: Sequence[str]) -> str:
    """Where two class lists first differ, in words: "class 3 is 'n01' in the checkpoint
    but 'n02' in the dataset"; "" when they are equal."""
    for i, (a, b) in enumerate(zip(saved, here, strict=False)):
        if a != b:
            return f"class {i} is '{a}' in the checkpoint but '{b}' in the dataset"
    if len(saved) != len(here):
        return f"the checkpoint has {len(saved)} classes, the dataset {len(here)}"
    return ""


def match_classes(state: dict, classes: Sequence[str], path: str | os.PathLike, fix: str) -> None:
    """The checkpoint's class ids (when it stores them) must be `classes`, in that order:
    the same count with other ids would score or train every image under another label.

    Raises CheckpointError naming the first differing class; `fix` ends the line.
    """
    saved = state.get("classes")
    if saved and list(saved) != list(classes):
        raise CheckpointError(
            f"'{path}' was trained on other classes than this dataset's: "
            f"{first_difference(saved, classes)}; {fix}"
        )


def class_mapping(state: dict, classes: Sequence[str], path: str | os.PathLike) -> list[int] | None:
    """How the dataset's labels map to the checkpoint's outputs, by class id.

    None: the same ids in the same order (nothing to map). Else a list: dataset label i is
    the checkpoint's output `mapping[i]`; possible when every dataset class id is among the
    checkpoint's (another order, or a subset of its classes). Raises CheckpointError naming
    the first dataset class the checkpoint does not know.
    """
    saved = list(state.get("classes") or [])
    if not saved or saved == list(classes):
        return None
    position = {c: i for i, c in enumerate(saved)}
    unknown = [c for c in classes if c not in position]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise CheckpointError(
            f"'{path}' was trained on other classes than this dataset's: the dataset's class "
            f"'{unknown[0]}'{more} is not among the checkpoint's "
            f"({first_difference(saved, classes)}); evaluate it on the dataset it was trained on"
        )
    return [position[c] for c in classes]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain state_dict from `path` (e.g. torchvision's resnet50 weights as a user saved
    them), without running any code in it: a .safetensors file, or a torch.save file loaded
    with weights_only=True, the dict itself or under "state_dict" or "model" (an rn50
    checkpoint), keys as saved (load_weights strips wrapper prefixes). Raises CheckpointError
    with one line."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no weights file at '{p}'; pass a state_dict saved with "
                              f"torch.save or safetensors")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = safe_torch_load(p, "weights file")
    except CheckpointError:
        raise
    except Exception as e:  # safetensors' header errors
        raise CheckpointError(f"'{p}' is not a loadable weights file ({plain_reason(e)})") from None
    if isinstance(state, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not (isinstance(state, dict) and state
            and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise CheckpointError(f"'{p}' does not hold a state_dict (a dict of tensors)")
    return state  # wrapper prefixes: load_weights strips them, as for every checkpoint
