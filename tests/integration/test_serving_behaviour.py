"""Overload, deadlines, failing batches, draining, limits and metrics, in-process.

The torch backend's forward is wrapped so a test can hold the compute thread (to
queue work behind it) or make one batch fail, without timing assumptions about
the model itself.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from squeezer.backends.torch_backend import TorchBackend
from squeezer.server.app import create_app
from tests.integration.conftest import settings_for

POISON_ID = 7  # a batch whose input_ids hold this id fails in the backend


class Gate:
    """Controls the wrapped forward: hold it, or let it run."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.calls = 0


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    g = Gate()
    original = TorchBackend.forward

    def forward(self: TorchBackend, inputs: Any, outputs: Any = None) -> Any:
        g.calls += 1
        g.entered.set()
        g.release.wait(timeout=30)
        if (inputs["input_ids"] == POISON_ID).any():
            raise RuntimeError("poisoned batch")
        return original(self, inputs, outputs)

    monkeypatch.setattr(TorchBackend, "forward", forward)
    yield g
    g.release.set()


async def _wait(event: threading.Event) -> None:
    for _ in range(3000):
        if event.is_set():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("event never set")


async def hold_worker(client: Any, gate: Gate, text: str) -> asyncio.Task[Any]:
    """Send one request and return once its forward pass holds the compute thread."""
    gate.release.clear()
    gate.entered.clear()
    task = asyncio.create_task(client.post("/embed", json={"inputs": text}))
    await _wait(gate.entered)
    return task


async def test_overload_gets_429_with_retry_after(
    tiny_bert: Path, gate: Gate, make_async_client: Any
) -> None:
    client = await make_async_client(
        settings_for({"tiny": tiny_bert}, max_concurrent_requests=2, warmup=False)
    )
    first = await hold_worker(client, gate, "one")
    second = asyncio.create_task(client.post("/embed", json={"inputs": "two"}))
    await asyncio.sleep(0.05)
    r = await client.post("/embed", json={"inputs": "three"})
    assert r.status_code == 429
    assert r.json()["error_type"] == "Overloaded" and int(r.headers["retry-after"]) >= 1
    r = await client.post("/v1/embeddings", json={"input": "three"})
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
    gate.release.set()
    assert (await first).status_code == 200 and (await second).status_code == 200
    assert (await client.post("/embed", json={"inputs": "after"})).status_code == 200


async def test_a_request_that_expires_in_the_queue_is_answered_not_computed(
    tiny_bert: Path, gate: Gate, make_async_client: Any
) -> None:
    client = await make_async_client(
        settings_for({"tiny": tiny_bert}, request_timeout=0.2, warmup=False)
    )
    first = await hold_worker(client, gate, "holds the worker")
    late = asyncio.create_task(client.post("/embed", json={"inputs": "waits too long"}))
    await asyncio.sleep(0.5)  # past the 0.2 s deadline while the worker is held
    calls_before = gate.calls
    gate.release.set()
    r = await late
    assert r.status_code == 504 and r.json()["error_type"] == "Overloaded"
    assert gate.calls == calls_before  # never reached the backend
    assert (await first).status_code == 200  # dispatched before its deadline: completes


async def test_a_failing_batch_fails_only_its_requests(
    tiny_bert: Path, gate: Gate, make_async_client: Any
) -> None:
    client = await make_async_client(settings_for({"tiny": tiny_bert}, warmup=False))
    r = await client.post("/embed", json={"inputs": [[2, POISON_ID, 3]]})
    assert r.status_code == 424
    assert r.json()["error_type"] == "Backend" and "poisoned batch" in r.json()["error"]
    r = await client.post("/v1/embeddings", json={"input": [[2, POISON_ID, 3]]})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert (await client.post("/embed", json={"inputs": [[2, 8, 3]]})).status_code == 200


async def test_drain_refuses_new_work_and_finishes_accepted_work(
    tiny_bert: Path, gate: Gate, make_async_client: Any
) -> None:
    client = await make_async_client(settings_for({"tiny": tiny_bert}, warmup=False))
    runtime = client._transport.app.state.runtime  # type: ignore[attr-defined]
    accepted = await hold_worker(client, gate, "accepted")
    await runtime.begin_drain()
    assert (await client.get("/ready")).status_code == 503
    assert (await client.get("/health")).status_code == 200
    r = await client.post("/embed", json={"inputs": "too late"})
    assert r.status_code == 503 and r.json()["error_type"] == "Unhealthy"
    gate.release.set()
    assert (await accepted).status_code == 200


def test_body_over_the_limit_is_413_in_the_routes_dialect(tiny_bert: Path) -> None:
    settings = settings_for({"tiny": tiny_bert}, max_body_bytes=1000, warmup=False)
    with TestClient(create_app(settings)) as c:
        big = {"inputs": "word " * 400}
        r = c.post("/embed", json=big)
        assert r.status_code == 413 and r.json()["error_type"] == "Validation"
        r = c.post("/v1/embeddings", json={"input": "word " * 400})
        assert r.status_code == 413 and "max-body-bytes" in r.json()["error"]["message"]

        def chunks() -> Iterator[bytes]:  # no content-length: counted while streaming
            yield b'{"inputs": "'
            for _ in range(100):
                yield b"word word "
            yield b'"}'

        r = c.post("/embed", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post("/embed", json={"inputs": "small"}).status_code == 200
        assert 'squeezer_requests_total{route="refused",status="413"}' in c.get("/metrics").text


def test_metrics_count_requests_batches_and_tokens(client: TestClient) -> None:
    client.post("/embed", json={"inputs": ["metrics one", "metrics two"]})
    client.post("/embed", json={"inputs": []})
    text = client.get("/metrics").text
    assert 'squeezer_requests_total{route="/embed",status="200"}' in text
    assert 'squeezer_requests_total{route="/embed",status="400"}' in text
    assert 'squeezer_batch_size_count{model="tiny"}' in text
    assert 'squeezer_batch_tokens_bucket{le="16.0",model="tiny"}' in text
    assert 'squeezer_tokens_total{model="tiny"}' in text
    assert 'squeezer_queue_wait_seconds_count{model="tiny"}' in text
    assert 'squeezer_queue_depth{model="tiny"} 0.0' in text


def test_each_app_has_its_own_metrics_registry(tiny_bert: Path) -> None:
    settings = settings_for({"tiny": tiny_bert}, warmup=False)
    a, b = create_app(settings), create_app(settings)
    assert a.state.metrics.registry is not b.state.metrics.registry
