"""The inference gate: queries take the next turn, indexing batches are never starved."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from embeddings.gate import InferenceGate


def _wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def _waiter(gate: InferenceGate, name: str, query: bool, order: list[str]) -> threading.Thread:
    def run() -> None:
        with gate.turn(query=query):
            order.append(name)

    t = threading.Thread(target=run, name=name)
    t.start()
    return t


def _hold(gate: InferenceGate, query: bool = False) -> tuple[threading.Event, threading.Thread]:
    """A thread holding the gate until the returned event is set."""
    entered, release = threading.Event(), threading.Event()

    def run() -> None:
        with gate.turn(query=query):
            entered.set()
            release.wait(10)

    t = threading.Thread(target=run)
    t.start()
    assert entered.wait(10)
    return release, t


def test_a_waiting_query_goes_before_a_waiting_batch() -> None:
    gate = InferenceGate()
    order: list[str] = []
    release, holder = _hold(gate)
    threads = [_waiter(gate, "batch", False, order)]
    _wait_until(lambda: gate._batches_waiting == 1)
    threads += [_waiter(gate, f"q{i}", True, order) for i in range(3)]
    _wait_until(lambda: gate._queries_waiting == 3)
    release.set()
    for t in [holder, *threads]:
        t.join(10)
    assert order[-1] == "batch"
    assert sorted(order[:3]) == ["q0", "q1", "q2"]


def test_batches_get_a_turn_after_a_bounded_streak_of_queries() -> None:
    gate = InferenceGate(max_query_streak=2)
    order: list[str] = []
    release, holder = _hold(gate, query=True)
    threads = [_waiter(gate, "batch", False, order)]
    _wait_until(lambda: gate._batches_waiting == 1)
    threads += [_waiter(gate, f"q{i}", True, order) for i in range(5)]
    _wait_until(lambda: gate._queries_waiting == 5)
    release.set()
    for t in [holder, *threads]:
        t.join(10)
    assert len(order) == 6
    assert order.index("batch") == 2  # two queries, then the batch, then the rest


def test_one_inference_at_a_time() -> None:
    gate = InferenceGate()
    inside = 0
    peak = 0
    lock = threading.Lock()

    def work(query: bool) -> None:
        nonlocal inside, peak
        for _ in range(50):
            with gate.turn(query=query):
                with lock:
                    inside += 1
                    peak = max(peak, inside)
                time.sleep(0.0005)
                with lock:
                    inside -= 1

    threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert peak == 1
    assert gate._queries_waiting == gate._batches_waiting == 0
