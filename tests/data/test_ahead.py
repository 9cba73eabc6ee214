"""rn50.data.ahead: order, how far ahead the thread works, errors, closing early."""

import threading
import time

import pytest

from rn50.data.ahead import ahead


class Recorder:
    """`work` that notes which thread ran it and how far ahead of the consumer it got."""

    def __init__(self):
        self.done: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, item: int) -> int:
        self.threads.add(threading.current_thread().name)
        self.done.append(item)
        return item * item


def wait_until(condition, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not condition() and time.monotonic() < end:
        time.sleep(0.01)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_results_come_in_order(depth):
    work = Recorder()
    assert list(ahead(range(50), work, depth)) == [i * i for i in range(50)]
    assert work.done == list(range(50))


def test_depth_zero_works_in_the_callers_thread_and_only_when_asked():
    work = Recorder()
    it = ahead(range(10), work, 0)
    assert next(it) == 0 and next(it) == 1
    assert work.done == [0, 1]
    assert work.threads == {threading.current_thread().name}


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_the_thread_works_at_most_depth_items_ahead(depth):
    # After the consumer took k results: `depth` wait in the queue and one more is done and
    # waiting for room; no further.
    work = Recorder()
    it = ahead(range(100), work, depth, name="test-ahead")
    for taken in range(1, 4):
        assert next(it) == (taken - 1) ** 2
        wait_until(lambda taken=taken: len(work.done) >= taken + depth + 1)
        time.sleep(0.1)  # room for a thread that would run further ahead
        assert len(work.done) == taken + depth + 1
    assert work.threads == {"test-ahead"}
    it.close()


def test_the_context_is_entered_in_the_thread():
    seen = []

    class Context:
        def __enter__(self):
            seen.append(("enter", threading.current_thread().name))

        def __exit__(self, *exc):
            seen.append(("exit", threading.current_thread().name))

    assert list(ahead(range(3), lambda x: x, 2, Context, name="ctx")) == [0, 1, 2]
    assert seen == [("enter", "ctx"), ("exit", "ctx")]


@pytest.mark.parametrize("depth", [0, 2])
def test_an_error_in_work_arrives_after_the_items_before_it(depth):
    def work(item):
        if item == 3:
            raise ValueError("bad item 3")
        return item

    got = []
    with pytest.raises(ValueError, match="bad item 3"):
        for x in ahead(range(10), work, depth):
            got.append(x)
    assert got == [0, 1, 2]


def test_an_error_in_the_items_arrives_too():
    def items():
        yield 1
        yield 2
        raise OSError("worker died")

    got = []
    with pytest.raises(OSError, match="worker died"):
        for x in ahead(items(), lambda x: x, 2):
            got.append(x)
    assert got == [1, 2]


def test_closing_early_stops_the_thread():
    work = Recorder()
    for x in ahead(iter(range(10_000)), work, 2, name="stop-me"):
        if x == 4:  # 2 * 2
            break
    # The generator is closed at the break: the thread has been joined.
    assert not [t for t in threading.enumerate() if t.name == "stop-me"]
    done = len(work.done)
    assert done <= 3 + 2 + 1
    time.sleep(0.1)
    assert len(work.done) == done


def test_an_error_in_the_consumer_stops_the_thread():
    work = Recorder()
    with pytest.raises(KeyError):
        for x in ahead(range(10_000), work, 3, name="consumer-fails"):
            if x == 9:
                raise KeyError(x)
    assert not [t for t in threading.enumerate() if t.name == "consumer-fails"]
    assert len(work.done) <= 4 + 3 + 1
