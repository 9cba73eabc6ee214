"""Figures of a run: curves.png per epoch, an overlay of several runs, a grid of samples.

Drawn with matplotlib's object API on the Agg canvas (no display, no pyplot global state) and
written atomically, so a viewer never opens half a PNG.
"""

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rn50.fileio import atomic_open
from rn50.runlog import best_record

CURVES_SIZE = (1200, 900)  # pixels of curves.png
COMPARE_SIZE = (1400, 500)  # pixels of rn50 runs --plot
DPI = 100
TILE_IN = 2.0  # a sample tile's side, in inches (200 px)
TITLE_IN = 0.3  # room for a tile's title


def _figure(size_px: tuple[int, int]):
    from matplotlib.figure import Figure

    return Figure(figsize=(size_px[0] / DPI, size_px[1] / DPI), dpi=DPI)


def _save(fig, path: str | os.PathLike) -> Path:
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=DPI)  # no bbox_inches="tight": keeps the size exact
    return Path(path)


def save_curves(
    metrics: Sequence[dict],
    steps: Sequence[dict],
    path: str | os.PathLike,
    title: str = "",
    size: tuple[int, int] = CURVES_SIZE,
) -> Path:
    """Loss, top-1/top-5 (train and val) per epoch; LR and momentum per step.

    `metrics` are metrics.jsonl records, `steps` steps.jsonl records ({step, lr, momentum}).
    """
    fig = _figure(size)
    (ax_loss, ax_acc), (ax_lr, ax_mom) = fig.subplots(2, 2)
    epochs = [r["epoch"] for r in metrics]
    ax_loss.plot(epochs, [r["train_loss"] for r in metrics], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in metrics], "o-", label="val")
    ax_loss.set(title="loss", xlabel="epoch", ylabel="cross-entropy")
    _loss_scale(ax_loss, [r[k] for r in metrics for k in ("train_loss", "val_loss")])
    for key, style, color in (
        ("train_top1", "o-", "C0"),
        ("val_top1", "o-", "C1"),
        ("train_top5", "s--", "C0"),
        ("val_top5", "s--", "C1"),
    ):
        ax_acc.plot(epochs, [r[key] for r in metrics], style, color=color, label=key)
    best = best_record(metrics)
    if best is not None:
        label = f"best val top-1 {best['val_top1']:.2f}% (epoch {best['epoch']})"
        ax_acc.axvline(best["epoch"], color="C3", lw=1, ls=":", label=label)
    ax_acc.set(title="accuracy", xlabel="epoch", ylabel="%")
    xs = [r["step"] for r in steps]
    ax_lr.plot(xs, [r["lr"] for r in steps], color="C2")
    ax_lr.set(title="learning rate", xlabel="step", ylabel="LR")
    ax_mom.plot(xs, [r["momentum"] for r in steps], color="C4")
    ax_mom.set(title="momentum", xlabel="step", ylabel="momentum")
    for r in metrics[:-1]:  # epoch boundaries
        for ax in (ax_lr, ax_mom):
            ax.axvline(r["step"], color="0.8", lw=0.8, zorder=0)
    for ax in (ax_loss, ax_acc, ax_lr, ax_mom):
        ax.grid(True, alpha=0.3)
        if epochs and ax in (ax_loss, ax_acc):
            ax.set_xticks(_epoch_ticks(epochs))
            ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _loss_scale(ax, values: Sequence[float]) -> None:
    """A log axis when the losses span more than 10x (one diverging epoch would otherwise
    flatten every other point), with plain numbers on it."""
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if positive and max(positive) > 10 * min(positive):
        from matplotlib.ticker import LogFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))


def _epoch_ticks(epochs: Sequence[int], most: int = 15) -> list[int]:
    """Whole epochs, at most `most` of them."""
    stride = max(1, math.ceil(len(epochs) / most))
    return list(epochs)[::stride]


def save_comparison(
    runs: dict[str, Sequence[dict]],
    path: str | os.PathLike,
    size: tuple[int, int] = COMPARE_SIZE,
) -> Path:
    """Val top-1, val loss and train loss per epoch of several runs, overlaid."""
    fig = _figure(size)
    ax_top1, ax_val, ax_train = fig.subplots(1, 3)
    for i, (name, metrics) in enumerate(runs.items()):
        epochs = [r["epoch"] for r in metrics]
        color = f"C{i % 10}"
        ax_top1.plot(epochs, [r["val_top1"] for r in metrics], "o-", color=color, label=name)
        ax_val.plot(epochs, [r["val_loss"] for r in metrics], "o-", color=color, label=name)
        ax_train.plot(epochs, [r["train_loss"] for r in metrics], "o-", color=color, label=name)
    ax_top1.set(title="val top-1", xlabel="epoch", ylabel="%")
    ax_val.set(title="val loss", xlabel="epoch", ylabel="cross-entropy")
    ax_train.set(title="train loss", xlabel="epoch", ylabel="cross-entropy")
    every = [r for m in runs.values() for r in m]
    _loss_scale(ax_val, [r["val_loss"] for r in every])
    _loss_scale(ax_train, [r["train_loss"] for r in every])
    for ax in (ax_top1, ax_val, ax_train):
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, cols) of a near-square grid holding `count` tiles."""
    cols = math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


def grid_size_px(count: int) -> tuple[int, int]:
    """(width, height) in pixels of save_grid's PNG for `count` tiles."""
    rows, cols = grid_shape(count)
    return round(cols * TILE_IN * DPI), round(rows * (TILE_IN + TITLE_IN) * DPI)


def save_grid(images: np.ndarray, titles: Sequence[str], path: str | os.PathLike) -> Path:
    """uint8 images (N, H, W, 3), one titled tile each, pixels shown unsmoothed."""
    rows, cols = grid_shape(len(images))
    fig = _figure(grid_size_px(len(images)))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, img, title in zip(axes, images, titles, strict=False):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.96, wspace=0.05, hspace=0.25)
    return _save(fig, path)
