"""Training and evaluation: one readable step, one epoch, one evaluation pass, the whole run."""

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rn50 import distributed as dist
from rn50.checkpoint import (
    best_path,
    check_classes,
    copy_checkpoint,
    epoch_path,
    last_path,
    load_checkpoint,
    load_resume_state,
    plain_state,
    save_checkpoint,
)
from rn50.config import Config, DataConfig, TrainConfig, check_data_dir
from rn50.data.batch import to_device
from rn50.data.layout import DatasetIndex, find_dataset
from rn50.data.loader import build_loader
from rn50.data.transforms import EvalTransform, TrainTransform
from rn50.errors import CheckpointError, ConfigError, DataError, Diverged
from rn50.metrics import Meter
from rn50.model import build_model, count_parameters, model_summary
from rn50.optim import build_optimizer, build_scheduler, current_lr, current_momentum
from rn50.preempt import Preempted, SignalGuard
from rn50.runlog import RunLog

MIN_BAD_BUDGET = 10  # undecodable files an epoch may skip whatever data.max_bad_fraction says


@dataclass
class Runtime:
    """Where and in which number format the model runs."""

    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype; None runs in fp32
    channels_last: bool

    @property
    def use_scaler(self) -> bool:
        # fp16 has a narrow exponent range: small gradients underflow without loss scaling.
        return self.amp_dtype == torch.float16


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device is '{name}' but no CUDA device is visible; use auto or cpu"
        )
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 where the device supports it (no loss scaling needed), else fp16."""
    if name == "auto":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision bf16 is not supported by this GPU; use fp16")
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def make_runtime(cfg: Config) -> Runtime:
    device = resolve_device(cfg.train.device)
    return Runtime(device, resolve_precision(cfg.train.precision, device), cfg.model.channels_last)


def precision_name(rt: Runtime) -> str:
    return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[rt.amp_dtype]


def autocast(rt: Runtime):
    return torch.autocast(rt.device.type, dtype=rt.amp_dtype, enabled=rt.amp_dtype is not None)


def allow_skipped_steps() -> None:
    """Silence torch's warning that the scheduler stepped without the optimizer.

    That happens when fp16's scaler skips an overflowing step, and it is intended here: the
    LR schedule counts batches, applied or not.
    """
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")


def train_step(model, images, targets, criterion, optimizer, scaler, scheduler, rt: Runtime):
    """One optimizer step; returns the batch's mean loss and logits (detached).

    A non-finite loss changes no weight (the LR schedule still advances a step).
    """
    with autocast(rt):
        logits = model(images)
        loss = criterion(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    if torch.isfinite(loss):  # one host sync a step: a NaN must never reach the weights
        scaler.scale(loss).backward()  # fp16: scaled so small gradients do not underflow
        scaler.step(optimizer)  # unscales first; skips the update if a gradient is inf/NaN
        scaler.update()  # lowers the scale after a skipped step, raises it after calm ones
    scheduler.step()  # one-cycle moves every batch, applied or not
    return loss.detach(), logits.detach()


class BufferGuard:
    """A copy of the BatchNorm running statistics from before the last step.

    A forward pass that produced NaN has already folded it into the running statistics;
    putting them back keeps one bad batch from breaking every later evaluation.
    """

    def __init__(self, model: nn.Module):
        self.buffers = [b for b in model.buffers() if b.is_floating_point()]
        self.saved = [b.detach().clone() for b in self.buffers]

    def save(self) -> None:
        for dst, src in zip(self.saved, self.buffers, strict=True):
            dst.copy_(src)

    def restore(self) -> None:
        for dst, src in zip(self.buffers, self.saved, strict=True):
            dst.copy_(src)


@torch.no_grad()
def evaluate(model, loader, rt: Runtime) -> dict:
    """Loss, top-1 and top-5 over this rank's share of the validation set, summed over ranks.

    The loss is plain cross-entropy (no label smoothing), comparable across recipes.
    """
    model.eval()
    meter = Meter(rt.device)
    for images, targets, bad in loader:
        meter.skip(bad)
        if not len(targets):
            continue
        images, targets = to_device(images, targets, rt.device, rt.channels_last)
        with autocast(rt):
            logits = model(images)
        meter.update(nn.functional.cross_entropy(logits.float(), targets), logits, targets)
    return meter.all_reduce().summary()


def load_index(cfg: DataConfig, num_classes: int) -> DatasetIndex:
    """Find the dataset and check it against model.num_classes."""
    index = find_dataset(check_data_dir(cfg))
    if cfg.skip_list:
        from rn50.data.doctor import apply_skip_list, read_skip_list

        index = apply_skip_list(index, read_skip_list(cfg.skip_list))
    if len(index.classes) != num_classes:
        raise ConfigError(
            f"model.num_classes is {num_classes} but {index.root} has {len(index.classes)} "
            f"classes; set model.num_classes={len(index.classes)}"
        )
    return index


def eval_loader(cfg: DataConfig, index: DatasetIndex, rt: Runtime):
    if not index.val:
        raise DataError(f"no validation images in {index.root}; add val/ (see README: Data)")
    return build_loader(
        index.val,
        EvalTransform(cfg.resolution, cfg.crop_ratio),
        cfg.eval_batch_size or 2 * cfg.batch_size,
        cfg.workers,
        train=False,
        rank=dist.rank(),
        world=dist.world_size(),
        pin_memory=rt.device.type == "cuda",
    )


def train_loader(cfg: DataConfig, index: DatasetIndex, seed: int, rt: Runtime):
    per_rank = len(index.train) // dist.world_size()
    if per_rank < cfg.batch_size:
        raise ConfigError(
            f"data.batch_size ({cfg.batch_size}) is larger than the training images per device "
            f"({per_rank}); lower data.batch_size"
        )
    return build_loader(
        index.train,
        TrainTransform(cfg.resolution, cfg.min_scale, cfg.hflip),
        cfg.batch_size,
        cfg.workers,
        train=True,
        seed=seed,
        rank=dist.rank(),
        world=dist.world_size(),
        pin_memory=rt.device.type == "cuda",
    )


def initial_weights(model: nn.Module, cfg: TrainConfig, log: RunLog) -> None:
    """Load the saved initial weights, or save these ones on the first start."""
    path = Path(cfg.initial_model_path or Path(cfg.checkpoint_dir) / "initial_model.pth")
    if path.exists():
        state = load_checkpoint(path)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError:
            raise CheckpointError(
                f"initial weights '{path}' do not fit model.arch/num_classes; delete the file or "
                f"set train.initial_model_path to another path"
            ) from None
        log.log(f"Loaded initial weights from {path}")
    elif dist.is_main():
        save_checkpoint({"model": model.state_dict()}, path)
        log.log(f"Saved initial weights to {path}")


@dataclass
class Progress:
    """Where the run is: last finished epoch and the best validation top-1 so far."""

    epoch: int = 0
    best_top1: float = -1.0
    best_epoch: int = 0


def choose_max_lr(cfg: Config, saved: dict | None, model, loader, rt: Runtime, log) -> float:
    """optim.max_lr: auto -> the resumed run's value, or a fresh LR range test's suggestion."""
    if saved is not None:
        lr = saved["config"]["optim"]["max_lr"]
        log.log(f"max_lr: auto -> {lr:.4g} (chosen when this run started)")
        return lr
    from rn50.lr_finder import find_max_lr

    return find_max_lr(model, loader, cfg, rt, Path(cfg.train.checkpoint_dir), log).max_lr


class Trainer:
    """A run's model, optimizer, schedule, data and records, and the loop that trains them."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.rt = rt = make_runtime(cfg)
        self.index = load_index(cfg.data, cfg.model.num_classes)
        self.run_dir = Path(cfg.train.checkpoint_dir)
        self.log = log = RunLog(self.run_dir, enabled=dist.is_main())
        log.log(f"Dataset: {self.index.root} ({self.index.layout} layout)")
        log.log(f"Number of training samples: {len(self.index.train)}")
        log.log(f"Number of validation samples: {len(self.index.val)}")
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg.model)
        self.train_data = train_loader(cfg.data, self.index, cfg.train.seed, rt)
        self.val_data = eval_loader(cfg.data, self.index, rt)
        initial_weights(self.model, cfg.train, log)
        memory_format = torch.channels_last if rt.channels_last else torch.contiguous_format
        self.model.to(rt.device, memory_format=memory_format)
        found = load_resume_state(self.run_dir, log.warn) if cfg.train.resume else None
        saved = found[1] if found else None
        if saved is not None:
            check_classes(saved, cfg.model.num_classes, found[0])
        if cfg.optim.max_lr == "auto":
            cfg.optim.max_lr = choose_max_lr(cfg, saved, self.model, self.train_data, rt, log)
        log.write_config(cfg.to_yaml())  # resolved: max_lr is a number from here on
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.steps_per_epoch = len(self.train_data)
        self.scheduler = build_scheduler(
            self.optimizer, cfg.optim, cfg.train.epochs * self.steps_per_epoch
        )
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.use_scaler)
        self.progress = Progress()
        self.start_step = 0  # steps already done in the first epoch this process trains
        self.meter_sums: torch.Tensor | None = None  # that epoch's meter, when resumed mid-way
        if found is not None:
            self.restore(*found)
        self.last_save = time.monotonic()

    # -- checkpoints -----------------------------------------------------------------------

    def state(self, epoch: int, step: int, meter: Meter | None = None) -> dict:
        """Everything needed to continue after `step` steps of epoch `epoch` (step 0: after
        the whole of epoch `epoch`); `meter` holds the sums of the epoch in progress."""
        return {
            "epoch": epoch,
            "step_in_epoch": step,
            "global_step": self.scheduler.last_epoch,  # OneCycleLR counts optimizer steps
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": plain_state(self.scheduler.state_dict()),
            "scaler": self.scaler.state_dict(),
            "meter": meter.sums.cpu() if meter is not None else None,
            "rng": torch.get_rng_state(),
            "best_top1": self.progress.best_top1,
            "best_epoch": self.progress.best_epoch,
            "config": self.cfg.to_dict(),
            "classes": list(self.index.classes),
            "names": list(self.index.names),
        }

    def restore(self, path: Path, state: dict) -> None:
        """Put the run back where checkpoint `state` (read from `path`) left it."""
        planned, stored = self.scheduler.total_steps, state["scheduler"].get("total_steps")
        if stored != planned:
            raise CheckpointError(
                f"'{path}' belongs to a schedule of {stored} steps but this config plans "
                f"{planned} (train.epochs or data.batch_size changed); restore them or use a "
                f"new train.checkpoint_dir"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if state.get("rng") is not None:
            torch.set_rng_state(state["rng"])
        step = state.get("step_in_epoch", 0)
        done = state["epoch"] - 1 if step else state["epoch"]  # epochs fully finished
        self.progress = Progress(done, state["best_top1"], state["best_epoch"])
        self.start_step, self.meter_sums = step, state.get("meter") if step else None
        where = f"epoch {state['epoch']}"
        if step:
            where += f", step {step}/{self.steps_per_epoch}"
        self.log.log(f"Loaded checkpoint '{path}' ({where})")
        self.log.log(
            f"Previous best accuracy: {self.progress.best_top1:.2f}% "
            f"(epoch {self.progress.best_epoch})"
        )
        self.log.drop_metrics_after(done)

    def save_last(self, epoch: int, step: int, meter: Meter) -> Path | None:
        """The rolling mid-epoch checkpoint (rank 0 writes it)."""
        self.last_save = time.monotonic()
        if not dist.is_main():
            return None
        return save_checkpoint(self.state(epoch, step, meter), last_path(self.run_dir))

    def save_due(self, step: int) -> bool:
        t = self.cfg.train
        by_steps = t.save_every_steps and step % t.save_every_steps == 0
        minutes = (time.monotonic() - self.last_save) / 60
        by_time = t.save_every_minutes and minutes >= t.save_every_minutes
        # The last step of an epoch is saved by the epoch checkpoint instead.
        return bool(by_steps or by_time) and step < self.steps_per_epoch

    # -- training --------------------------------------------------------------------------

    def train_epoch(self, epoch: int, guard: SignalGuard) -> tuple[dict, float]:
        """One pass over this rank's share of the training set; returns (summary, seconds)."""
        cfg, rt, log = self.cfg, self.rt, self.log
        model, optimizer = self.model, self.optimizer
        model.train()
        meter = Meter(rt.device)
        start = self.start_step
        if self.meter_sums is not None:
            meter.sums.copy_(self.meter_sums)
        self.start_step, self.meter_sums = 0, None
        self.train_data.sampler.set_epoch(epoch, start=start * cfg.data.batch_size)
        buffers = BufferGuard(model)
        bad_streak = 0
        # At least MIN_BAD_BUDGET files, so that one odd file in a small dataset is not fatal.
        budget = max(
            cfg.data.max_bad_fraction * self.steps_per_epoch * cfg.data.batch_size,
            MIN_BAD_BUDGET,
        )
        t0 = tick = time.perf_counter()
        seen_since_tick = 0
        allow_skipped_steps()
        for step, (images, targets, bad) in enumerate(self.train_data, start + 1):
            self.note_bad(bad, meter, budget)
            if len(targets) < 2:  # BatchNorm cannot train on fewer than 2 images
                self.scheduler.step()
                continue
            images, targets = to_device(images, targets, rt.device, rt.channels_last)
            buffers.save()
            loss, logits = train_step(
                model, images, targets, self.criterion, optimizer, self.scaler, self.scheduler, rt
            )
            if torch.isfinite(loss):
                bad_streak = 0
                meter.update(loss, logits, targets)
            else:
                buffers.restore()
                bad_streak += 1
                log.warn(f"epoch {epoch} step {step}: loss is {loss.item()}; step skipped")
                if bad_streak >= cfg.train.max_bad_steps:
                    raise Diverged(self.diverged_message(epoch, step, bad_streak))
            seen_since_tick += targets.shape[0]
            if cfg.train.log_every and (
                step % cfg.train.log_every == 0 or step == self.steps_per_epoch
            ):
                now = time.perf_counter()
                rate = seen_since_tick * dist.world_size() / max(now - tick, 1e-9)
                log.log(
                    f"  epoch {epoch} step {step}/{self.steps_per_epoch}  loss {loss.item():.4f}"
                    f"  lr {current_lr(optimizer):.5f}  {rate:.0f} img/s"
                )
                tick, seen_since_tick = now, 0
            if guard.received and step < self.steps_per_epoch:
                path = self.save_last(epoch, step, meter)
                log.log(
                    f"Received {guard.name} at epoch {epoch} step {step}: saved {path}; "
                    f"run the same command to resume"
                )
                raise Preempted(guard.name)
            if bad_streak == 0 and self.save_due(step):
                self.save_last(epoch, step, meter)
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)
        return meter.all_reduce().summary(), time.perf_counter() - t0

    def note_bad(self, bad: list[str], meter: Meter, budget: float) -> None:
        """Count and name undecodable files; too many of them is an error, not noise."""
        if not bad:
            return
        meter.skip(bad)
        for path in bad:
            self.log.warn(f"skipped unreadable image {path}")
        if meter.skipped > budget:
            raise DataError(
                f"{meter.skipped} images could not be decoded this epoch, more than "
                f"data.max_bad_fraction={self.cfg.data.max_bad_fraction:g} of it (and more "
                f"than {MIN_BAD_BUDGET}); run "
                f"'rn50 data check {self.index.root}' to find them"
            )

    def diverged_message(self, epoch: int, step: int, streak: int) -> str:
        good = load_resume_state(self.run_dir, self.log.warn)
        keep = f"the last good checkpoint is {good[0]}" if good else "no checkpoint was written"
        return (
            f"loss was NaN/inf for {streak} steps in a row (epoch {epoch}, step {step}, lr "
            f"{current_lr(self.optimizer):.4g}); {keep}; lower optim.max_lr or use bf16/fp32"
        )

    def fit(self) -> dict:
        """Train the remaining epochs, evaluating and checkpointing after each."""
        cfg, rt, log = self.cfg, self.rt, self.log
        scaling = " with loss scaling" if rt.use_scaler else ""
        log.log(f"Using {precision_name(rt)} precision{scaling}")
        log.log("\nModel Summary:")
        log.log(model_summary(cfg.model, cfg.data.batch_size, cfg.data.resolution))
        log.log(f"\nTraining on {rt.device} ({count_parameters(self.model):,} parameters)")
        log.log(f"Number of classes: {len(self.index.classes)}")
        log.log(f"Logging to: {log.log_path}")
        record: dict = {}
        with SignalGuard() as guard:
            for epoch in range(self.progress.epoch + 1, cfg.train.epochs + 1):
                log.log(f"\nEpoch {epoch}/{cfg.train.epochs}:")
                train, train_s = self.train_epoch(epoch, guard)
                t0 = time.perf_counter()
                val = evaluate(self.model, self.val_data, rt)
                val_s = time.perf_counter() - t0
                record = self.end_epoch(epoch, train, val, train_s, val_s)
                if guard.received and epoch < cfg.train.epochs:
                    log.log(
                        f"Received {guard.name}: stopped after epoch {epoch}; run the same "
                        f"command to resume"
                    )
                    raise Preempted(guard.name)
        if not record:
            log.log(
                f"Training already complete: {self.run_dir} holds epoch "
                f"{self.progress.epoch}/{cfg.train.epochs}"
            )
        best = self.progress
        log.log(
            f"\nBest val top-1: {best.best_top1:.2f}% (epoch {best.best_epoch}); "
            f"outputs in {self.run_dir}"
        )
        log.close()
        return record

    def end_epoch(self, epoch: int, train: dict, val: dict, train_s: float, val_s: float) -> dict:
        """Best-so-far, the metrics line, the epoch checkpoint and model_best.pth."""
        p = self.progress
        improved = val["top1"] > p.best_top1
        if improved:
            p.best_top1, p.best_epoch = val["top1"], epoch
        p.epoch = epoch
        record = epoch_record(epoch, train, val, train_s, val_s, self.optimizer, self.scheduler, p)
        log_epoch(self.log, record, improved)
        self.log.append_metrics(record)
        if dist.is_main():
            state = {**self.state(epoch, 0), "metrics": record}
            path = save_checkpoint(state, epoch_path(self.run_dir, epoch))
            self.log.log(f"Saved checkpoint to: {path}")
            if improved:
                best = copy_checkpoint(path, best_path(self.run_dir))
                self.log.log(f"Saved best model to: {best}")
            # The epoch file now holds everything last.pth did, and more.
            last_path(self.run_dir).unlink(missing_ok=True)
        return record


def fit(cfg: Config) -> dict:
    """Train cfg.train.epochs epochs (resuming when asked), evaluating and saving every epoch.

    Returns the last epoch's metrics record (the one written to metrics.jsonl).
    """
    return Trainer(cfg).fit()


def epoch_record(epoch, train, val, train_s, val_s, optimizer, scheduler, progress) -> dict:
    """The metrics.jsonl line of one epoch."""
    return {
        "epoch": epoch,
        "step": scheduler.last_epoch,  # optimizer steps taken so far (OneCycleLR counts steps)
        "lr": current_lr(optimizer),
        "momentum": current_momentum(optimizer),
        "train_loss": train["loss"],
        "train_top1": train["top1"],
        "train_top5": train["top5"],
        "train_images": train["count"],
        "train_skipped": train["skipped"],
        "val_loss": val["loss"],
        "val_top1": val["top1"],
        "val_top5": val["top5"],
        "val_images": val["count"],
        "val_skipped": val["skipped"],
        "train_time_s": train_s,
        "val_time_s": val_s,
        "epoch_time_s": train_s + val_s,
        "images_per_s": train["count"] / max(train_s, 1e-9),
        "best_top1": progress.best_top1,
        "best_epoch": progress.best_epoch,
    }


def log_epoch(log: RunLog, r: dict, improved: bool) -> None:
    log.log(
        f"Train Loss: {r['train_loss']:.4f} Top-1: {r['train_top1']:.2f}% "
        f"Top-5: {r['train_top5']:.2f}%"
    )
    log.log(
        f"Val Loss: {r['val_loss']:.4f} Top-1: {r['val_top1']:.2f}% Top-5: {r['val_top5']:.2f}%"
    )
    log.log(
        f"LR: {r['lr']:.6f}  Time: {r['epoch_time_s']:.1f}s (train {r['train_time_s']:.1f}s, "
        f"val {r['val_time_s']:.1f}s)  Throughput: {r['images_per_s']:.0f} img/s"
    )
    if r["train_skipped"] or r["val_skipped"]:
        log.log(
            f"Skipped unreadable images: {r['train_skipped']} train, {r['val_skipped']} val "
            f"(named in the warnings above)"
        )
    if improved:
        log.log(f"New best accuracy: Top-1 {r['best_top1']:.2f}% (epoch {r['best_epoch']})")
    else:
        log.log(f"Best accuracy so far: Top-1 {r['best_top1']:.2f}% (epoch {r['best_epoch']})")


def evaluate_checkpoint(state: dict, path: str, cfg: Config) -> dict:
    """Evaluate a loaded checkpoint's weights (read from `path`) on cfg's validation set."""
    rt = make_runtime(cfg)
    check_classes(state, cfg.model.num_classes, path)
    index = load_index(cfg.data, cfg.model.num_classes)
    model = build_model(cfg.model)
    model.load_state_dict(state["model"])
    memory_format = torch.channels_last if rt.channels_last else torch.contiguous_format
    model.to(rt.device, memory_format=memory_format)
    return evaluate(model, eval_loader(cfg.data, index, rt), rt)
