"""The LR schedules (one-cycle; cosine after a linear warm-up) against their formulas and torch's
own chain, and the weight-decay groups of each optim.no_decay_rule."""

import math

import pytest
import torch

from rn50.config import ModelConfig, OptimConfig
from rn50.model import build_model
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


# -- weight-decay rules (optim.no_decay_rule) ------------------------------------------------

# torchvision's ResNet-50: 53 convolutions (no biases), 53 BatchNorms, fc; blocks per stage.
STAGES = {1: 3, 2: 4, 3: 6, 4: 3}
WB = ("weight", "bias")
NAMED_BN = {f"bn1.{w}" for w in WB} | {
    f"layer{s}.{b}.bn{i}.{w}" for s, n in STAGES.items() for b in range(n) for i in (1, 2, 3)
    for w in WB
}
DOWNSAMPLE_BN = {f"layer{s}.0.downsample.1.{w}" for s in STAGES for w in WB}


def groups_by_name(model, rule: str) -> tuple[set[str], set[str]]:
    """(decayed, not decayed) parameter names of build_optimizer's groups for `rule`."""
    names = {id(p): n for n, p in model.named_parameters()}
    c = OptimConfig(weight_decay=5e-5, no_decay_rule=rule)
    decay, no_decay = build_optimizer(model, c).param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (5e-5, 0.0)
    return {names[id(p)] for p in decay["params"]}, {names[id(p)] for p in no_decay["params"]}


@pytest.mark.parametrize("blurpool", [False, True])
def test_ffcv_rule_exempts_names_with_bn(blurpool):
    """FFCV's create_optimizer: no decay exactly on names containing "bn", i.e. the 49
    BatchNorms named bn*, not the 4 downsample BatchNorms nor the fc bias. BlurPool's filters
    are buffers and its convolutions are named ...conv.weight: the groups do not change."""
    model = build_model(ModelConfig(arch="resnet50", blurpool=blurpool))
    decay, no_decay = groups_by_name(model, "bn_name")
    assert no_decay == NAMED_BN and len(no_decay) == 98
    assert DOWNSAMPLE_BN | {"fc.weight", "fc.bias"} <= decay and len(decay) == 161 - 98
    assert decay == {n for n, _ in model.named_parameters()} - NAMED_BN


def test_1d_rule_exempts_every_batchnorm_and_the_fc_bias():
    model = build_model(ModelConfig(arch="resnet50"))
    decay, no_decay = groups_by_name(model, "1d")
    assert no_decay == NAMED_BN | DOWNSAMPLE_BN | {"fc.bias"} and len(no_decay) == 107
    assert len(decay) == 54 and "fc.weight" in decay  # 53 convolutions and fc.weight


def test_norm_rule_is_torchvisions_split():
    """--norm-weight-decay 0 in torchvision's references: the normalization layers' parameters
    (torchvision.ops._utils.split_normalization_params' first list), the fc bias decayed."""
    from torchvision.ops._utils import split_normalization_params

    model = build_model(ModelConfig(arch="resnet50"))
    decay, no_decay = groups_by_name(model, "norm")
    names = {id(p): n for n, p in model.named_parameters()}
    norm, other = split_normalization_params(model)
    assert no_decay == {names[id(p)] for p in norm} == NAMED_BN | DOWNSAMPLE_BN
    assert decay == {names[id(p)] for p in other} and "fc.bias" in decay


# -- cosine with linear warm-up (optim.schedule: cosine) ---------------------------------------


def torch_chain(opt, total: int, warmup: int, start: float):
    """torchvision's references/classification schedule, built here on its own."""
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup)
    linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=start, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(opt, [linear, cosine], milestones=[warmup])


def warmup_cosine(step: int, total: int, warmup: int, peak: float, start: float) -> float:
    """The same schedule written out: linear from start x peak, then half a cosine to 0."""
    if step < warmup:
        return peak * (start + (1 - start) * step / warmup)
    return peak * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2


def test_cosine_lr_at_every_step_is_torchs_chain():
    c = OptimConfig(schedule="cosine", max_lr=0.5, warmup_epochs=2, warmup_decay=0.01,
                    momentum=0.9)
    steps_per_epoch, total = 5, 40
    opt = build_optimizer(torch.nn.Linear(2, 2), c)
    sched = build_scheduler(opt, c, total, steps_per_epoch)
    ref_opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.5, momentum=0.9)
    ref = torch_chain(ref_opt, total, 2 * steps_per_epoch, 0.01)
    assert sched.total_steps == total
    for step in range(total):
        assert current_lr(opt) == current_lr(ref_opt), step
        assert current_lr(opt) == pytest.approx(warmup_cosine(step, total, 10, 0.5, 0.01))
        assert current_momentum(opt) == 0.9 and sched.last_epoch == step
        for o, s in ((opt, sched), (ref_opt, ref)):
            o.step()
            s.step()
    # Landmarks, by hand: 0.005 at the start, 0.5 after 10 steps, 0.25 halfway down (step 25).
    assert warmup_cosine(0, total, 10, 0.5, 0.01) == pytest.approx(0.005)
    assert warmup_cosine(10, total, 10, 0.5, 0.01) == pytest.approx(0.5)
    assert warmup_cosine(25, total, 10, 0.5, 0.01) == pytest.approx(0.25)


def test_cosine_without_warmup():
    c = OptimConfig(schedule="cosine", max_lr=0.2, warmup_epochs=0)
    opt = build_optimizer(torch.nn.Linear(2, 2), c)
    sched = build_scheduler(opt, c, 12, steps_per_epoch=3)
    lrs = []
    for _ in range(12):
        lrs.append(current_lr(opt))
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1 * (1 + math.cos(math.pi * s / 12)) for s in range(12)])


def test_cosine_resumes_exactly_and_refuses_the_other_schedule(tmp_path):
    """A saved cosine schedule (through torch.save and weights_only loading, as checkpoints
    go) continues step for step; a one-cycle state does not load into it, nor it into
    one-cycle: one line naming optim.schedule, not a KeyError or a silent switch."""
    from rn50.errors import CheckpointError

    c = OptimConfig(schedule="cosine", max_lr=0.5, warmup_epochs=1)

    def fresh(cfg=c):
        opt = build_optimizer(torch.nn.Linear(2, 2), cfg)
        return opt, build_scheduler(opt, cfg, 20, steps_per_epoch=4)

    opt, sched = fresh()
    straight = []
    for _ in range(19):
        opt.step()
        sched.step()
        straight.append(current_lr(opt))
    opt, sched = fresh()
    resumed = []
    for _ in range(7):
        opt.step()
        sched.step()
        resumed.append(current_lr(opt))
    torch.save({"o": opt.state_dict(), "s": sched.state_dict()}, tmp_path / "s.pth")
    saved = torch.load(tmp_path / "s.pth", weights_only=True)
    assert saved["s"]["schedule"] == "cosine" and saved["s"]["total_steps"] == 20
    opt, sched = fresh()
    opt.load_state_dict(saved["o"])
    sched.load_state_dict(saved["s"])
    for _ in range(12):
        opt.step()
        sched.step()
        resumed.append(current_lr(opt))
    assert resumed == straight

    onecycle = OptimConfig(max_lr=0.5)
    other_opt, other = fresh(onecycle)
    assert other.state_dict()["schedule"] == "onecycle"
    with pytest.raises(CheckpointError, match="follows optim.schedule onecycle but this config "
                       "asks for cosine"):
        sched.load_state_dict(other.state_dict())
    with pytest.raises(CheckpointError, match="set optim.schedule=cosine to resume it"):
        other.load_state_dict(saved["s"])
    # Checkpoints from before the key: one-cycle, and they still load.
    legacy = {k: v for k, v in other.state_dict().items() if k != "schedule"}
    fresh(onecycle)[1].load_state_dict(legacy)


def test_schedule_keys_are_checked():
    from rn50.config import load_config
    from rn50.errors import ConfigError

    with pytest.raises(ConfigError, match="optim.schedule must be one of onecycle, cosine"):
        load_config(None, ["optim.schedule=step"])
    with pytest.raises(ConfigError, match="optim.warmup_epochs must be 0 or more and fewer "
                       "than train.epochs"):
        load_config(None, ["optim.schedule=cosine", "train.epochs=5", "optim.warmup_epochs=5"])
    with pytest.raises(ConfigError, match="optim.warmup_decay must be in"):
        load_config(None, ["optim.schedule=cosine", "optim.warmup_decay=0"])
    with pytest.raises(ConfigError, match="optim.no_decay_rule must be one of 1d, bn_name"):
        load_config(None, ["optim.no_decay_rule=bn"])


def test_cosine_trains_and_a_run_keeps_its_schedule(demo48, tmp_path):
    """optim.schedule cosine in a run: steps.jsonl's LR at every step follows the formula
    (warm-up over epoch 1's 6 steps); resuming that run dir with one-cycle is refused."""
    from rn50.errors import CheckpointError
    from rn50.runlog import read_metrics
    from rn50.train.loop import Trainer
    from tests.conftest import demo48_config

    optim = {"schedule": "cosine", "warmup_epochs": 1, "warmup_decay": 0.1}
    cfg = demo48_config(demo48, tmp_path / "run", model={"arch": "resnet18"}, optim=optim,
                        train={"precision": "bf16"})
    record = Trainer(cfg).fit()
    assert record["epoch"] == 2 and record["step"] == 12
    steps = read_metrics(tmp_path / "run" / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 13))
    expected = [warmup_cosine(s, 12, 6, 0.05, 0.1) for s in range(12)]
    assert [s["lr"] for s in steps] == pytest.approx(expected, rel=1e-12)
    assert {s["momentum"] for s in steps} == {0.9}
    again = demo48_config(demo48, tmp_path / "run", model={"arch": "resnet18"},
                          train={"precision": "bf16"})
    with pytest.raises(CheckpointError, match="follows optim.schedule cosine"):
        Trainer(again)
