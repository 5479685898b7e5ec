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
    monkeypatch.setattr(heap, "_libc", lambda: None)
    assert heap.keep_big_blocks_mapped() is False


def test_big_blocks_are_mapped_and_given_back_whole() -> None:
    """With the threshold fixed, a freed 24 MiB block leaves RSS: glibc's default would
    raise its threshold to 24 MiB on that free and keep the next such block in the heap
    (checked by hand: 0 MiB returned on the second and third frees)."""
    import ctypes

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    assert heap.keep_big_blocks_mapped() is True

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    size = 24 << 20
    for _ in range(3):  # freed and allocated again: each time a mapping of its own
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)  # touched: counted in RSS
        held = rss()
        libc.free(block)
        assert held - rss() >= size * 0.9
