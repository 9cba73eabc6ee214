"""The run: set-up (Trainer.__init__), one epoch (Trainer.train_epoch) and the whole fit
(Trainer.fit), each readable top to bottom. The step, the guards, resume state, evaluation
and records each live in their own module of this package."""

import math
import time
from contextlib import nullcontext
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
    match_classes,
    save_checkpoint,
)
from rn50.config import Config
from rn50.data.augment import BatchAugment
from rn50.data.auto import choose_data
from rn50.data.batch import to_device
from rn50.data.schedule import resolution_at
from rn50.ema import ModelEMA, recompute_bn_statistics
from rn50.errors import Diverged
from rn50.fileio import lock_run_dir, remove_stale_temps
from rn50.metrics import Meter
from rn50.model import build_model, count_parameters, model_summary
from rn50.optim import build_optimizer, build_scheduler, current_lr, scaled_lr
from rn50.preempt import Preempted, SignalGuard
from rn50.runlog import RunLog
from rn50.train.compiled import CompileWatch, eager, expected_graphs
from rn50.train.evaluate import evaluate
from rn50.train.loaders import eval_loader, load_index, train_loader, warn_about_index
from rn50.train.lr_finder import choose_max_lr
from rn50.train.records import Records, epoch_record
from rn50.train.resume import (
    Preloaded,
    Progress,
    RollingSaves,
    checkpoint_state,
    find_resume_state,
    initial_weights,
    restore,
)
from rn50.train.run_files import repair_run_dir
from rn50.train.runtime import (
    make_runtime,
    parallelize,
    precision_name,
    synchronize,
    train_resolutions,
)
from rn50.train.step import (
    DEFERRED_CHECK_EVERY,
    BadFileBudget,
    BufferGuard,
    DeviceGuard,
    NonFiniteStreak,
    PendingChecks,
    allow_skipped_steps,
    micro_batches,
    non_finite_tensors,
    train_step,
)


class Trainer:
    """A run's model, optimizer, schedule, data and records, and the loop that trains them.

    Raises ConfigError, DataError or CheckpointError from its set-up (bad config, dataset or
    checkpoint), Diverged and Preempted from fit().
    """

    def __init__(self, cfg: Config, preloaded: Preloaded | None = None):
        self.cfg = cfg
        self.rt = rt = make_runtime(cfg)
        self.index = load_index(cfg.data, cfg.model.num_classes)
        self.run_dir = Path(cfg.train.checkpoint_dir)
        # One training a run dir at a time: rank 0 holds the lock until fit() ends (or the
        # process does), and gives it back when the set-up fails.
        self.lock = lock_run_dir(self.run_dir) if dist.is_main() else None
        try:
            self._set_up(cfg, rt, preloaded)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Give back the run dir's lock (another training may use the run dir from now on)."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def _set_up(self, cfg: Config, rt, preloaded: Preloaded | None) -> None:
        """The rest of __init__, under the run dir's lock; `preloaded`: the checkpoint at
        train.initial_model_path, when a check read it already."""
        self.log = log = RunLog(self.run_dir, enabled=dist.is_main())
        if dist.is_main():  # files of a killed process's writes, under temporary names
            removed = remove_stale_temps(self.run_dir)
            if removed:
                log.log(removed)
        log.log(f"Dataset: {self.index.root} ({self.index.layout} layout)")
        log.log(f"Number of training samples: {len(self.index.train)}")
        log.log(f"Number of validation samples: {len(self.index.val)}")
        warn_about_index(self.index, log.warn)
        # data.workers/decode auto: chosen once for this run's loaders, logged with why.
        self.data_choice = choose_data(cfg.data, rt.device, cfg.train.compile, say=log.log)
        if cfg.data.workers != "auto":  # capped to this machine: the run's config.yaml says so
            cfg.data.workers = self.data_choice.data.workers
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
        self.val_data = eval_loader(self.data_choice.data, self.index, rt)
        if dist.is_main():  # the other ranks receive these weights from DDP's broadcast
            initial_weights(model, cfg.train, log, self.index.classes, preloaded)
        elif preloaded is not None:
            preloaded.take()  # (dropped: this rank's check read it, rank 0's is used)
        model.to(rt.device, memory_format=rt.memory_format)
        found = find_resume_state(self.run_dir, log.warn) if cfg.train.resume else None
        # The checkpoint a rerun would resume from, kept up to date by every save (rank 0).
        self.last_saved: Path | None = found[0] if found else None
        saved = found[1] if found else None
        if saved is not None:
            check_classes(saved, cfg.model.num_classes, found[0])
            match_classes(
                saved, self.index.classes, found[0],
                "train on the dataset it was trained on, or use a new train.checkpoint_dir",
            )  # fmt: skip
        if cfg.optim.max_lr == "auto":  # rank 0 runs the range test; all use its answer
            lr = choose_max_lr(cfg, saved, model, self.train_data, rt, log) if dist.is_main() else 0
            cfg.optim.max_lr = dist.broadcast_object(lr)
        # A plain copy, made before compile/DDP touch the module; it starts from the initial
        # weights and resume loads it. It stays eager under train.compile: it only runs
        # forward passes once an epoch (its BatchNorm recomputation, its validation), which
        # two graphs of its own (train-mode no-grad and eval) would shorten by less than
        # they take to compile on a short run; its update is one _foreach kernel group.
        self.ema = ModelEMA(model, cfg.train.ema_decay) if cfg.train.ema else None
        # module: the plain network (checkpoints, evaluation); model: what a step calls (DDP).
        self.module, self.model = parallelize(model, cfg, rt)
        # train.compile: one graph per training resolution and one for evaluation, each
        # compiled at its first call, timed and logged there.
        self.compiles = CompileWatch(
            cfg.train.compile, expected_graphs(train_resolutions(cfg)), log.log, rt.device
        )
        # Takes the soft targets of MixUp/CutMix too, smoothing them as torchvision's does.
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
        self.batch_augment = BatchAugment.from_config(cfg.data, cfg.model.num_classes)
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
            resumed = restore(self, *found, log)
            self.progress = resumed.progress
            self.start_step, self.meter_sums = resumed.start_step, resumed.meter_sums
        if cfg.train.resume:  # what a kill between two of an epoch's writes left
            repair_run_dir(log, self.progress.epoch, found)
        # Only now: a refused resume (another schedule) must not overwrite the run's config.
        log.write_config(cfg.to_yaml())  # resolved: max_lr is a number from here on
        self.saves = RollingSaves(cfg.train, self.steps_per_epoch)
        self.streak = NonFiniteStreak(cfg.train.max_bad_steps)  # across epochs
        self.records = Records(cfg, log, rt, self.optimizer, self.scheduler)
        p, step = self.progress, self.scheduler.last_epoch
        where = {"epoch": p.epoch, "step_in_epoch": self.start_step, "global_step": step}
        self.records.open(where if found is not None else None, self.data_choice.record())

    # -- the run ---------------------------------------------------------------------------

    def fit(self) -> dict:
        """Train the remaining epochs, evaluating and checkpointing after each; returns the
        last epoch's metrics record ({} when the run was already complete)."""
        try:
            return self._fit()
        finally:
            self.release()

    def _fit(self) -> dict:
        """fit(), under the run dir's lock."""
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
                val, raw = self.validate(epoch)
                self.check_epoch(epoch, train, val, raw)
                record = self.end_epoch(epoch, train, val, train_s, time.perf_counter() - t0, raw)
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
            self.records.draw_curves(self.progress.epoch)  # a kill may have come before it
        best = self.progress
        log.log(
            f"\nBest val top-1: {best.best_top1:.2f}% (epoch {best.best_epoch}); "
            f"outputs in {self.run_dir}"
        )
        self.records.close()
        log.close()
        return record

    def train_epoch(self, epoch: int, guard: SignalGuard) -> tuple[dict, float]:
        """One pass over this rank's share of the training set; returns (summary, seconds)."""
        cfg, rt, log = self.cfg, self.rt, self.log
        self.use_resolution(resolution_at(epoch, cfg.data))
        self.model.train()
        meter = Meter(rt.device)
        start = self.start_step
        if self.meter_sums is not None:
            meter.sums.copy_(self.meter_sums)
        self.start_step, self.meter_sums = 0, None
        # Steps count globally: `start` steps consumed start x global_batch images of this
        # epoch, which this run's ranks share equally (whatever the world size that saved it).
        rank_images = self.global_batch // dist.world_size()  # per optimizer step
        self.train_data.sampler.set_epoch(epoch, start=start * rank_images)
        # train.sync_check: step reads each step's loss check on the host (a wait for the
        # device every step); deferred keeps it on the device and reads the flags together.
        deferred = cfg.train.sync_check == "deferred"
        buffers = DeviceGuard(self.module, self.optimizer) if deferred else BufferGuard(self.module)
        pending = PendingChecks((cfg.train.log_every or DEFERRED_CHECK_EVERY) if deferred else 1)
        streak = self.streak  # across epochs
        bad_files = BadFileBudget(
            cfg.data.max_bad_fraction * self.steps_per_epoch * rank_images,
            cfg.data.max_bad_fraction,
            self.index.root,
            log.warn,
        )
        report = self.records.reporter(f"epoch {epoch}", self.steps_per_epoch, start)
        self.records.train_report = report
        t0 = time.perf_counter()
        allow_skipped_steps()
        # Each item: the accum_steps micro-batches of one optimizer step.
        steps = report.wrap(micro_batches(self.train_data, cfg.train.accum_steps), meter)
        for step, group in enumerate(steps, start + 1):
            for _, _, bad in group:
                bad_files.note(bad, meter)
            # BatchNorm cannot train on fewer than 2 images; DDP needs every rank in the step.
            fewest = min(len(targets) for _, targets, _ in group)
            if not dist.all_true(fewest >= 2):
                self.scheduler.step()
                where = "a batch" if fewest < 2 else "a batch of another process"
                self.records.skipped_step(
                    epoch, step,
                    f"{where} held fewer than 2 images after unreadable files were left out "
                    f"(BatchNorm trains on 2 or more)",
                )  # fmt: skip
                continue
            batches = [to_device(x, y, rt.device, rt.channels_last) for x, y, _ in group]
            targets = torch.cat([y for _, y in batches])  # the meter's: the images' own labels
            if self.batch_augment is not None:  # erasing, MixUp/CutMix (then soft targets)
                batches = self.batch_augment.step(
                    batches, cfg.train.seed, epoch, step, dist.rank(), dist.world_size()
                )
            buffers.save()
            with self.compiled_call(batches):
                loss, logits, applied = train_step(
                    self.model, batches, self.criterion, self.optimizer, self.scaler,
                    self.scheduler, rt, buffers if deferred else None,
                )  # fmt: skip
            if deferred:  # `applied` is on the device: the sums and the average obey it there
                meter.update(loss, logits, targets, keep=applied)
                if self.ema is not None:
                    self.ema.update(self.module, keep=applied)
            elif applied:
                meter.update(loss, logits, targets)
                if self.ema is not None:
                    self.ema.update(self.module)
            else:
                buffers.restore()
            pending.add(step, applied, loss)
            if pending.due():
                self.read_checks(pending, streak, epoch)
            self.after_step(report, targets.shape[0])
            # Stopping and saving involve every rank (the same step count, the meter's
            # all-reduce): they decide together, from what any of them received or timed.
            stop, clock = dist.any_each(guard.received is not None, self.saves.clock_due())
            if stop and step < self.steps_per_epoch:
                path = self.save_last(epoch, step, meter)
                log.log(
                    f"Received {guard.name or 'a signal on another rank'} at epoch {epoch} "
                    f"step {step}: saved {path}; run the same command to resume"
                )
                raise Preempted(guard.name)
            if self.saves.due(step, clock):
                self.read_checks(pending, streak, epoch)  # deferred: the streak is known first
                if streak.count == 0:
                    self.save_last(epoch, step, meter)
        self.read_checks(pending, streak, epoch)
        synchronize(rt.device)
        return meter.all_reduce().summary(), time.perf_counter() - t0

    def validate(self, epoch: int) -> tuple[dict, dict | None]:
        """(val, raw): the run's model's validation, and with train.ema the raw weights' (val
        is then the EMA's, after its BatchNorm statistics are recomputed), else None."""
        # Each rank's BatchNorm statistics came from its own batches: evaluate (and save)
        # rank 0's everywhere. The plain module: evaluation needs no DDP.
        dist.broadcast_buffers(self.module)
        report = self.records.reporter("val", len(self.val_data))
        pad = self.val_data.batch_size if self.cfg.train.compile else 0
        val = evaluate(
            self.module, self.val_data, self.rt, report, self.log.warn, pad, self.compiles.first,
            flip=self.cfg.eval.flip,
        )
        if self.ema is None:
            return val, None
        self.train_data.sampler.set_epoch(epoch)  # this epoch's first batches again
        recompute_bn_statistics(
            self.ema.module, self.train_data, self.cfg.train.ema_bn_batches, self.rt
        )
        dist.broadcast_buffers(self.ema.module)
        report = self.records.reporter("val (EMA)", len(self.val_data))
        # The same files as the pass above: they were named there.
        flip = self.cfg.eval.flip
        return evaluate(self.ema.module, self.val_data, self.rt, report, flip=flip), val

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
        self.records.end_epoch(record, improved)
        if dist.is_main():
            state = {**checkpoint_state(self, epoch, 0), "metrics": record}
            path = self.last_saved = save_checkpoint(state, epoch_path(self.run_dir, epoch))
            self.log.log(f"Saved checkpoint to: {path}")
            if improved:
                best = copy_checkpoint(path, best_path(self.run_dir))
                self.log.log(f"Saved best model to: {best}")
            # The epoch file now holds everything last.pth did, and more.
            last_path(self.run_dir).unlink(missing_ok=True)
        self.records.after_epoch(record)
        return record

    # -- helpers of the loop ---------------------------------------------------------------

    def after_step(self, report, images: int) -> None:
        """Records of a finished optimizer step of `images` images (this rank's)."""
        self.records.after_step(report, images)

    def read_checks(self, pending: PendingChecks, streak: NonFiniteStreak, epoch: int) -> None:
        """The loss checks of the pending steps, read on the host: each skipped step named,
        the streak of skipped steps counted; raises Diverged at train.max_bad_steps."""
        for step, applied, loss in pending.read():
            if not applied:
                self.log.warn(f"epoch {epoch} step {step}: loss is {loss}; step skipped")
            if streak.update(applied):
                raise Diverged(self.diverged_message(epoch, step, streak.count))

    def compiled_call(self, batches):
        """The context of a training step with train.compile: the first step at a resolution
        is timed and its graphs counted (CompileWatch); a step with a micro-batch short of
        data.batch_size (unreadable files left out) runs eagerly rather than compiling a
        graph for its size."""
        if not self.cfg.train.compile:
            return nullcontext()
        if any(images.shape[0] != self.cfg.data.batch_size for images, _ in batches):
            return eager(self.module)
        return self.compiles.first(f"{self.train_res} px (training)")

    def save_last(self, epoch: int, step: int, meter: Meter) -> Path | None:
        """The rolling mid-epoch checkpoint: every rank calls it at the same step (the meter's
        sums are all-reduced), rank 0 writes it and gets its path."""
        self.saves.saved()
        self.stop_if_broken(f"epoch {epoch} step {step}", self.weight_problems(), "last.pth")
        sums = dist.sum_over_ranks(meter.sums)
        if not dist.is_main():
            return None
        state = checkpoint_state(self, epoch, step, sums)
        self.last_saved = save_checkpoint(state, last_path(self.run_dir))
        return self.last_saved

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
            self.data_choice.data, self.index, cfg.train.seed, self.rt, cfg.train.accum_steps, res
        )
        self.train_res = res

    def diverged_message(self, epoch: int, step: int, streak: int) -> str:
        """The one line of a run stopped by `streak` non-finite losses in a row."""
        return (
            f"loss was NaN/inf for {streak} steps in a row (epoch {epoch}, step {step}, lr "
            f"{current_lr(self.optimizer):.4g}); {self.last_good()}; lower optim.max_lr or use "
            f"bf16/fp32"
        )

    def last_good(self) -> str:
        """Which checkpoint a rerun resumes from, for the line of a stopped run: the one this
        run resumed from or last wrote (rank 0 writes them)."""
        if not dist.is_main():
            return "rank 0 names the last good checkpoint"
        if self.last_saved is None:
            return "there is no earlier checkpoint"
        return f"the last good checkpoint is {self.last_saved}"

    def weight_problems(self) -> list[str]:
        """What is non-finite in the weights and BatchNorm statistics (the EMA's too): one
        pass over them, so once an epoch or a save, not every step."""
        problems = []
        modules = [("weights", self.module)]
        if self.ema is not None:
            modules.append(("EMA weights", self.ema.module))
        for label, module in modules:
            bad = non_finite_tensors(module)
            if bad:
                more = ", ..." if len(bad) > 3 else ""
                problems.append(
                    f"{len(bad)} tensor(s) of the {label} hold NaN/inf ({', '.join(bad[:3])}{more})"
                )
        return problems

    def check_epoch(self, epoch: int, train: dict, val: dict, raw: dict | None) -> None:
        """Raise Diverged, before anything of epoch `epoch` is written, when it must not be
        saved: its weights, BatchNorm statistics or validation loss are NaN/inf (they would
        become model_best.pth, and a resume would go on from them), or none of its steps was
        applied (every loss was NaN/inf: it trained nothing)."""
        problems = self.weight_problems()
        for label, result in (("validation loss", val), ("raw weights' validation loss", raw)):
            if result is not None and not math.isfinite(result["loss"]):
                problems.append(f"the {label} is {result['loss']}")
        if train["count"] == 0 and self.streak.count > 0:
            problems.append("no step was applied (every loss was NaN/inf)")
        self.stop_if_broken(f"epoch {epoch}", problems, "its checkpoint")

    def stop_if_broken(self, where: str, problems: list[str], unsaved: str) -> None:
        """Raise Diverged on every rank when any rank found `problems` at `where`; `unsaved`:
        the file that is then not written."""
        if not dist.any_true(bool(problems)):
            return
        found = "; ".join(problems) or "another rank found NaN/inf values"
        raise Diverged(
            f"{where}: {found}; {unsaved} was not written and {self.last_good()}; lower "
            f"optim.max_lr or use bf16/fp32"
        )


def fit(cfg: Config, preloaded: Preloaded | None = None) -> dict:
    """Train cfg.train.epochs epochs (resuming when asked), evaluating and saving every epoch.
    `preloaded`: the checkpoint at train.initial_model_path, when a check read it already.

    Returns the last epoch's metrics record (the one written to metrics.jsonl).
    """
    return Trainer(cfg, preloaded).fit()
