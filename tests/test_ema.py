import pytest
import torch

from rn50.ema import ModelEMA


def test_ema_follows_its_formula():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    ema = ModelEMA(model, decay=0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(3.0)
    model.train()(torch.randn(4, 2))  # moves BN running stats and its integer counter
    ema.update(model)
    w = ema.module[0].weight
    assert torch.allclose(w, torch.full_like(w, 0.9 * 1.0 + 0.1 * 3.0))  # 1.2
    ema.update(model)
    assert torch.allclose(w, torch.full_like(w, 0.9 * 1.2 + 0.1 * 3.0))  # 1.38
    assert ema.module[1].num_batches_tracked.item() == 1  # integers are copied, not averaged
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_updating_every_k_steps_keeps_the_horizon():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    every_step, every_4th = ModelEMA(model, 0.99), ModelEMA(model, 0.99, every=4)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(8):
        every_step.update(model)
        every_4th.update(model)
    # Constant weights: both must have moved 1 - 0.99**8 of the way.
    expected = 1 - 0.99**8
    assert every_step.module.weight.item() == pytest.approx(expected)
    assert every_4th.module.weight.item() == pytest.approx(expected)


def test_state_round_trip():
    model = torch.nn.Linear(3, 2)
    ema = ModelEMA(model, 0.5)
    ema.update(model)
    other = ModelEMA(torch.nn.Linear(3, 2), 0.5)
    other.load_state_dict(ema.state_dict())
    assert other.steps == 1
    assert torch.equal(other.module.weight, ema.module.weight)


def test_the_fallback_form_gives_the_same_average_and_is_chosen_once(monkeypatch):
    """torch < 2.6 refuses a tensor weight in the foreach form: the first update finds that
    out, every later one lerps tensor by tensor without trying again, and both forms give
    the same average."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    fused, fallback = ModelEMA(model, 0.9), ModelEMA(model, 0.9)
    real, tries = torch._foreach_lerp_, []

    def old_torch(floats, targets, weight):
        tries.append(type(weight))
        if isinstance(weight, torch.Tensor):
            raise TypeError("_foreach_lerp_() received an invalid combination of arguments")
        return real(floats, targets, weight)

    keeps = [True, False, True, True, False, True]
    for keep in keeps:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(5, 3))
        flag = torch.tensor(keep)
        fused.update(model, keep=flag)
        monkeypatch.setattr(torch, "_foreach_lerp_", old_torch)
        fallback.update(model, keep=flag)
        monkeypatch.setattr(torch, "_foreach_lerp_", real)
    assert tries == [torch.Tensor]  # tried once, not once a step
    assert fused._foreach_works == {True: True} and fallback._foreach_works == {True: False}
    for (name, a), b in zip(fused.module.state_dict().items(),
                            fallback.module.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # A float weight (train.sync_check: step) takes the foreach form in every torch.
    monkeypatch.setattr(torch, "_foreach_lerp_", old_torch)
    fallback.update(model)
    fallback.update(model)
    assert tries == [torch.Tensor, float, float]
