"""train.compile: one static graph per input shape, counted and timed.

`torch.compile` is asked for static shapes (`dynamic=False`): without it, the second
resolution of progressive resizing makes dynamo recompile the network for symbolic sizes
("automatic dynamic shapes"), whose kernels are slower and which it may recompile again.
With it, each training resolution and the evaluation resolution get a graph of their own,
compiled once when first met, and used again whenever that size comes back.

Shapes that would add a graph each and are avoided instead: the last, partial batch of
validation (rn50.train.evaluate pads it to the full batch), and the last, partial batch of
training (the training loader drops it). A training batch that lost images to unreadable
files runs eagerly (`eager(model)`), so a bad file costs no compilation either.

`CompileWatch` counts the graphs dynamo compiles (torch._dynamo.utils.counters
["stats"]["unique_graphs"]) while the first call at each shape runs, and logs the time:
"compiled for 160 px (training) in 41.2 s (graph 1 of 3)".
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from rn50.train.device_sync import synchronize

COMPILE_OPTIONS: dict = {"dynamic": False}
"""What `compile_module` passes to torch.compile (tests add backend="eager": dynamo still
captures and counts each graph, without Inductor's minutes of C++ compilation)."""


def compile_module(model: nn.Module, graphs: int = 0) -> None:
    """Compile `model` in place (nn.Module.compile: its state_dict keys stay plain) for static
    shapes. `graphs`: how many distinct shapes the run will call it with; dynamo's
    recompile limit (8 a function by default, after which it falls back to eager for new
    shapes) is raised to hold them all."""
    import torch._dynamo

    cfg = torch._dynamo.config
    if graphs + 2 > cfg.cache_size_limit:
        cfg.cache_size_limit = graphs + 2
    model.compile(**COMPILE_OPTIONS)


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far (all functions together)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def is_compiled(model: nn.Module) -> bool:
    """Whether `model` (or the module DDP wraps) was compiled in place by `compile_module`."""
    inner = getattr(model, "module", model)
    return getattr(inner, "_compiled_call_impl", None) is not None


@contextlib.contextmanager
def eager(model: nn.Module):
    """A context in which `model` (compiled by `compile_module`, or a wrapper of it such as
    DDP) runs its plain Python code (no compilation, no guard check): for a batch of an odd
    size. torch >= 2.6: `torch.compiler.set_stance("force_eager")`; older torch has no
    stance, so each compiled submodule's compiled call is put aside for the context (what
    `nn.Module.compile` set; its graphs stay cached for after)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is not None:
        with set_stance("force_eager"):
            yield
        return
    saved = [
        (m, m._compiled_call_impl)
        for m in model.modules()
        if getattr(m, "_compiled_call_impl", None) is not None
    ]
    for m, _ in saved:
        m._compiled_call_impl = None
    try:
        yield
    finally:
        for m, impl in saved:
            m._compiled_call_impl = impl


def expected_graphs(train_resolutions: Iterable[int]) -> int:
    """The graphs a compiled run needs: one per training resolution, one for evaluation (its
    last batch padded to the full size)."""
    return len(set(train_resolutions)) + 1


class CompileWatch:
    """Times the first call of a compiled model at each shape and logs what dynamo compiled.

    `first(key)` wraps a call: the first time for a `key` (e.g. "160 px (training)") it
    waits for the device, times the call, counts the graphs compiled meanwhile, and logs
    "compiled for KEY in S s (graph N of EXPECTED)"; later times it does nothing.
    `graphs` is the total counted; `times` maps each key to its seconds.
    Disabled (`enabled=False`) it does nothing at all.
    """

    def __init__(
        self, enabled: bool, expected: int, log: Callable[[str], None], device: torch.device
    ):
        self.enabled, self.expected, self.log, self.device = enabled, expected, log, device
        self.graphs = 0
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def first(self, key: str):
        """A context around a call with the shape named `key`: the first such call (where
        torch.compile compiles) is timed, and its new graphs counted and logged."""
        if not self.enabled or key in self.times:
            yield
            return
        synchronize(self.device)
        before, t0 = graphs_compiled(), time.perf_counter()
        yield
        synchronize(self.device)
        seconds = time.perf_counter() - t0
        new = graphs_compiled() - before
        self.times[key] = seconds
        if new:
            first = self.graphs + 1
            self.graphs += new
            which = f"graph {first}" if new == 1 else f"graphs {first}-{self.graphs}"
            self.log(f"compiled for {key} in {seconds:.1f} s ({which} of {self.expected})")
        else:
            self.log(f"{key}: no new graph (compiled before)")
