"""train.compile in the real loop: one static graph per resolution, counted with dynamo's own
counters; validation's partial last batch padded, not recompiled.

Dynamo captures the graphs as a real compile does; the backend that runs them is "eager"
(rn50.train.compiled.COMPILE_OPTIONS), so the test costs seconds instead of Inductor's
minutes of C++ compilation on a 2-core CPU (tests/test_model_path.py trains one switch
with Inductor itself).
"""

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from rn50.runlog import read_metrics
from rn50.train import compiled
from rn50.train.loop import Trainer
from tests.conftest import demo48_config

# 2 epochs: 32 px, then 64 px; validation after each (at 64 px, in batches of 5: 5, 5 and
# a partial 2 of the 12 images).
SECTIONS = {
    "data": {"resolution": 64, "min_resolution": 32, "ramp_start_epoch": 1,
             "ramp_end_epoch": 2, "eval_resolution": 64, "eval_batch_size": 5},
    "model": {"arch": "resnet18"},
}  # fmt: skip


@pytest.fixture
def eager_backend(monkeypatch):
    monkeypatch.setitem(compiled.COMPILE_OPTIONS, "backend", "eager")
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_one_graph_per_resolution_and_none_for_the_last_val_batch(
    demo48, tmp_path, eager_backend
):
    sections = {**SECTIONS, "train": {"epochs": 2, "compile": True, "precision": "fp32"}}
    trainer = Trainer(demo48_config(demo48, tmp_path / "run", **sections))
    shapes = []
    trainer.module.register_forward_pre_hook(lambda m, args: shapes.append(args[0].shape[0]))
    trainer.fit()
    # 32 px training, 64 px training, 64 px evaluation (twice): 3 graphs.
    assert counters["stats"]["unique_graphs"] == 3
    assert trainer.compiles.graphs == 3
    assert set(trainer.compiles.times) == {
        "32 px (training)", "64 px (training)", "64 px (evaluation)"}  # fmt: skip
    # The model saw full batches only: 8 in training, 5 in evaluation (the last one padded).
    assert set(shapes) == {8, 5}
    log = next((tmp_path / "run").glob("training_log_*.txt")).read_text()
    assert "compiled for 32 px (training) in " in log and "(graph 1 of 3)" in log
    assert "compiled for 64 px (evaluation) in " in log and "(graph 3 of 3)" in log
    # Every validation image scored once, padding left out.
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["val_images"] for r in metrics] == [12, 12]
    # Another validation pass compiles nothing more.
    trainer.validate(2)
    assert counters["stats"]["unique_graphs"] == 3

    # The same run eager: the same losses and accuracies (the backend runs the captured
    # graph's own operations; padding only adds rows).
    plain = {**SECTIONS, "train": {"epochs": 2, "precision": "fp32"}}
    Trainer(demo48_config(demo48, tmp_path / "plain", **plain)).fit()
    reference = read_metrics(tmp_path / "plain" / "metrics.jsonl")
    for a, b in zip(metrics, reference, strict=True):
        for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


def test_the_padded_batch_scores_each_image_once():
    from rn50.train.evaluate import pad_batch

    images = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    padded = pad_batch(images, 5)
    assert padded.shape == (5, 3, 4, 4) and torch.equal(padded[:2], images)
    assert padded[2:].abs().sum() == 0
    assert padded.is_contiguous(memory_format=torch.channels_last)


def test_expected_graphs_and_the_recompile_limit():
    assert compiled.expected_graphs([160] * 12 + [171, 192, 192]) == 4
    cfg = torch._dynamo.config
    before = cfg.cache_size_limit  # (monkeypatch would delete torch's alias when undoing)
    try:
        cfg.cache_size_limit = 8
        compiled.compile_module(torch.nn.Linear(2, 2), graphs=12)
        assert cfg.cache_size_limit == 14
    finally:
        cfg.cache_size_limit = before


class ConvNet(torch.nn.Module):
    """A model whose forward is outside torch: torch 2.4's dynamo skips a frame of torch.nn's
    own (a bare nn.Sequential compiles no graph there), as it does not torchvision's ResNet."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3)

    def forward(self, x):
        return self.conv(x).flatten(1)


def test_a_short_training_batch_runs_eagerly(eager_backend):
    net = ConvNet()
    compiled.compile_module(net)
    assert compiled.is_compiled(net)
    net(torch.randn(4, 3, 8, 8))
    assert compiled.graphs_compiled() == 1
    with compiled.eager(net):  # a batch that lost an unreadable file
        out = net(torch.randn(3, 3, 8, 8))
    assert out.shape == (3, 72) and compiled.graphs_compiled() == 1
    net(torch.randn(3, 3, 8, 8))  # outside it, a new size is a new static graph
    assert compiled.graphs_compiled() == 2


def test_the_watch_waits_with_the_one_synchronize(monkeypatch):
    from rn50.train import device_sync, runtime

    assert runtime.synchronize is device_sync.synchronize is compiled.synchronize
    waits = []
    monkeypatch.setattr(compiled, "synchronize", waits.append)
    watch = compiled.CompileWatch(True, 1, lambda line: None, torch.device("cpu"))
    with watch.first("32 px (training)"):
        assert waits == [torch.device("cpu")]
    assert waits == [torch.device("cpu")] * 2
    with watch.first("32 px (training)"):  # timed once a shape
        pass
    assert len(waits) == 2
