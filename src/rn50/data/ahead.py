"""Work on the items of an iterator in a background thread, a few items ahead of their use.

The GPU data path uses it to decode the next batches while the training loop waits for the
device to finish a step: between steps, the loop would otherwise leave the device idle for
as long as the decoder's host work takes (parsing, Huffman decoding, queuing a few kernels
per image). Decoding releases the GIL for most of that, and the loop releases it while it
waits for the device, so the two overlap in one process.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import TypeVar

T = TypeVar("T")
U = TypeVar("U")

_ITEM, _END, _ERROR = range(3)
# How often a thread blocked on a full queue looks whether the consumer has gone.
_POLL_S = 0.05
# How long closing waits for the thread to finish the item it is on.
_JOIN_S = 60.0


def ahead(
    items: Iterable[T],
    work: Callable[[T], U],
    depth: int,
    context: Callable[[], AbstractContextManager] = nullcontext,
    name: str = "rn50-ahead",
) -> Iterator[U]:
    """Yield work(item) for each item, in order, computed in a thread up to `depth` items ahead
    of the consumer (depth 0: in the caller's thread, as it asks).

    The thread runs inside `context()` (e.g. a CUDA stream of its own). An exception raised by
    the items or by `work` is raised here, at the item where it happened. Closing the
    generator early (a `break`, an exception in the consumer) stops the thread after the item
    it is working on; nothing it had computed ahead is yielded.
    """
    if depth <= 0:
        for item in items:
            yield work(item)
        return
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                results.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            with context():
                for item in items:
                    if stop.is_set() or not put((_ITEM, work(item))):
                        return
            put((_END, None))
        except BaseException as e:  # the consumer's thread raises it
            put((_ERROR, e))

    # A daemon: a thread stuck in a hung reader must not keep the process alive at exit.
    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = results.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value
    finally:
        stop.set()
        thread.join(_JOIN_S)
