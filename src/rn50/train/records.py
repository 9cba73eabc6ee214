"""What a run shows and writes besides checkpoints: the progress display, run_info.json,
steps.jsonl (LR and momentum of every step), metrics.jsonl lines and the epoch's log lines,
TensorBoard, curves.png and summary.json."""

from pathlib import Path

from rn50 import distributed as dist
from rn50.config import Config
from rn50.optim import current_lr, current_momentum
from rn50.progress import Reporter, make_reporter
from rn50.runlog import RunLog, read_metrics
from rn50.tb import Board
from rn50.train.runtime import Runtime


class Records:
    """A run's records. `optimizer` and `scheduler` are read for the LR and momentum of each
    step; rank 0 writes the files, every rank keeps the same counters."""

    def __init__(self, cfg: Config, log: RunLog, rt: Runtime, optimizer, scheduler):
        self.cfg, self.log, self.rt = cfg, log, rt
        self.run_dir = Path(cfg.train.checkpoint_dir)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.train_report: Reporter | None = None

    def reporter(self, label: str, total: int, start: int = 0) -> Reporter:
        """A progress display of `total` steps (`start` already done) labelled `label`."""
        return make_reporter(self.cfg.train, label, total, start, self.log.log, self.log.record)

    def open(self, where: dict | None, data_auto: dict | None = None) -> None:
        """run_info.json (`where`: the epoch/step a resumed run goes on from, else None;
        `data_auto`: what data.workers/decode auto chose, rn50.data.auto.DataChoice.record);
        steps.jsonl cut back to where training goes on; TensorBoard."""
        from rn50.record import run_info, write_run_info

        step = self.recorded_step = self.scheduler.last_epoch  # optimizer steps done
        self.step_values = current_lr(self.optimizer), current_momentum(self.optimizer)
        # Lines and points after `step` come from a killed process: they will be trained again.
        self.log.drop_steps_after(step)
        on = self.cfg.train.tensorboard and dist.is_main()
        self.board = Board(self.run_dir, on, purge_step=step + 1, device=self.rt.device)
        if dist.is_main():
            info = run_info(self.rt.device, dist.world_size(), where)
            if data_auto:
                info["data_auto"] = data_auto
            write_run_info(self.run_dir, info)

    def record_step(self, skipped: str = "") -> tuple[float, float]:
        """Append the LR and momentum the latest optimizer step used to steps.jsonl; returns
        them. (The optimizer already holds the next step's: the schedule moved after it.)
        `skipped`: why that step changed no weight (the line then says so)."""
        used = self.step_values
        self.step_values = current_lr(self.optimizer), current_momentum(self.optimizer)
        step = self.scheduler.last_epoch
        # After a resume the first step's values are known only from here on: a line per
        # step that follows the last recorded one, never a guess.
        if step == self.recorded_step + 1:
            line = {"step": step, "lr": used[0], "momentum": used[1]}
            self.log.append_step({**line, "skipped": skipped} if skipped else line)
        self.recorded_step = step
        return used

    def skipped_step(self, epoch: int, step: int, reason: str) -> None:
        """A step the loop skipped without training (the schedule still moved): a warning
        naming it and its steps.jsonl line, with "skipped": `reason`."""
        self.log.warn(f"epoch {epoch} step {step}: step skipped: {reason}")
        self.record_step(skipped=reason)

    def after_step(self, report: Reporter, images: int) -> None:
        """The LR/momentum series, the progress display and, at its report points, TensorBoard."""
        lr, momentum = self.record_step()
        snap = report.step(images, lr=lr)
        if snap is not None:
            self.board.step(self.scheduler.last_epoch, snap, lr, momentum)

    def end_epoch(self, record: dict, improved: bool) -> None:
        """The epoch's log lines and metrics.jsonl line (`record`, from epoch_record)."""
        log_epoch(self.log, record, improved)
        self.log.append_metrics(record)

    def after_epoch(self, record: dict) -> None:
        """The epoch's TensorBoard points and curves.png (rank 0)."""
        wait = self.train_report.data_wait_share if self.train_report is not None else None
        self.board.epoch(record, wait)
        self.draw_curves(record["epoch"])

    def draw_curves(self, epoch: int) -> None:
        """curves.png from metrics.jsonl and steps.jsonl, titled with `epoch` (rank 0)."""
        from rn50.plots import save_curves

        if not dist.is_main():
            return
        cfg = self.cfg
        title = f"{self.run_dir.name}: {cfg.model.arch}, epoch {epoch}/{cfg.train.epochs}"
        try:
            save_curves(
                read_metrics(self.log.metrics_path),
                read_metrics(self.log.steps_path),
                self.run_dir / "curves.png",
                title=title,
            )
        except Exception as e:  # a figure is not worth stopping a run that saved its epoch
            self.log.warn(f"could not draw curves.png: {e}")

    def close(self) -> None:
        """summary.json from metrics.jsonl (and a line about it); TensorBoard closed."""
        from rn50.record import device_info, format_summary, write_summary

        self.board.close()
        if dist.is_main():
            devices = dist.world_size()
            name = device_info(self.rt.device, devices)["name"]
            price = self.cfg.train.price_per_gpu_hour
            self.log.log(format_summary(write_summary(self.run_dir, devices, price, name)))


def epoch_record(
    epoch: int, train: dict, val: dict, train_s: float, val_s: float, optimizer, scheduler, progress
) -> dict:
    """The metrics.jsonl line of one epoch: `train` and `val` are Meter summaries (loss, top1
    and top5 in %, count, skipped), times in seconds."""
    return {
        "epoch": epoch,
        "step": scheduler.last_epoch,  # optimizer steps taken so far (the scheduler counts steps)
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
    """The epoch's lines in the training log, from its metrics record `r`."""
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
