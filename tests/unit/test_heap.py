"""backends/heap.py: freed heap goes back to the OS after big requests, on the thread
that filled its arena, whether the work succeeded or was refused."""

from __future__ import annotations

import threading

import pytest

from squeezer.backends import heap


def test_trim_heap_releases_free_pages_on_glibc() -> None:
    # This machine's libc is glibc (the suite runs on Linux): the call is real.
    assert heap.trim_heap() is True


def test_trimmed_trims_after_success_and_after_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[str] = []
    monkeypatch.setattr(heap, "trim_heap", lambda: trims.append(threading.current_thread().name))

    def plan(n: int) -> int:
        if n < 0:
            raise ValueError("prompt too long")
        return n

    assert heap.trimmed(plan)(3) == 3
    with pytest.raises(ValueError, match="too long"):
        heap.trimmed(plan)(-1)
    assert trims == [threading.current_thread().name] * 2
    assert heap.trimmed(plan).__name__ == "plan"


def test_no_libc_trim_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)
    assert heap.trim_heap() is False


def test_device_threads_trim_now_and_then(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every TRIM_EVERY_S of work, not after every unit: a trim costs milliseconds."""
    from squeezer.engine import executor

    trims: list[float] = []
    monkeypatch.setattr(executor, "trim_heap", lambda: trims.append(1.0))
    clock = [1000.0]
    monkeypatch.setattr(executor.time, "monotonic", lambda: clock[0])
    device = executor.DeviceExecutor("cpu")
    for _ in range(30):  # 30 units of work, one second apart
        clock[0] += 1.0
        device._trim_now_and_then()
    assert len(trims) == 3
