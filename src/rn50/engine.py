"""Training and evaluation: one readable step, one epoch, one evaluation pass, the whole run."""

import dataclasses
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

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
from rn50.config import Config, DataConfig, OptimConfig, TrainConfig, check_data_dir
from rn50.data.batch import to_device
from rn50.data.index_cache import load_dataset_index
from rn50.data.layout import DatasetIndex
from rn50.data.pipeline import make_loader
from rn50.data.schedule import eval_resolution, resolution_at
from rn50.ema import ModelEMA
from rn50.errors import CheckpointError, ConfigError, DataError, Diverged
from rn50.metrics import Meter
from rn50.model import build_model, count_parameters, model_summary
from rn50.optim import (
    build_optimizer,
    build_scheduler,
    current_lr,
    current_momentum,
    load_optimizer_state,
)
from rn50.preempt import Preempted, SignalGuard
from rn50.progress import Reporter, make_reporter
from rn50.runlog import RunLog, read_metrics
from rn50.tb import Board

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
    device = dist.local_device(resolve_device(cfg.train.device))
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


class StepResult(NamedTuple):
    loss: torch.Tensor  # mean loss of this rank's micro-batches (detached)
    logits: torch.Tensor  # of all of them, concatenated (detached)
    applied: bool  # False: a loss was NaN/inf on some rank, and no rank changed a weight


def grad_sync(model: nn.Module, last: bool):
    """DDP all-reduces gradients in every backward unless told not to; a step needs it only in
    the backward of its last micro-batch (the others accumulate locally)."""
    if last or not isinstance(model, DistributedDataParallel):
        return nullcontext()
    return model.no_sync()


def train_step(model, batches, criterion, optimizer, scaler, scheduler, rt: Runtime) -> StepResult:
    """One optimizer step over `batches`, a list of (images, targets) micro-batches.

    Each micro-batch's loss is divided by their number, so the accumulated gradient is that of
    their mean; DDP then averages it over the ranks. A non-finite loss on any rank changes no
    weight on any rank (the LR schedule still advances a step).
    """
    optimizer.zero_grad(set_to_none=True)
    losses, logits = [], []
    for i, (images, targets) in enumerate(batches):
        with grad_sync(model, last=i == len(batches) - 1):
            with autocast(rt):
                out = model(images)
                loss = criterion(out, targets)
            scaler.scale(loss / len(batches)).backward()  # fp16: scaled against underflow
        losses.append(loss.detach())
        logits.append(out.detach())
    loss = torch.stack(losses).mean()
    # One host sync a step: a NaN must never reach the weights. DDP's replicas decide together,
    # or they would drift apart.
    finite = torch.isfinite(loss)
    applied = dist.all_true(finite) if isinstance(model, DistributedDataParallel) else bool(finite)
    if applied:
        scaler.step(optimizer)  # unscales first; skips the update if a gradient is inf/NaN
        scaler.update()  # lowers the scale after a skipped step, raises it after calm ones
    scheduler.step()  # one-cycle moves every optimizer step, applied or not
    return StepResult(loss, torch.cat(logits), applied)


def micro_batches(loader, n: int):
    """The loader's batches in lists of `n`: the micro-batches of one optimizer step each."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == n:
            yield group
            group = []


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
def evaluate(model, loader, rt: Runtime, report: Reporter | None = None) -> dict:
    """Loss, top-1 and top-5 over this rank's share of the validation set, summed over ranks.

    The loss is plain cross-entropy (no label smoothing), comparable across recipes.
    `report` shows the pass's progress.
    """
    model.eval()
    meter = Meter(rt.device)
    for images, targets, bad in report.wrap(loader, meter) if report else loader:
        meter.skip(bad)
        if not len(targets):
            continue
        images, targets = to_device(images, targets, rt.device, rt.channels_last)
        with autocast(rt):
            logits = model(images)
        # Per-image losses: the sums do not depend on how the images were split into batches
        # or ranks, so a 2-rank evaluation equals a 1-process one exactly.
        losses = nn.functional.cross_entropy(logits.float(), targets, reduction="none")
        meter.update(losses, logits, targets)
        if report:
            report.step(targets.shape[0])
    return meter.all_reduce().summary()


def load_index(cfg: DataConfig, num_classes: int) -> DatasetIndex:
    """Find the dataset and check it against model.num_classes."""
    index = load_dataset_index(check_data_dir(cfg), cache=cfg.index_cache)
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
    """This rank's share of the validation set at data.eval_resolution."""
    if not index.val:
        raise DataError(f"no validation images in {index.root}; add val/ (see README: Data)")
    return make_loader(
        cfg,
        index.val,
        train=False,
        batch_size=cfg.eval_batch_size or 2 * cfg.batch_size,
        device=rt.device,
        rank=dist.rank(),
        world=dist.world_size(),
        resolution=eval_resolution(cfg),
    )


def train_loader(
    cfg: DataConfig,
    index: DatasetIndex,
    seed: int,
    rt: Runtime,
    accum: int = 1,
    resolution: int | None = None,
):
    """Micro-batches of cfg.batch_size, `accum` per optimizer step, this rank's share, with
    crops of `resolution` (default cfg.resolution)."""
    world = dist.world_size()
    if len(index.train) < cfg.batch_size * world * accum:
        raise ConfigError(
            f"data.batch_size ({cfg.batch_size}) x {world} process(es) x train.accum_steps "
            f"({accum}) is more than the {len(index.train)} training images; lower "
            f"data.batch_size or train.accum_steps"
        )
    return make_loader(
        cfg,
        index.train,
        train=True,
        batch_size=cfg.batch_size,
        device=rt.device,
        seed=seed,
        rank=dist.rank(),
        world=world,
        accum=accum,
        resolution=resolution,
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


def parallelize(model: nn.Module, cfg: Config, rt: Runtime) -> tuple[nn.Module, nn.Module]:
    """(module, model): the plain network, and what the training step calls.

    Under torchrun `model` is `module` in DistributedDataParallel (which broadcasts rank 0's
    weights now and averages gradients in every synchronized backward); in one process they
    are the same. model.sync_bn swaps in SyncBatchNorm first; train.compile compiles the
    module in place before DDP wraps it, as PyTorch recommends, so its state_dict keys stay
    plain (no "module." or "_orig_mod." prefix) and checkpoints load anywhere.
    """
    world = dist.world_size()
    if cfg.model.sync_bn and world > 1:
        if rt.device.type != "cuda":
            raise ConfigError(
                "model.sync_bn needs CUDA devices (SyncBatchNorm does not run on CPUs); set "
                "model.sync_bn=false"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameters and buffers
    if cfg.train.compile:
        model.compile()
    if world == 1:
        return model, model
    ids = [rt.device.index] if rt.device.type == "cuda" else None
    return model, DistributedDataParallel(model, device_ids=ids)


def scaled_lr(cfg: OptimConfig, global_batch: int, log) -> OptimConfig:
    """optim.scale_lr: max_lr is the peak LR for a global batch of 256; scale it linearly."""
    if not cfg.scale_lr:
        return cfg
    lr = cfg.max_lr * global_batch / 256
    log.log(f"max_lr {cfg.max_lr:g} x global batch {global_batch}/256 = {lr:.4g} (optim.scale_lr)")
    return dataclasses.replace(cfg, max_lr=lr)


def check_global_batch(state: dict, path: Path, cfg: Config, global_batch: int) -> None:
    """A run resumes only with the global batch it was trained with: the schedule and the
    images of every step depend on it, not on how many processes share it."""
    saved = state.get("global_batch") or state["config"]["data"]["batch_size"]  # older files
    if saved == global_batch:
        return
    b, world, accum = cfg.data.batch_size, dist.world_size(), cfg.train.accum_steps
    if saved % (b * world) == 0:
        fix = f"set train.accum_steps={saved // (b * world)}"
    elif saved % (world * accum) == 0:
        fix = f"set data.batch_size={saved // (world * accum)}"
    else:
        fix = f"use a number of processes that divides {saved}"
    raise CheckpointError(
        f"'{path}' was trained with a global batch of {saved} images a step but this run's is "
        f"{global_batch} (data.batch_size {b} x {world} process(es) x train.accum_steps "
        f"{accum}); {fix} to resume it, or use a new train.checkpoint_dir"
    )


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
        accum, world = cfg.train.accum_steps, dist.world_size()
        # Images per optimizer step, over all ranks: what the LR and the schedule are set for.
        self.global_batch = cfg.data.batch_size * world * accum
        log.log(
            f"Global batch: {self.global_batch} (data.batch_size {cfg.data.batch_size} x "
            f"{world} process(es) x train.accum_steps {accum})"
        )
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        model = build_model(cfg.model)
        torch.manual_seed(cfg.train.seed + dist.rank())  # anything else random: one stream a rank
        # Progressive resizing changes the crop size between epochs: train_data is rebuilt
        # when it does (use_resolution); the number of steps an epoch does not depend on it.
        self.train_res: int | None = None
        self.use_resolution(resolution_at(1, cfg.data))
        self.val_data = eval_loader(cfg.data, self.index, rt)
        if dist.is_main():  # the other ranks receive these weights from DDP's broadcast
            initial_weights(model, cfg.train, log)
        memory_format = torch.channels_last if rt.channels_last else torch.contiguous_format
        model.to(rt.device, memory_format=memory_format)
        found = self.find_resume_state() if cfg.train.resume else None
        saved = found[1] if found else None
        if saved is not None:
            check_classes(saved, cfg.model.num_classes, found[0])
        if cfg.optim.max_lr == "auto":  # rank 0 runs the range test; all use its answer
            lr = choose_max_lr(cfg, saved, model, self.train_data, rt, log) if dist.is_main() else 0
            cfg.optim.max_lr = dist.broadcast_object(lr)
        # A plain copy, made before compile/DDP touch the module; it starts from the initial
        # weights and resume loads it.
        self.ema = ModelEMA(model, cfg.train.ema_decay) if cfg.train.ema else None
        # module: the plain network (checkpoints, evaluation); model: what a step calls (DDP).
        self.module, self.model = parallelize(model, cfg, rt)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
        optim_cfg = scaled_lr(cfg.optim, self.global_batch, log)
        self.optimizer = build_optimizer(self.module, optim_cfg, loss_scaling=rt.use_scaler)
        self.steps_per_epoch = len(self.train_data) // accum  # optimizer steps
        self.scheduler = build_scheduler(
            self.optimizer, optim_cfg, cfg.train.epochs * self.steps_per_epoch, self.steps_per_epoch
        )
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.use_scaler)
        self.progress = Progress()
        self.start_step = 0  # steps already done in the first epoch this process trains
        self.meter_sums: torch.Tensor | None = None  # that epoch's meter, when resumed mid-way
        if found is not None:
            self.restore(*found)
        # Only now: a refused resume (another schedule) must not overwrite the run's config.
        log.write_config(cfg.to_yaml())  # resolved: max_lr is a number from here on
        self.last_save = time.monotonic()
        self.open_records(resumed=found is not None)

    # -- checkpoints -----------------------------------------------------------------------

    def state(self, epoch: int, step: int, meter_sums: torch.Tensor | None = None) -> dict:
        """Everything needed to continue after `step` optimizer steps of epoch `epoch` (step 0:
        after the whole of epoch `epoch`); `meter_sums`: the epoch's sums over all ranks.

        "model" holds the run's model: the EMA weights when train.ema is on (what eval,
        predict and export read), and then "train_model" the raw weights that training
        continues from.
        """
        ema = self.ema
        weights = {"model": self.module.state_dict()}  # unwrapped: loads anywhere
        if ema is not None:
            weights = {
                "model": ema.module.state_dict(),
                "train_model": self.module.state_dict(),
                "ema_steps": ema.steps,
            }
        return {
            "epoch": epoch,
            "step_in_epoch": step,
            "samples_in_epoch": step * self.global_batch,  # images all ranks together consumed
            "global_batch": self.global_batch,
            "world_size": dist.world_size(),
            "global_step": self.scheduler.last_epoch,  # OneCycleLR counts optimizer steps
            **weights,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": plain_state(self.scheduler.state_dict()),
            "scaler": self.scaler.state_dict(),
            "meter": meter_sums.cpu() if meter_sums is not None else None,
            "rng": torch.get_rng_state(),
            "best_top1": self.progress.best_top1,
            "best_epoch": self.progress.best_epoch,
            "config": self.cfg.to_dict(),
            "classes": list(self.index.classes),
            "names": list(self.index.names),
        }

    def restore(self, path: Path, state: dict) -> None:
        """Put the run back where checkpoint `state` (read from `path`) left it."""
        check_global_batch(state, path, self.cfg, self.global_batch)
        planned, stored = self.scheduler.total_steps, state["scheduler"].get("total_steps")
        if stored != planned:
            raise CheckpointError(
                f"'{path}' belongs to a schedule of {stored} steps but this config plans "
                f"{planned} (train.epochs or the training images changed); restore them or use "
                f"a new train.checkpoint_dir"
            )
        self.module.load_state_dict(state.get("train_model", state["model"]))
        self.restore_ema(state)
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if state.get("rng") is not None and dist.world_size() == 1:
            torch.set_rng_state(state["rng"])  # rank 0's: under torchrun each keeps its own
        step = state.get("step_in_epoch", 0)
        done = state["epoch"] - 1 if step else state["epoch"]  # epochs fully finished
        self.progress = Progress(done, state["best_top1"], state["best_epoch"])
        # The meter holds the sums of all ranks: one rank takes them up, or they count twice.
        sums = state.get("meter") if step and dist.is_main() else None
        self.start_step, self.meter_sums = step, sums
        where = f"epoch {state['epoch']}"
        if step:
            where += f", step {step}/{self.steps_per_epoch}"
        self.log.log(f"Loaded checkpoint '{path}' ({where})")
        self.log.log(
            f"Previous best accuracy: {self.progress.best_top1:.2f}% "
            f"(epoch {self.progress.best_epoch})"
        )
        self.log.drop_metrics_after(done)

    def restore_ema(self, state: dict) -> None:
        """The average where the checkpoint has one; else it restarts from the raw weights."""
        if self.ema is None:
            return
        if "train_model" in state:
            self.ema.load_state_dict({"module": state["model"], "steps": state["ema_steps"]})
        else:
            self.ema.module.load_state_dict(state["model"])
            self.log.log("train.ema: the checkpoint has no average; it starts from its weights")

    def save_last(self, epoch: int, step: int, meter: Meter) -> Path | None:
        """The rolling mid-epoch checkpoint: every rank calls it at the same step (the meter's
        sums are all-reduced), rank 0 writes it."""
        self.last_save = time.monotonic()
        sums = dist.sum_over_ranks(meter.sums)
        if not dist.is_main():
            return None
        return save_checkpoint(self.state(epoch, step, sums), last_path(self.run_dir))

    def save_clock_due(self) -> bool:
        minutes = (time.monotonic() - self.last_save) / 60
        every = self.cfg.train.save_every_minutes
        return bool(every) and minutes >= every

    def save_due(self, step: int, clock: bool) -> bool:
        """Whether last.pth is written after `step`; `clock`: save_every_minutes passed."""
        every = self.cfg.train.save_every_steps
        by_steps = every and step % every == 0
        # The last step of an epoch is saved by the epoch checkpoint instead.
        return bool(by_steps or clock) and step < self.steps_per_epoch

    def find_resume_state(self) -> tuple[Path, dict] | None:
        """The checkpoint to resume from: rank 0 picks it, every rank loads that same file."""
        found = load_resume_state(self.run_dir, self.log.warn) if dist.is_main() else None
        path = dist.broadcast_object(str(found[0]) if found else None)
        if found is not None or path is None:
            return found
        try:
            return Path(path), load_checkpoint(path)
        except CheckpointError:
            raise CheckpointError(
                f"rank {dist.rank()} cannot read '{path}', which rank 0 resumes from; put "
                f"train.checkpoint_dir on a filesystem that every machine of the run shares"
            ) from None

    # -- training --------------------------------------------------------------------------

    def train_epoch(self, epoch: int, guard: SignalGuard) -> tuple[dict, float]:
        """One pass over this rank's share of the training set; returns (summary, seconds)."""
        cfg, rt, log = self.cfg, self.rt, self.log
        model, optimizer = self.model, self.optimizer
        self.use_resolution(resolution_at(epoch, cfg.data))
        model.train()
        meter = Meter(rt.device)
        start = self.start_step
        if self.meter_sums is not None:
            meter.sums.copy_(self.meter_sums)
        self.start_step, self.meter_sums = 0, None
        # Steps count globally: `start` steps consumed start x global_batch images of this
        # epoch, which this run's ranks share equally (whatever the world size that saved it).
        rank_images = self.global_batch // dist.world_size()  # per optimizer step
        self.train_data.sampler.set_epoch(epoch, start=start * rank_images)
        buffers = BufferGuard(self.module)
        bad_streak = 0
        # At least MIN_BAD_BUDGET files, so that one odd file in a small dataset is not fatal.
        budget = max(
            cfg.data.max_bad_fraction * self.steps_per_epoch * rank_images, MIN_BAD_BUDGET
        )
        report = self.train_report = self.reporter(f"epoch {epoch}", self.steps_per_epoch, start)
        t0 = time.perf_counter()
        allow_skipped_steps()
        # Each item: the accum_steps micro-batches of one optimizer step.
        steps = report.wrap(micro_batches(self.train_data, cfg.train.accum_steps), meter)
        for step, group in enumerate(steps, start + 1):
            for _, _, bad in group:
                self.note_bad(bad, meter, budget)
            # BatchNorm cannot train on fewer than 2 images; DDP needs every rank in the step.
            if not dist.all_true(all(len(targets) >= 2 for _, targets, _ in group)):
                self.scheduler.step()
                continue
            batches = [to_device(x, y, rt.device, rt.channels_last) for x, y, _ in group]
            targets = torch.cat([y for _, y in batches])
            buffers.save()
            loss, logits, applied = train_step(
                model, batches, self.criterion, optimizer, self.scaler, self.scheduler, rt
            )
            if applied:
                bad_streak = 0
                meter.update(loss, logits, targets)
                if self.ema is not None:
                    self.ema.update(self.module)
            else:
                buffers.restore()
                bad_streak += 1
                log.warn(f"epoch {epoch} step {step}: loss is {loss.item()}; step skipped")
                if bad_streak >= cfg.train.max_bad_steps:
                    raise Diverged(self.diverged_message(epoch, step, bad_streak))
            self.after_step(report, targets.shape[0])
            # Stopping and saving involve every rank (the same step count, the meter's
            # all-reduce): they decide together, from what any of them received or timed.
            stop, clock = dist.any_each(guard.received is not None, self.save_clock_due())
            if stop and step < self.steps_per_epoch:
                path = self.save_last(epoch, step, meter)
                log.log(
                    f"Received {guard.name or 'a signal on another rank'} at epoch {epoch} "
                    f"step {step}: saved {path}; run the same command to resume"
                )
                raise Preempted(guard.name)
            if bad_streak == 0 and self.save_due(step, clock):
                self.save_last(epoch, step, meter)
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)
        return meter.all_reduce().summary(), time.perf_counter() - t0

    @torch.no_grad()
    def calibrate_ema(self, epoch: int) -> None:
        """Recompute the EMA model's BatchNorm statistics on train.ema_bn_batches batches of
        this epoch (its first ones again, with the same augmentations).

        Averaged like the weights, the statistics mix those of networks the weights passed
        through, and fit none of them: on the demo (264 steps, ema_decay 0.99) the averaged
        weights scored 61% with averaged statistics and 94% with recomputed ones.
        """
        n = self.cfg.train.ema_bn_batches
        module, rt = self.ema.module, self.rt
        norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not n or not norms:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches, not a moving one
        module.train()
        self.train_data.sampler.set_epoch(epoch)
        for i, (images, targets, _) in enumerate(self.train_data):
            if i == n:
                break
            if len(targets) < 2:
                continue
            images, _ = to_device(images, targets, rt.device, rt.channels_last)
            with autocast(rt):
                module(images)
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        module.eval()

    def use_resolution(self, res: int) -> None:
        """Train at `res` px from now on: (re)build the training loader when the size changes
        (progressive resizing). The same sampler seed, so the images and their order do not
        change with the crop size."""
        if res == self.train_res:
            return
        if self.train_res is not None:
            self.log.log(f"Training resolution: {res} px (progressive resizing)")
        cfg = self.cfg
        self.train_data = train_loader(
            cfg.data, self.index, cfg.train.seed, self.rt, cfg.train.accum_steps, res
        )
        self.train_res = res

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
        log.log(f"\nTraining on {rt.device} ({count_parameters(self.module):,} parameters)")
        if dist.world_size() > 1:
            log.log(f"Processes: {dist.world_size()} (torchrun, {dist.backend()} backend)")
        log.log(f"Number of classes: {len(self.index.classes)}")
        log.log(f"Logging to: {log.log_path}")
        record: dict = {}
        with SignalGuard() as guard:
            for epoch in range(self.progress.epoch + 1, cfg.train.epochs + 1):
                log.log(f"\nEpoch {epoch}/{cfg.train.epochs}:")
                train, train_s = self.train_epoch(epoch, guard)
                t0 = time.perf_counter()
                val_report = self.reporter("val", len(self.val_data))
                # Each rank's BatchNorm statistics came from its own batches: evaluate (and
                # save) rank 0's everywhere. The plain module: evaluation needs no DDP.
                dist.broadcast_buffers(self.module)
                val = evaluate(self.module, self.val_data, rt, val_report)
                raw = None
                if self.ema is not None:
                    raw = val
                    self.calibrate_ema(epoch)
                    dist.broadcast_buffers(self.ema.module)
                    ema_report = self.reporter("val (EMA)", len(self.val_data))
                    val = evaluate(self.ema.module, self.val_data, rt, ema_report)
                val_s = time.perf_counter() - t0
                record = self.end_epoch(epoch, train, val, train_s, val_s, raw)
                if dist.any_true(guard.received is not None) and epoch < cfg.train.epochs:
                    log.log(
                        f"Received {guard.name or 'a signal on another rank'}: stopped after "
                        f"epoch {epoch}; run the same command to resume"
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
        self.close_records()
        log.close()
        return record

    # -- what a run shows and records (progress, steps.jsonl, TensorBoard, plots, summary) --

    def reporter(self, label: str, total: int, start: int = 0) -> Reporter:
        return make_reporter(self.cfg.train, label, total, start, self.log.log, self.log.record)

    def open_records(self, resumed: bool) -> None:
        """run_info.json; steps.jsonl cut back to where training goes on; TensorBoard."""
        from rn50.record import run_info, write_run_info

        step = self.recorded_step = self.scheduler.last_epoch  # optimizer steps done
        self.step_values = current_lr(self.optimizer), current_momentum(self.optimizer)
        self.train_report: Reporter | None = None
        # Lines and points after `step` come from a killed process: they will be trained again.
        self.log.drop_steps_after(step)
        on = self.cfg.train.tensorboard and dist.is_main()
        self.board = Board(self.run_dir, on, purge_step=step + 1, device=self.rt.device)
        if dist.is_main():
            p = self.progress
            where = {"epoch": p.epoch, "step_in_epoch": self.start_step, "global_step": step}
            info = run_info(self.rt.device, dist.world_size(), where if resumed else None)
            write_run_info(self.run_dir, info)

    def record_step(self) -> tuple[float, float]:
        """Append the LR and momentum the latest optimizer step used to steps.jsonl; returns
        them. (The optimizer already holds the next step's: the schedule moved after it.)"""
        used = self.step_values
        self.step_values = current_lr(self.optimizer), current_momentum(self.optimizer)
        step = self.scheduler.last_epoch
        # A batch too small to train on moves the schedule without a call here: the step
        # after it has no known value, and the curve has a two-step gap.
        if step == self.recorded_step + 1:
            self.log.append_step({"step": step, "lr": used[0], "momentum": used[1]})
        self.recorded_step = step
        return used

    def after_step(self, report: Reporter, images: int) -> None:
        """The LR/momentum series, the progress display and, at its report points, TensorBoard."""
        lr, momentum = self.record_step()
        snap = report.step(images, lr=lr)
        if snap is not None:
            self.board.step(self.scheduler.last_epoch, snap, lr, momentum)

    def after_epoch(self, record: dict) -> None:
        """The epoch's TensorBoard points and curves.png (rank 0)."""
        from rn50.plots import save_curves

        wait = self.train_report.data_wait_share if self.train_report is not None else None
        self.board.epoch(record, wait)
        if not dist.is_main():
            return
        cfg = self.cfg
        title = f"{self.run_dir.name}: {cfg.model.arch}, epoch {record['epoch']}/{cfg.train.epochs}"
        try:
            save_curves(
                read_metrics(self.log.metrics_path),
                read_metrics(self.log.steps_path),
                self.run_dir / "curves.png",
                title=title,
            )
        except Exception as e:  # a figure is not worth stopping a run that saved its epoch
            self.log.warn(f"could not draw curves.png: {e}")

    def close_records(self) -> None:
        """summary.json from metrics.jsonl (and a line about it); TensorBoard closed."""
        from rn50.record import device_info, format_summary, write_summary

        self.board.close()
        if dist.is_main():
            devices = dist.world_size()
            name = device_info(self.rt.device, devices)["name"]
            price = self.cfg.train.price_per_gpu_hour
            self.log.log(format_summary(write_summary(self.run_dir, devices, price, name)))

    def end_epoch(
        self, epoch: int, train: dict, val: dict, train_s: float, val_s: float, raw: dict | None
    ) -> dict:
        """Best-so-far, the metrics line, the epoch checkpoint and model_best.pth.

        `val`: the run's model's validation (the EMA's when train.ema); `raw`: then the raw
        weights', else None.
        """
        p = self.progress
        improved = val["top1"] > p.best_top1
        if improved:
            p.best_top1, p.best_epoch = val["top1"], epoch
        p.epoch = epoch
        record = epoch_record(epoch, train, val, train_s, val_s, self.optimizer, self.scheduler, p)
        record["train_resolution"] = self.train_res
        if raw is not None:
            record.update({f"raw_val_{k}": raw[k] for k in ("loss", "top1", "top5")})
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
        self.after_epoch(record)
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
    ema = " (EMA weights)" if "raw_val_top1" in r else ""
    log.log(
        f"Val Loss: {r['val_loss']:.4f} Top-1: {r['val_top1']:.2f}% Top-5: {r['val_top5']:.2f}%"
        f"{ema}"
    )
    if ema:
        log.log(
            f"Val Loss: {r['raw_val_loss']:.4f} Top-1: {r['raw_val_top1']:.2f}% "
            f"Top-5: {r['raw_val_top5']:.2f}% (raw weights)"
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
    loader = eval_loader(cfg.data, index, rt)
    return evaluate(model, loader, rt, make_reporter(cfg.train, "val", len(loader)))
