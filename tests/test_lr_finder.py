"""The LR range test: sweep formula, suggestion rules on known curves, untouched weights."""

import math
import re

import pytest
import torch
from PIL import Image

from rn50.config import LRFinderConfig
from rn50.model import build_model
from rn50.runlog import ConsoleLog, read_metrics
from rn50.train.loaders import load_index, train_loader
from rn50.train.loop import fit
from rn50.train.lr_finder import lr_find, range_test, suggest, sweep_lr
from rn50.train.resume import initial_weights
from rn50.train.runtime import make_runtime
from tests.conftest import tiny_config


def synthetic_curve(n=120, spike=True, nan_tail=True):
    """Loss vs LR over 1e-5..10: a plateau at 2.3, a sigmoid descent (in log10 LR) to 0.3
    centred at LR 1e-2 (its steepest point), a minimum near 1e-1, then a blow-up."""
    lrs = [1e-5 * (10 / 1e-5) ** (i / (n - 1)) for i in range(n)]
    losses = []
    for lr in lrs:
        x = math.log10(lr)
        loss = 0.3 + 2.0 / (1 + math.exp(4 * (x + 2)))  # centre at log10 = -2
        if x > -0.8:
            loss += 5 * (x + 0.8) ** 2  # divergence above LR ~0.16
        losses.append(loss)
    if spike:
        losses[4] = 9.0  # an early spike: the classic way to fool a finder
        losses[5] = 7.5
    if nan_tail:
        losses[-8:] = [float("nan")] * 8
    return lrs, losses


@pytest.mark.parametrize("spike, nan_tail", [(False, False), (True, True)])
def test_steepest_rule_finds_the_steepest_point(spike, nan_tail):
    lrs, losses = synthetic_curve(spike=spike, nan_tail=nan_tail)
    lr, i = suggest(lrs, losses, LRFinderConfig(rule="steepest", smooth_beta=0.9))
    assert lr == lrs[i]
    assert 1e-2 / 1.5 < lr < 1e-2 * 1.5, lr  # within about one grid step of the answer


def test_minimum_rule_is_the_minimum_over_divisor():
    lrs, losses = synthetic_curve()
    lr, i = suggest(lrs, losses, LRFinderConfig(rule="minimum", min_divisor=10))
    x = math.log10(lrs[i])
    assert -1.4 < x < -0.6, x  # the minimum of the curve, between the descent and blow-up
    assert lr == pytest.approx(lrs[i] / 10)


def test_too_short_a_curve_is_an_error():
    with pytest.raises(ValueError, match="fewer than 5 usable points"):
        suggest([1e-3, 1e-2, 1e-1], [2.0, float("nan"), 1.0], LRFinderConfig())


def finder_config(tiny_data, run_dir, **lr_finder):
    settings = {"start_lr": 1e-5, "end_lr": 1.0, "num_iter": 12, "diverge_factor": 1e9}
    settings.update(lr_finder)
    return tiny_config(tiny_data, run_dir, model={"arch": "resnet18"}, lr_finder=settings,
                       train={"precision": "fp32"})


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_sweep_lrs_follow_the_formula_and_weights_stay(tiny_data, tmp_path, precision):
    cfg = finder_config(tiny_data, tmp_path / "run")
    cfg.train.precision = precision
    rt = make_runtime(cfg)
    index = load_index(cfg.data, cfg.model.num_classes)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sweep = range_test(model, train_loader(cfg.data, index, 0, rt), cfg, rt)
    # 48 images / batch 8 = 6 batches an epoch: 12 steps cross an epoch boundary.
    # fp16's overflowing steps are skipped, and must not poison the ones after them.
    assert len(sweep.lrs) + sweep.skipped == 12 and sweep.stop_reason == "finished"
    assert len(sweep.lrs) >= 6
    if precision != "fp16":
        expected = [1e-5 * (1.0 / 1e-5) ** (i / 11) for i in range(12)]
        assert sweep.lrs == pytest.approx(expected, rel=1e-12)
        assert sweep.lrs == pytest.approx([sweep_lr(i, cfg.lr_finder) for i in range(12)])
    else:  # skipped (overflowing) steps leave gaps, never spikes
        assert all(lr in [sweep_lr(i, cfg.lr_finder) for i in range(12)] for lr in sweep.lrs)
    assert all(math.isfinite(x) for x in sweep.losses)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"range test changed {k}"


def test_lr_find_writes_plot_and_csv_and_keeps_initial_weights(tiny_data, tmp_path):
    cfg = finder_config(tiny_data, tmp_path / "run")
    result = lr_find(cfg)
    stem = r"lr_finder_\d{8}_\d{6}_start1e-05_end1_iter12"
    assert re.fullmatch(stem + r"\.png", result.plot.name), result.plot.name
    assert re.fullmatch(stem + r"\.csv", result.csv.name), result.csv.name
    rows = result.csv.read_text().splitlines()
    assert rows[0] == "step,lr,loss,smoothed_loss" and len(rows) == 1 + len(result.sweep.lrs)
    img = Image.open(result.plot)
    assert img.size == (800, 500) and len(img.convert("L").getcolors(65536) or []) > 20
    # The initial weights lr-find saved are the seed's init, untouched by the sweep.
    torch.manual_seed(cfg.train.seed)
    fresh = build_model(cfg.model)
    saved = build_model(cfg.model)
    initial_weights(saved, cfg.train, ConsoleLog())
    for k, v in fresh.state_dict().items():
        assert torch.equal(saved.state_dict()[k], v), k


def test_auto_max_lr_runs_the_finder_once_then_resumes_with_it(tiny_data, tmp_path, capsys):
    cfg = finder_config(tiny_data, tmp_path / "run")
    cfg.optim.max_lr = "auto"
    cfg.train.epochs = 1
    fit(cfg)
    out = capsys.readouterr().out
    chosen = float(re.search(r"Suggested max_lr: (\S+) ", out).group(1))
    assert re.search(r"LR finder plot: .*lr_finder_.*\.png", out)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert re.search(r"max_lr: \d", saved), "the resolved config must hold the number"
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[0]["epoch"] == 1
    # Starting the same run again must not rerun the sweep: it takes the value chosen at the
    # start, stored in the checkpoint's config.
    cfg2 = finder_config(tiny_data, tmp_path / "run")
    cfg2.optim.max_lr = "auto"
    cfg2.train.epochs = 1
    fit(cfg2)
    out = capsys.readouterr().out
    assert "LR range test" not in out
    assert f"max_lr: auto -> {chosen:.4g} (chosen when this run started)" in out
