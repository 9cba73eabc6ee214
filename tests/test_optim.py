"""The one-cycle schedule, checked against its formula written out independently."""

import math

import pytest
import torch

from rn50.config import OptimConfig
from rn50.optim import (
    build_optimizer,
    build_scheduler,
    current_lr,
    current_momentum,
    load_optimizer_state,
)


def expected(step: int, total: int, c: OptimConfig) -> tuple[float, float]:
    """LR and momentum at `step` (0-based) of OneCycleLR's schedule (cosine or linear
    phases, c.anneal_strategy), from the paper.

    Phase ends are at pct_start*total - 1 (and 2*pct_start*total - 2 with three phases),
    the last step is total - 1.
    """
    lo = c.max_lr / c.div_factor
    final = lo / c.final_div_factor
    up_end = c.pct_start * total - 1
    if c.three_phase:
        phases = [
            (up_end, lo, c.max_lr, c.max_momentum, c.base_momentum),
            (2 * c.pct_start * total - 2, c.max_lr, lo, c.base_momentum, c.max_momentum),
            (total - 1, lo, final, c.max_momentum, c.max_momentum),
        ]
    else:
        phases = [
            (up_end, lo, c.max_lr, c.max_momentum, c.base_momentum),
            (total - 1, c.max_lr, final, c.base_momentum, c.max_momentum),
        ]

    def cos(a, b, pct):
        if c.anneal_strategy == "linear":
            return a + (b - a) * pct
        return b + (a - b) / 2 * (1 + math.cos(math.pi * pct))

    start = 0.0
    for end, lr0, lr1, m0, m1 in phases:
        if step <= end or end == phases[-1][0]:
            pct = (step - start) / (end - start)
            return cos(lr0, lr1, pct), cos(m0, m1, pct)
        start = end
    raise AssertionError


@pytest.mark.parametrize("anneal", ["cos", "linear"])
@pytest.mark.parametrize("three_phase", [True, False])
def test_lr_and_momentum_at_every_step(three_phase, anneal):
    c = OptimConfig(
        anneal_strategy=anneal,
        max_lr=0.8,
        pct_start=0.25,
        div_factor=20,
        final_div_factor=100,
        three_phase=three_phase,
        base_momentum=0.8,
        max_momentum=0.9,
    )
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, c)
    total = 40
    sched = build_scheduler(opt, c, total)
    for step in range(total):
        lr, mom = expected(step, total, c)
        assert current_lr(opt) == pytest.approx(lr, rel=1e-9, abs=1e-12), step
        assert current_momentum(opt) == pytest.approx(mom, rel=1e-9), step
        opt.step()
        sched.step()
    # Landmarks, by hand: starts at max_lr/div, peaks at max_lr, ends at lo/final_div.
    assert expected(0, total, c)[0] == pytest.approx(0.04)
    assert expected(9, total, c)[0] == pytest.approx(0.8)
    assert expected(39, total, c)[0] == pytest.approx(0.04 / 100)
    if anneal == "linear":  # halfway up the warm-up (steps 0..9), halfway between the LRs
        assert expected(4.5, total, c)[0] == pytest.approx((0.04 + 0.8) / 2)


def test_schedule_continues_exactly_after_state_round_trip():
    c = OptimConfig(max_lr=0.5)
    total = 30

    def fresh():
        model = torch.nn.Linear(2, 2)
        opt = build_optimizer(model, c)
        return opt, build_scheduler(opt, c, total)

    opt, sched = fresh()
    straight = []
    for _ in range(total - 1):
        opt.step()
        sched.step()
        straight.append((current_lr(opt), current_momentum(opt)))

    opt, sched = fresh()
    resumed = []
    for _ in range(12):
        opt.step()
        sched.step()
        resumed.append((current_lr(opt), current_momentum(opt)))
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    opt, sched = fresh()
    opt.load_state_dict(saved_opt)
    sched.load_state_dict(saved_sched)
    for _ in range(total - 1 - 12):
        opt.step()
        sched.step()
        resumed.append((current_lr(opt), current_momentum(opt)))
    assert resumed == straight


def test_no_weight_decay_on_batchnorm_and_biases():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, bias=True),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 2),
    )
    groups = build_optimizer(model, OptimConfig(weight_decay=0.1)).param_groups
    shapes = {tuple(p.shape): g["weight_decay"] for g in groups for p in g["params"]}
    assert shapes == {(4, 3, 3, 3): 0.1, (2, 144): 0.1, (4,): 0.0, (2,): 0.0}
    assert sum(len(g["params"]) for g in groups) == 6  # conv w+b, bn w+b, fc w+b
    plain = build_optimizer(model, OptimConfig(weight_decay=0.1, no_bn_weight_decay=False))
    assert [g["weight_decay"] for g in plain.param_groups] == [0.1]


def test_fused_and_plain_sgd_take_the_same_step():
    torch.manual_seed(0)
    a = torch.nn.Linear(8, 3)
    b = torch.nn.Linear(8, 3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 8)
    for model, fused in ((a, True), (b, False)):
        opt = build_optimizer(model, OptimConfig(fused=fused), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    assert torch.allclose(a.weight, b.weight, atol=1e-6)


def test_fp16_loss_scaling_gets_an_sgd_that_honours_skipped_steps():
    # GradScaler skips a step whose gradients overflowed. A fused SGD is handed that skip and
    # still writes its momentum buffers; the plain one is not stepped at all.
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    reference = torch.nn.Linear(4, 2)
    reference.load_state_dict(model.state_dict())
    cfg = OptimConfig(fused=True, momentum=0.9, weight_decay=0.0)
    opt = build_optimizer(model, cfg, lr=0.1, loss_scaling=True)
    assert not any(g.get("fused") for g in opt.param_groups)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.ones(3, 4)
    scaler.scale(model(x).sum() * float("inf")).backward()  # every gradient inf/NaN
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**15 and opt.state_dict()["state"] == {}
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # The next step is a first step: the same as plain SGD's from the same weights.
    plain = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for m, o, s in ((model, opt, scaler), (reference, plain, None)):
        o.zero_grad()
        loss = m(x).square().sum()
        if s is None:
            loss.backward()
            o.step()
        else:
            s.scale(loss).backward()
            s.step(o)
            s.update()
    assert torch.allclose(model.weight, reference.weight, atol=1e-6)
    assert torch.allclose(model.bias, reference.bias, atol=1e-6)


def test_resuming_keeps_the_sgd_implementation_this_run_chose():
    # A bf16 run's checkpoint (fused SGD) resumed in fp16 must stay on the plain SGD.
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    fused = build_optimizer(model, OptimConfig(fused=True), lr=0.1)
    model(torch.ones(3, 4)).sum().backward()
    fused.step()
    saved = fused.state_dict()
    plain = build_optimizer(model, OptimConfig(fused=True), lr=0.5, loss_scaling=True)
    load_optimizer_state(plain, saved)
    assert not any(g.get("fused") for g in plain.param_groups)
    # everything else is the checkpoint's: the LR, the momentum buffers
    assert [g["lr"] for g in plain.param_groups] == [0.1, 0.1]
    got = plain.state_dict()["state"]
    assert got.keys() == saved["state"].keys() and len(got) == 2
    for k in got:
        assert torch.equal(got[k]["momentum_buffer"], saved["state"][k]["momentum_buffer"])
