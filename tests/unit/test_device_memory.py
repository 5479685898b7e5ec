"""GPU memory: the per-process cap, the allocator's figures in /metrics, and a torch
out-of-memory error turned into the one the batch queue splits on. CUDA is faked:
these run on CPU; the gpu-marked tests run the same paths on a card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from squeezer.backends import device as dev
from squeezer.backends import load_backend
from squeezer.errors import DeviceOutOfMemoryError
from squeezer.server.metrics import Metrics

GiB = 1 << 30


class FakeCuda:
    """The few ``torch.cuda`` calls squeezer makes, recorded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fractions: list[tuple[float, int]] = []
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "set_per_process_memory_fraction", self._cap)
        monkeypatch.setattr(cuda, "memory_allocated", lambda i: (i + 1) * GiB)
        monkeypatch.setattr(cuda, "memory_reserved", lambda i: (i + 2) * GiB)
        props = type("Props", (), {"total_memory": 80 * GiB})
        monkeypatch.setattr(cuda, "get_device_properties", lambda i: props)

    def _cap(self, fraction: float, index: int) -> None:
        self.fractions.append((fraction, index))


def test_the_cap_applies_to_the_named_cuda_device_only(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCuda(monkeypatch)
    dev.cap_gpu_memory("cpu", 0.5)
    dev.cap_gpu_memory("cuda:1", 0.5)
    dev.cap_gpu_memory("cuda", 0.8)
    assert fake.fractions == [(0.5, 1), (0.8, 0)]


def test_memory_of_each_distinct_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeCuda(monkeypatch)
    memory = dev.gpu_memory(["cpu", "cuda:1", "cuda:0", "cuda:1"], 0.5)
    assert memory == [
        dev.DeviceMemory("cuda:0", allocated=GiB, reserved=2 * GiB, limit=40 * GiB),
        dev.DeviceMemory("cuda:1", allocated=2 * GiB, reserved=3 * GiB, limit=40 * GiB),
    ]
    assert dev.gpu_memory(["cpu"], 0.5) == []


def test_metrics_export_allocated_reserved_and_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeCuda(monkeypatch)
    metrics = Metrics()
    metrics.set_gpu_memory(dev.gpu_memory(["cuda:0"], 0.9))
    samples = {
        (s.name, s.labels["device"]): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
        if s.name.startswith("squeezer_gpu_memory")
    }
    assert samples == {
        ("squeezer_gpu_memory_allocated_bytes", "cuda:0"): GiB,
        ("squeezer_gpu_memory_reserved_bytes", "cuda:0"): 2 * GiB,
        ("squeezer_gpu_memory_limit_bytes", "cuda:0"): int(80 * GiB * 0.9),
    }


def test_torch_out_of_memory_becomes_the_error_the_queue_splits_on(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = load_backend("torch", tiny_bert, device="cpu", dtype="float32")
    emptied: list[bool] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))

    def no_room(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(backend, "_forward", no_room)
    ids = np.ones((8, 5), dtype=np.int64)
    with pytest.raises(DeviceOutOfMemoryError, match=r"shape \(8, 5\) did not fit"):
        backend.forward({"input_ids": ids, "attention_mask": ids})
    assert emptied == [True]  # the failed pass's blocks go back before the retry


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA path")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_a_cuda_device_without_cuda_is_a_clear_start_up_error(device: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from squeezer.cli import app

    with pytest.raises(ValueError, match="sees no CUDA device; use --device cpu or auto"):
        dev.resolve_device(device)
    r = CliRunner().invoke(app, ["serve", "--device", device, "--port", "1"])
    assert r.exit_code == 2  # a usage error: nothing was loaded, no traceback
    assert "Invalid value for --device" in r.output and "sees no CUDA device" in r.output
    assert "Traceback" not in r.output
    r = CliRunner().invoke(app, ["optimize", "x", "--device", device])  # the search too
    assert r.exit_code == 2 and "sees no CUDA device" in r.output


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda0:1", "mps"])
def test_device_names_are_checked(device: str) -> None:
    with pytest.raises(ValueError, match="expected auto, cpu, cuda or cuda:N"):
        dev.resolve_device(device)
    assert dev.resolve_device("cpu") == "cpu"
