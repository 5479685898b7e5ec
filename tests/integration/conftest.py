"""In-process apps: the real ASGI app with its lifespan, on tiny models."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from starlette.testclient import TestClient

from squeezer.config import ModelSettings, Settings
from squeezer.server.app import create_app


def free_port() -> int:
    """A loopback port free now (Ray Serve's HTTP proxy binds it in its own process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_for(models: dict[str, Path], **kw: Any) -> Settings:
    return Settings(models=[ModelSettings(name=n, path=str(p)) for n, p in models.items()], **kw)


def bert_and_llama(tiny_bert: Path, tiny_llama: Path, **kw: Any) -> Settings:
    """An embedding model ``bert`` and a generation model ``llama``, small limits, no
    warm-up: every dialect has a model to answer with."""
    kw = {"max_total_tokens": 128, "max_num_seqs": 4, "warmup": False, **kw}
    return settings_for({"bert": tiny_bert, "llama": tiny_llama}, **kw)


@pytest.fixture(scope="module")
def client(tiny_bert: Path, tiny_bert_cls: Path) -> Iterator[TestClient]:
    """Two models: ``tiny`` (mean pooling, the default) and ``tiny-cls`` (CLS, prompts)."""
    app = create_app(
        settings_for({"tiny": tiny_bert, "tiny-cls": tiny_bert_cls}, max_client_batch_size=8)
    )
    with TestClient(app) as c:
        yield c


@pytest_asyncio.fixture
async def make_async_client() -> AsyncIterator[Any]:
    """Factory for an async client on a started app (for concurrent requests)."""
    started: list[Any] = []

    async def make(settings: Settings) -> httpx.AsyncClient:
        app = create_app(settings)
        await app.state.runtime.start()
        started.append(app.state.runtime)
        transport = httpx.ASGITransport(app=app)
        return httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30)

    yield make
    for runtime in started:
        await runtime.stop()


@pytest_asyncio.fixture
async def llama_client(make_async_client: Any, tiny_llama: Path) -> httpx.AsyncClient:
    """The generation model ``llama`` alone: 256 tokens, 8 sequences."""
    settings = settings_for({"llama": tiny_llama}, max_total_tokens=256, max_num_seqs=8)
    c: httpx.AsyncClient = await make_async_client(settings)
    return c
