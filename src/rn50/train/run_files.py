"""What a kill can leave in a run dir, put right when the run starts again.

An epoch ends with a sequence of writes (loop.Trainer.end_epoch, then the records): the
metrics.jsonl line, the epoch checkpoint, the copy to model_best.pth, the removal of last.pth,
curves.png, and at the end of the run summary.json. Each file is written atomically, but a kill
between two of them leaves the run dir in a state no finished sequence leaves:

| killed                              | left behind                         | put right by      |
| ----------------------------------- | ----------------------------------- | ----------------- |
| while a file is written             | its temporary file                  | remove_stale_temps|
| after the metrics line, before the  | a metrics line no checkpoint holds  | repair_metrics    |
| epoch checkpoint                    |                                     |                   |
| after the epoch checkpoint, before  | model_best.pth of an earlier epoch, | repair_best       |
| (or during) the copy to model_best  | or none at all                      |                   |
| after the copy, before last.pth is  | a last.pth behind the epoch file    | drop_stale_last   |
| removed                             |                                     |                   |
| before curves.png / summary.json    | the previous figure / no summary    | the loop redraws  |
|                                     |                                     | and writes them   |

A torn metrics line (a kill mid-append) is dropped too, and an epoch checkpoint whose metrics
line is missing gets it back from the copy each epoch checkpoint holds ("metrics").
"""

import json
import os
from pathlib import Path

from rn50.checkpoint import (
    best_path,
    copy_checkpoint,
    epoch_path,
    last_path,
    load_checkpoint,
    set_aside,
)
from rn50.errors import CheckpointError, UserError, one_line
from rn50.fileio import atomic_write_text
from rn50.runlog import RunLog, best_record, read_metrics


def repair_run_dir(log: RunLog, done: int, found: tuple[Path, dict] | None) -> None:
    """Put right what a kill left in `log`'s run dir (rank 0 only: `log` is enabled there),
    saying each thing done on the log. `done`: the epochs fully finished in the checkpoint the
    run resumes from (0 without one); `found`: that (path, state), or None."""
    if not log.enabled:
        return
    repair_metrics(log, done, found[1] if found else None)
    repair_best(log, found[0] if found else None)
    if found is not None:
        drop_stale_last(log, found[0])


def repair_metrics(log: RunLog, done: int, state: dict | None) -> None:
    """metrics.jsonl holds exactly one whole line for each of the `done` epochs the run
    resumes after: later ones dropped (no checkpoint holds them; they will be trained again),
    a torn line dropped, the resumed epoch's line restored from `state` when it is missing."""
    path = log.metrics_path
    before = path.read_text() if path.exists() else ""
    lines = read_metrics(path) if before else []
    records = [r for r in lines if r.get("epoch", 0) <= done]
    dropped = sorted({r.get("epoch", 0) for r in lines if r.get("epoch", 0) > done})
    saved = (state or {}).get("metrics")
    restored = saved is not None and saved.get("epoch") == done and not any(
        r.get("epoch") == done for r in records
    )
    if restored:
        records.append(saved)
    after = "".join(json.dumps(r) + "\n" for r in records)
    if after == before:
        return
    atomic_write_text(path, after)
    if dropped:
        which = ", ".join(str(e) for e in dropped)
        log.log(f"metrics.jsonl: dropped the line(s) of epoch {which}, which no checkpoint holds "
                f"(they are trained again)")
    if restored:
        log.log(f"metrics.jsonl: restored the line of epoch {done} from its checkpoint")
    if not dropped and not restored:
        log.log("metrics.jsonl: dropped a line cut short by a kill")


def repair_best(log: RunLog, resumed: Path | None = None) -> None:
    """model_best.pth is a readable copy of the epoch checkpoint metrics.jsonl names as best
    (highest val top-1, earliest of equals); copied again from it when it is missing, of
    another epoch or unreadable (an unreadable one is kept as model_best.pth.unreadable). A
    best epoch whose checkpoint is gone or unreadable is reported and model_best.pth left.
    `resumed`: the checkpoint the run resumes from (read already: known to be readable)."""
    run_dir = log.run_dir
    path = log.metrics_path
    records = [r for r in read_metrics(path) if "val_top1" in r] if path.exists() else []
    best = best_record(records)
    if best is None:
        return
    target, source = best_path(run_dir), epoch_path(run_dir, best["epoch"])
    why = "it is missing"
    if target.exists():
        try:
            held = load_checkpoint(target, mmap=True).get("epoch")
        except CheckpointError as e:
            kept = set_aside(target)
            log.warn(f"{one_line(e)}; kept it as '{kept}'")
            why = "it was unreadable"
        else:
            if held == best["epoch"]:
                return
            why = f"it holds epoch {held}"
    named = f"epoch {best['epoch']} ({best['val_top1']:.2f}% val top-1 in metrics.jsonl)"
    if not source.exists():
        log.warn(f"model_best.pth should hold {named}, but '{source}' is gone; model_best.pth "
                 f"is left as it is")
        return
    try:
        if source != resumed:
            load_checkpoint(source, mmap=True)
    except CheckpointError as e:
        log.warn(f"model_best.pth should hold {named}, but {one_line(e)}; model_best.pth is "
                 f"left as it is")
        return
    copy_checkpoint(source, target)
    log.log(f"Restored {target} from '{source}', {named}: {why} (a kill came during or "
            f"before its copy)")


def drop_stale_last(log: RunLog, resumed: Path) -> None:
    """Remove last.pth when the run resumes from an epoch checkpoint further along: a kill
    came between writing that checkpoint and removing last.pth (load_resume_state read it and
    chose the other; an unreadable one was set aside there)."""
    last = last_path(log.run_dir)
    if resumed != last and last.exists():
        last.unlink()
        log.log(f"Removed {last}: '{resumed.name}' is further along (a kill came between saving "
                f"it and removing last.pth)")


def refuse_fresh_start_over(run_dir: str | os.PathLike) -> None:
    """train.resume false starts a run from scratch: refuse it where `run_dir` already holds a
    run (checkpoints, metrics.jsonl), whose files it would write over. Raises UserError
    naming a few of them."""
    d = Path(run_dir)
    if not d.is_dir():
        return
    held = sorted(
        p.name for p in d.iterdir()
        if p.name in ("model_best.pth", "last.pth", "metrics.jsonl")
        or (p.name.startswith("checkpoint_epoch_") and p.suffix == ".pth")
    )
    if held:
        shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise UserError(
            f"train.resume is false but train.checkpoint_dir {d} holds a run ({shown}), which "
            f"a fresh start would write over; use a new train.checkpoint_dir, move the old run "
            f"away, or set train.resume=true to continue it"
        )
