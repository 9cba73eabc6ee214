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
    latest_checkpoint,
    load_checkpoint,
    plain_state,
    save_checkpoint,
)
from rn50.config import Config, DataConfig, TrainConfig, check_data_dir
from rn50.data.batch import to_device
from rn50.data.layout import DatasetIndex, find_dataset
from rn50.data.loader import build_loader
from rn50.data.transforms import EvalTransform, TrainTransform
from rn50.errors import CheckpointError, ConfigError, DataError
from rn50.metrics import Meter
from rn50.model import build_model, count_parameters, model_summary
from rn50.optim import build_optimizer, build_scheduler, current_lr, current_momentum
from rn50.runlog import RunLog


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
    """One optimizer step; returns the batch's mean loss and logits (detached)."""
    with autocast(rt):
        logits = model(images)
        loss = criterion(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()  # fp16: scaled so small gradients do not underflow to zero
    scaler.step(optimizer)  # unscales first; skips the update if a gradient is inf or NaN
    scaler.update()  # lowers the scale after a skipped step, raises it after a calm stretch
    scheduler.step()  # one-cycle moves every batch, skipped update or not
    return loss.detach(), logits.detach()


def train_one_epoch(
    model,
    loader,
    criterion,
    optimizer,
    scaler,
    scheduler,
    rt: Runtime,
    epoch: int,
    log: RunLog,
    log_every: int,
) -> tuple[dict, float]:
    """One pass over this rank's share of the training set; returns (summary, seconds)."""
    model.train()
    meter = Meter(rt.device)
    steps = len(loader)
    start = tick = time.perf_counter()
    seen_since_tick = 0
    allow_skipped_steps()
    for step, (images, targets) in enumerate(loader, 1):
        images, targets = to_device(images, targets, rt.device, rt.channels_last)
        loss, logits = train_step(
            model, images, targets, criterion, optimizer, scaler, scheduler, rt
        )
        meter.update(loss, logits, targets)
        seen_since_tick += targets.shape[0]
        if log_every and (step % log_every == 0 or step == steps):
            now = time.perf_counter()
            rate = seen_since_tick * dist.world_size() / max(now - tick, 1e-9)
            log.log(
                f"  epoch {epoch} step {step}/{steps}  loss {loss.item():.4f}  "
                f"lr {current_lr(optimizer):.5f}  {rate:.0f} img/s"
            )
            tick, seen_since_tick = now, 0
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)
    return meter.all_reduce().summary(), time.perf_counter() - start


@torch.no_grad()
def evaluate(model, loader, rt: Runtime) -> dict:
    """Loss, top-1 and top-5 over this rank's share of the validation set, summed over ranks.

    The loss is plain cross-entropy (no label smoothing), comparable across recipes.
    """
    model.eval()
    meter = Meter(rt.device)
    for images, targets in loader:
        images, targets = to_device(images, targets, rt.device, rt.channels_last)
        with autocast(rt):
            logits = model(images)
        meter.update(nn.functional.cross_entropy(logits.float(), targets), logits, targets)
    return meter.all_reduce().summary()


def load_index(cfg: DataConfig, num_classes: int) -> DatasetIndex:
    """Find the dataset and check it against model.num_classes."""
    index = find_dataset(check_data_dir(cfg))
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


def restore(path: Path, state: dict, model, optimizer, scheduler, scaler, log: RunLog) -> Progress:
    """Put a run back where checkpoint `state` (read from `path`) left it."""
    planned, stored = scheduler.total_steps, state["scheduler"].get("total_steps")
    if stored != planned:
        raise CheckpointError(
            f"'{path}' belongs to a schedule of {stored} steps but this config plans {planned} "
            f"(train.epochs or data.batch_size changed); restore them or use a new "
            f"train.checkpoint_dir"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    progress = Progress(state["epoch"], state["best_top1"], state["best_epoch"])
    log.log(f"Loaded checkpoint '{path}' (epoch {progress.epoch})")
    log.log(f"Previous best accuracy: {progress.best_top1:.2f}% (epoch {progress.best_epoch})")
    log.drop_metrics_after(progress.epoch)
    return progress


def choose_max_lr(cfg: Config, saved: dict | None, model, loader, rt: Runtime, log) -> float:
    """optim.max_lr: auto -> the resumed run's value, or a fresh LR range test's suggestion."""
    if saved is not None:
        lr = saved["config"]["optim"]["max_lr"]
        log.log(f"max_lr: auto -> {lr:.4g} (chosen when this run started)")
        return lr
    from rn50.lr_finder import find_max_lr

    return find_max_lr(model, loader, cfg, rt, Path(cfg.train.checkpoint_dir), log).max_lr


def fit(cfg: Config) -> dict:
    """Train cfg.train.epochs epochs (resuming when asked), evaluating and saving every epoch.

    Returns the last epoch's metrics record (the one written to metrics.jsonl).
    """
    rt = make_runtime(cfg)
    index = load_index(cfg.data, cfg.model.num_classes)
    run_dir = Path(cfg.train.checkpoint_dir)
    log = RunLog(run_dir, enabled=dist.is_main())
    log.log(f"Dataset: {index.root} ({index.layout} layout)")
    log.log(f"Number of training samples: {len(index.train)}")
    log.log(f"Number of validation samples: {len(index.val)}")
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    train_data = train_loader(cfg.data, index, cfg.train.seed, rt)
    val_data = eval_loader(cfg.data, index, rt)
    initial_weights(model, cfg.train, log)
    memory_format = torch.channels_last if rt.channels_last else torch.contiguous_format
    model.to(rt.device, memory_format=memory_format)
    last = latest_checkpoint(run_dir) if cfg.train.resume else None
    saved = load_checkpoint(last) if last else None
    if saved is not None:
        check_classes(saved, cfg.model.num_classes, last)
    if cfg.optim.max_lr == "auto":
        cfg.optim.max_lr = choose_max_lr(cfg, saved, model, train_data, rt, log)
    log.write_config(cfg.to_yaml())  # resolved: max_lr is a number from here on
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.epochs * len(train_data))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.use_scaler)
    progress = Progress()
    if saved is not None:
        progress = restore(last, saved, model, optimizer, scheduler, scaler, log)

    log.log(
        f"Using {precision_name(rt)} precision" + (" with loss scaling" if rt.use_scaler else "")
    )
    log.log("\nModel Summary:")
    log.log(model_summary(cfg.model, cfg.data.batch_size, cfg.data.resolution))
    log.log(f"\nTraining on {rt.device} ({count_parameters(model):,} parameters)")
    log.log(f"Number of classes: {len(index.classes)}")
    log.log(f"Logging to: {log.log_path}")

    record: dict = {}
    for epoch in range(progress.epoch + 1, cfg.train.epochs + 1):
        log.log(f"\nEpoch {epoch}/{cfg.train.epochs}:")
        train_data.sampler.set_epoch(epoch)
        train, train_s = train_one_epoch(
            model,
            train_data,
            criterion,
            optimizer,
            scaler,
            scheduler,
            rt,
            epoch,
            log,
            cfg.train.log_every,
        )
        t0 = time.perf_counter()
        val = evaluate(model, val_data, rt)
        val_s = time.perf_counter() - t0
        improved = val["top1"] > progress.best_top1
        if improved:
            progress.best_top1, progress.best_epoch = val["top1"], epoch
        record = epoch_record(epoch, train, val, train_s, val_s, optimizer, scheduler, progress)
        log_epoch(log, record, improved)
        log.append_metrics(record)
        if dist.is_main():
            state = {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": plain_state(scheduler.state_dict()),
                "scaler": scaler.state_dict(),
                "best_top1": progress.best_top1,
                "best_epoch": progress.best_epoch,
                "config": cfg.to_dict(),
                "classes": list(index.classes),
                "names": list(index.names),
                "metrics": record,
            }
            path = save_checkpoint(state, epoch_path(run_dir, epoch))
            log.log(f"Saved checkpoint to: {path}")
            if improved:
                log.log(f"Saved best model to: {copy_checkpoint(path, best_path(run_dir))}")
    if not record:
        log.log(
            f"Training already complete: {run_dir} holds epoch {progress.epoch}/{cfg.train.epochs}"
        )
    log.log(
        f"\nBest val top-1: {progress.best_top1:.2f}% (epoch {progress.best_epoch}); "
        f"outputs in {run_dir}"
    )
    log.close()
    return record


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
        "val_loss": val["loss"],
        "val_top1": val["top1"],
        "val_top5": val["top5"],
        "val_images": val["count"],
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
