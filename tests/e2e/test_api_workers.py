"""``--api-workers 2``: two API processes in front of one engine process, with real
clients. Answers equal the single-process server's; /metrics counts every process's
requests; a client that leaves frees its sequence; SIGTERM drains and stops all."""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from huggingface_hub import InferenceClient
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import start_server
from tests.tiny_models import corpus

pytestmark = pytest.mark.e2e
TEXTS = [t[:120] for t in corpus()[:8]]


def _counter(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_two_api_workers_serve_like_one_process(
    tiny_bert: Path, tiny_llama: Path, tmp_path: Path
) -> None:
    models = ["--model", f"tiny={tiny_bert}", "--model", f"llama={tiny_llama}"]
    args = [*models, "--max-total-tokens", "256"]
    single = start_server(args, tmp_path / "single.log")
    try:
        want = httpx.post(f"{single.url}/embed", json={"inputs": TEXTS, "truncate": True})
        assert want.status_code == 200, want.text
        want_vectors = want.json()
        want_text = InferenceClient(base_url=single.url).text_generation(
            "Functions are objects", max_new_tokens=12
        )
    finally:
        assert single.terminate() == 0, single.output()

    server = start_server([*args, "--api-workers", "2"], tmp_path / "workers.log")
    try:
        for _ in range(200):  # /ready answers from the first API process up
            if "2 API workers" in server.output():
                break
            time.sleep(0.05)
        assert "2 API workers" in server.output()
        children = _children(server.proc.pid)
        assert len(children) == 2, server.output()

        # Many concurrent clients: the kernel spreads connections over both processes.
        def embed(i: int) -> list[list[float]]:
            with httpx.Client() as c:
                r = c.post(f"{server.url}/embed", json={"inputs": TEXTS, "truncate": True})
                assert r.status_code == 200, r.text
                return r.json()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(embed, range(16)))
        for got in answers:
            assert np.allclose(got, want_vectors, atol=1e-6)

        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        vectors = client.embeddings.create(model="tiny", input=TEXTS[:2]).data
        assert np.allclose([v.embedding for v in vectors], want_vectors[:2], atol=1e-6)
        hub = InferenceClient(base_url=server.url)
        assert hub.text_generation("Functions are objects", max_new_tokens=12) == want_text
        streamed = "".join(
            hub.text_generation("Functions are objects", max_new_tokens=12, stream=True)
        )
        assert streamed == want_text

        # Errors keep their dialect shape and status across the process boundary.
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model="llama", prompt="x", max_tokens=10_000)
        missing = httpx.post(f"{server.url}/embed", json={"inputs": ""})
        assert missing.status_code == 400 and missing.json()["error_type"] == "Empty"

        # A client that leaves mid-stream frees its sequence in the engine process,
        # long before its 240 tokens: the cancel crossed the socket.
        generated = _counter(server.url, "squeezer_generated_tokens_total", model="llama")
        body = {"model": "llama", "prompt": "Functions", "max_tokens": 240, "stream": True}
        with httpx.stream(
            "POST", f"{server.url}/v1/completions", json={**body, "ignore_eos": True}
        ) as r:
            next(r.iter_lines())
        for _ in range(100):
            if _counter(server.url, "squeezer_generation_running", model="llama") == 0:
                break
            time.sleep(0.05)
        assert _counter(server.url, "squeezer_generation_running", model="llama") == 0
        left = _counter(server.url, "squeezer_generated_tokens_total", model="llama")
        assert left - generated < 240

        # One registry for all: both processes' requests are counted, and their
        # generations' latency figures crossed the socket with them.
        assert _counter(server.url, "squeezer_requests_total", route="/embed") == 17
        assert (
            _counter(server.url, "squeezer_time_to_first_token_seconds_count", model="llama") >= 3
        )
        mine = httpx.post(
            f"{server.url}/embed", json={"inputs": "x"}, headers={"X-Request-Id": "across-1"}
        )
        assert mine.headers["x-request-id"] == "across-1"
    finally:
        code = server.terminate()
    assert code == 0, server.output()
    for pid in children:  # the API processes went with it
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_dead_api_worker_is_replaced_and_no_one_else_fails(
    tiny_bert: Path, tmp_path: Path
) -> None:
    """An API process killed under load: the engine process starts another in its
    place; requests on the other process, and every request after, succeed. Before,
    the whole server exited."""
    server = start_server(
        ["--model", f"tiny={tiny_bert}", "--api-workers", "2"], tmp_path / "respawn.log"
    )
    try:
        for _ in range(200):
            if "2 API workers" in server.output():
                break
            time.sleep(0.05)
        victim, *_ = _children(server.proc.pid)
        os.kill(victim, 9)
        codes = []
        for _ in range(300):  # until the replacement is up (counted, not timed)
            try:
                r = httpx.post(f"{server.url}/embed", json={"inputs": TEXTS[:2]}, timeout=10)
                codes.append(r.status_code)
            except httpx.TransportError:  # a connection the dead process had accepted
                codes.append(0)
            replaced = len(_children(server.proc.pid)) == 2 and victim not in _children(
                server.proc.pid
            )
            if replaced and _counter(server.url, "squeezer_api_worker_restarts_total") == 1:
                break
            time.sleep(0.02)
        assert server.proc.poll() is None, server.output()
        assert _counter(server.url, "squeezer_api_worker_restarts_total") == 1
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            after = list(
                pool.map(
                    lambda i: (
                        httpx.post(
                            f"{server.url}/embed", json={"inputs": TEXTS[:2]}, timeout=10
                        ).status_code
                    ),
                    range(24),
                )
            )
        assert after == [200] * 24
        assert codes.count(0) <= 1  # at most the connection the killed process held
        assert "started" in server.output() and "in its place" in server.output()
    finally:
        code = server.terminate()
    assert code == 0, server.output()
