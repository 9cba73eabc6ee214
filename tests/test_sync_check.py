"""train.sync_check: deferred refuses a NaN loss on the device, with no host wait a step: no
weight, momentum buffer or BatchNorm statistic changes, the skipped steps are still named and
counted, and train.max_bad_steps still stops the run."""

import pytest
import torch
from torch import nn

from rn50.checkpoint import load_checkpoint
from rn50.cli import main
from rn50.train.runtime import Runtime
from rn50.train.step import BufferGuard, DeviceGuard, PendingChecks, allow_skipped_steps, train_step
from tests.conftest import assert_same_weights, tiny_config

CPU = torch.device("cpu")
RT = Runtime(CPU, None, True)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(4, 3),
    )  # fmt: skip
    return net.to(memory_format=torch.channels_last)


class Poison:
    """A forward hook that turns the output into NaN while `on`."""

    def __init__(self):
        self.on = False

    def __call__(self, module, inputs, output):
        return output * float("nan") if self.on else output


def setup(deferred: bool):
    allow_skipped_steps()  # the schedule steps on a refused step, as in training
    net = small_net()
    poison = Poison()
    net[0].register_forward_hook(poison)  # NaN from the first layer on: BN sees it too
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    guard = DeviceGuard(net, opt) if deferred else None
    return net, opt, sched, scaler, guard, poison


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(4, 3, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
    return [(images, torch.randint(0, 3, (4,), generator=g))]


def state(net, opt) -> dict:
    out = {f"net.{k}": v.clone() for k, v in net.state_dict().items()}
    for i, p in enumerate(net.parameters()):
        buf = opt.state.get(p, {}).get("momentum_buffer")
        out[f"momentum.{i}"] = None if buf is None else buf.clone()
    return out


def step(net, opt, sched, scaler, guard, seed):
    """A step as the training loop takes it: with sync_check step, the loop's BufferGuard
    puts BatchNorm's statistics back after a refused step; deferred does it all on the
    device."""
    buffers = guard or BufferGuard(net)
    buffers.save()
    result = train_step(net, batch(seed), nn.CrossEntropyLoss(), opt, scaler, sched, RT, guard)
    if guard is None and not result.applied:
        buffers.restore()
    return result


def same(a: dict, b: dict, skip=("num_batches_tracked",)) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if k.endswith(skip):
            continue
        if a[k] is None or b[k] is None:
            assert a[k] is None and b[k] is None, k
        else:
            assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("poisoned_first", [False, True])
def test_a_poisoned_step_changes_nothing_and_matches_the_host_checked_step(poisoned_first):
    runs = {}
    for deferred in (False, True):
        net, opt, sched, scaler, guard, poison = setup(deferred)
        if not poisoned_first:
            step(net, opt, sched, scaler, guard, 1)  # momentum buffers exist from here
        before = state(net, opt)
        poison.on = True
        result = step(net, opt, sched, scaler, guard, 2)
        poison.on = False
        if deferred:
            assert isinstance(result.applied, torch.Tensor) and not result.applied.item()
        else:
            assert result.applied is False
        after = state(net, opt)
        if poisoned_first and deferred:
            # the step made the buffers; refused, they are zeros, which SGD (dampening 0)
            # reads as none: buf = 0.9 x 0 + grad
            for k in [k for k in after if k.startswith("momentum.")]:
                assert torch.equal(after[k], torch.zeros_like(after[k]))
                after[k] = None
        same(before, after)  # no weight, buffer or BN statistic moved
        assert torch.isfinite(net[1].running_mean).all()
        good = step(net, opt, sched, scaler, guard, 3)
        assert bool(good.applied)
        runs[deferred] = state(net, opt)
    same(runs[False], runs[True])  # the next good step lands on the same weights bit for bit


def test_pending_checks_read_the_flags_together():
    pending = PendingChecks(every=3)
    for i, ok in enumerate([True, False, True], start=1):
        pending.add(i, torch.tensor(ok), torch.tensor(float("nan") if not ok else 1.0))
        assert pending.due() == (i == 3)
    read = pending.read()
    assert [(s, ok) for s, ok, _ in read] == [(1, True), (2, False), (3, True)]
    assert read[1][2] != read[1][2]  # the skipped step's loss: NaN, for its warning
    assert pending.read() == [] and not pending.due()


STEPS = 6  # optimizer steps an epoch of tiny_data


def poisoned_build(monkeypatch, bad_steps):
    """Make rn50.train.loop build a network whose output is NaN at the training forward
    passes numbered in `bad_steps` (1-based, counted over the run)."""
    import rn50.train.loop as engine

    real_build = engine.build_model
    calls = {"n": 0}

    def build(cfg):
        model = real_build(cfg)

        def hook(module, inputs, output):
            if module.training and torch.is_grad_enabled():
                calls["n"] += 1
                if calls["n"] in bad_steps:
                    return output * float("nan")
            return output

        model.conv1.register_forward_hook(hook)
        return model

    monkeypatch.setattr(engine, "build_model", build)


def test_deferred_run_equals_the_host_checked_run(tiny_data, tmp_path, monkeypatch, capsys):
    from rn50.train.loop import fit

    for mode in ("step", "deferred"):
        poisoned_build(monkeypatch, {3})  # epoch 1, step 3
        cfg = tiny_config(tiny_data, tmp_path / mode, model={"arch": "resnet18"},
                          train={"epochs": 1, "sync_check": mode, "precision": "fp32"})  # fmt: skip
        record = fit(cfg)
        assert record["train_images"] == 40  # 5 of the 6 steps counted, 8 images each
        captured = capsys.readouterr()
        out = captured.out + captured.err
        assert out.count("epoch 1 step 3: loss is nan; step skipped") == 1, out
    a = load_checkpoint(tmp_path / "step" / "checkpoint_epoch_001.pth")
    b = load_checkpoint(tmp_path / "deferred" / "checkpoint_epoch_001.pth")
    assert_same_weights(a["model"], b["model"])
    assert a["metrics"]["train_loss"] == b["metrics"]["train_loss"]


def test_deferred_max_bad_steps_stops_the_run(tiny_data, tmp_path, monkeypatch, capsys):
    poisoned_build(monkeypatch, set(range(STEPS + 3, 100)))  # from epoch 2, step 3 on
    cfg = tiny_config(tiny_data, tmp_path / "run", model={"arch": "resnet18"},
                      train={"max_bad_steps": 3, "sync_check": "deferred"})  # fmt: skip
    config_file = tmp_path / "run.yaml"
    config_file.write_text(cfg.to_yaml())
    assert main(["train", "--config", str(config_file)]) == 3
    captured = capsys.readouterr()
    assert "loss was NaN/inf for 3 steps in a row (epoch 2, step 5, lr " in captured.err
    assert (captured.out + captured.err).count("step skipped") == 3
    good = load_checkpoint(tmp_path / "run" / "checkpoint_epoch_001.pth")
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


def test_sync_check_is_validated(capsys):
    assert main(["config", "--set", "train.sync_check=never"]) == 2
    assert "train.sync_check must be one of step, deferred" in capsys.readouterr().err
