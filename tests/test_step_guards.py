"""What the step's guards keep between calls: DeviceGuard's restore uses the tensors its save
grouped (no walk over the model and the optimizer a step), and PendingChecks in step mode
keeps the host's flags as they are (no tensor made, none stacked)."""

import torch
from torch import nn

from rn50.train.step import DeviceGuard, PendingChecks, allow_skipped_steps, train_step
from tests.test_sync_check import RT, Poison, batch, same, small_net, state


def test_restore_uses_what_save_grouped(monkeypatch):
    allow_skipped_steps()
    net, poison = small_net(), Poison()
    net[0].register_forward_hook(poison)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    guard = DeviceGuard(net, opt)

    def take(seed):
        guard.save()
        return train_step(net, batch(seed), nn.CrossEntropyLoss(), opt, scaler, sched, RT, guard)

    assert len(guard.unbuffered) == 0 and guard.count == -1
    take(1)  # no momentum buffer before: the step makes them, the next save groups them
    assert len(guard.unbuffered) == len(list(net.parameters()))
    before = state(net, opt)
    real = guard._tensors
    guard.save()
    assert guard.unbuffered == []  # every parameter has its buffer now
    walks = []
    monkeypatch.setattr(guard, "_tensors", lambda: walks.append(1) or real())
    guard.save = lambda: None  # (saved just above)
    poison.on = True
    result = take(2)
    assert not result.applied.item()
    assert walks == []  # restore_unless walked nothing
    same(before, state(net, opt))  # and put every weight, buffer and statistic back


def test_step_mode_keeps_host_flags_as_they_are(monkeypatch):
    pending = PendingChecks(every=1)
    loss = torch.tensor(2.5)
    pending.add(7, True, loss)
    assert pending.flags == [True] and pending.due()

    def no_tensor(*args, **kwargs):
        raise AssertionError("a host flag was made a tensor")

    monkeypatch.setattr(torch, "stack", no_tensor)
    monkeypatch.setattr(torch, "as_tensor", no_tensor)
    (read,) = pending.read()
    assert read[:2] == (7, True) and read[2] != read[2]  # an applied step's loss: NaN, unread
    pending.add(8, False, torch.tensor(float("inf")))
    assert pending.read() == [(8, False, float("inf"))]  # a skipped step's, for its warning
    assert pending.read() == [] and not pending.due()


def test_device_and_host_flags_read_in_order():
    pending = PendingChecks(every=3)
    pending.add(1, torch.tensor(True), torch.tensor(1.0))
    pending.add(2, False, torch.tensor(float("nan")))
    pending.add(3, torch.tensor(False), torch.tensor(float("inf")))
    read = pending.read()
    assert [(s, ok) for s, ok, _ in read] == [(1, True), (2, False), (3, False)]
    assert all(type(ok) is bool for _, ok, _ in read)
    assert read[2][2] == float("inf")
