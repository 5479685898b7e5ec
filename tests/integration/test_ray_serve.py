"""squeezer on Ray Serve, on a local Ray (2 CPUs, replicas taking none): the
application ``squeezer serve --ray`` deploys (an ingress in front of one engine
deployment per model), spoken to over Ray Serve's HTTP proxy with the ``openai``
client. Answers equal the in-process server's (embeddings within 1e-5, greedy text
exactly); streamed tokens reach the client one by one, each before the next is
computed (a gate in the engine replica's own process lets one step run at a time);
each engine replica's metrics are found through ``/metrics/targets``."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from starlette.testclient import TestClient

from squeezer.cluster.application import Scaling, build
from squeezer.cluster.replicas import EngineReplica
from squeezer.config import Settings
from squeezer.server.app import create_app
from tests.integration.conftest import bert_and_llama, free_port

TEXTS = ["the cat sat on the mat", "a quick brown fox", "ray serve replicas"]
CHAT = [{"role": "user", "content": "say something"}]


class Gate:
    """A Ray actor the engine replica's backend takes one step from at a time,
    while closed; open, every step passes."""

    def __init__(self) -> None:
        self.closed = False
        self.allowed = 0
        self.taken = 0

    def close(self) -> None:
        self.closed, self.allowed, self.taken = True, 0, 0

    def open(self) -> None:
        self.closed = False

    def release(self) -> None:
        self.allowed += 1

    def take(self) -> bool:
        """True once this step may run (the backend polls: a sync actor's method
        cannot wait without holding the actor)."""
        if self.closed and self.taken >= self.allowed:
            return False
        self.taken += 1
        return True

    def steps(self) -> int:
        return self.taken


def gated(gate: Any) -> Callable[[EngineReplica], None]:
    """A replica set-up that makes each generation step wait for the gate."""

    def setup(replica: EngineReplica) -> None:
        import ray

        from squeezer.backends.torch_generation import TorchGenerationBackend

        original = TorchGenerationBackend.step

        def step(self: TorchGenerationBackend, chunks: Any, tokens: Any) -> Any:
            while not ray.get(gate.take.remote()):
                time.sleep(0.005)
            return original(self, chunks, tokens)

        TorchGenerationBackend.step = step  # type: ignore[method-assign]

    return setup


class Deployed:
    def __init__(self, url: str, gate: Any, settings: Settings) -> None:
        self.url = url
        self.gate = gate
        self.settings = settings


@pytest.fixture(scope="module")
def deployed(tiny_bert: Path, tiny_llama: Path) -> Iterator[Deployed]:
    import ray
    from ray import cloudpickle, serve

    # The set-up function travels by value: a Ray worker need not import tests.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    gate = ray.remote(Gate).remote()  # type: ignore[attr-defined]
    settings = bert_and_llama(tiny_bert, tiny_llama)
    scaling = Scaling(replica_cpus=0, engine_per_model=True, name="test")
    serve.run(build(settings, scaling, setup=gated(gate)), name="test", route_prefix="/")
    yield Deployed(f"http://127.0.0.1:{port}", gate, settings)
    serve.shutdown()
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def reference(deployed: Deployed) -> Iterator[TestClient]:
    """The same settings served in-process, the usual way."""
    with TestClient(create_app(deployed.settings)) as client:
        yield client


def _client(deployed: Deployed) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{deployed.url}/v1", api_key="unused", max_retries=0)


def test_embeddings_equal_the_in_process_server(deployed: Deployed, reference: TestClient) -> None:
    got = _client(deployed).embeddings.create(model="bert", input=TEXTS)
    want = reference.post("/v1/embeddings", json={"model": "bert", "input": TEXTS}).json()
    assert [d.index for d in got.data] == [0, 1, 2]
    for ours, theirs in zip(got.data, want["data"], strict=True):
        np.testing.assert_allclose(ours.embedding, theirs["embedding"], atol=1e-5)
    assert got.usage.prompt_tokens == want["usage"]["prompt_tokens"]


def test_streamed_chat_equals_the_in_process_answer(
    deployed: Deployed, reference: TestClient
) -> None:
    body = {"model": "llama", "messages": CHAT, "max_tokens": 12, "temperature": 0}
    want = reference.post("/v1/chat/completions", json=body).json()
    stream = _client(deployed).chat.completions.create(
        model="llama",
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want["choices"][0]["message"]["content"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == want["usage"]["completion_tokens"]


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_each_token_reaches_the_client_before_the_next_is_computed(deployed: Deployed) -> None:
    """Neither the handle stream, nor the ingress, nor Ray's HTTP proxy buffers: with
    the engine let run one step at a time, the client holds each token while the step
    after it has not been let run."""
    import ray

    gate = deployed.gate
    ray.get(gate.close.remote())
    # TGI's stream: one event per token, whatever its text (an OpenAI chunk needs text).
    body = {"inputs": "one two", "parameters": {"max_new_tokens": 4}}
    try:
        ray.get(gate.release.remote())  # the step that samples token 1 (headers first)
        with httpx.stream("POST", f"{deployed.url}/generate_stream", json=body, timeout=60) as r:
            assert r.status_code == 200
            events = (line for line in r.iter_lines() if line.startswith("data: "))
            for step in range(1, 5):
                event = json.loads(next(events)[6:])
                assert event["token"]["id"] >= 0
                # The client holds token `step`; step + 1 has not been let run.
                assert ray.get(gate.steps.remote()) == step
                assert (event["generated_text"] is not None) == (step == 4)
                if step < 4:
                    ray.get(gate.release.remote())
            assert next(events, None) is None
    finally:
        ray.get(gate.open.remote())


def test_bad_input_and_admin_calls_answer_in_the_dialect(deployed: Deployed) -> None:
    with pytest.raises(openai.BadRequestError, match="empty"):
        _client(deployed).embeddings.create(model="bert", input="")
    with pytest.raises(openai.NotFoundError):
        _client(deployed).embeddings.create(model="nope", input="x")
    r = httpx.post(f"{deployed.url}/admin/models/bert/load", json={}, timeout=30)
    assert r.status_code == 409 and "serve deploy" in r.text
    listed = httpx.get(f"{deployed.url}/admin/models", timeout=30).json()  # reads work
    assert {m["name"] for m in listed["models"]} == {"bert", "llama"}
    # The ingress kept serving.
    assert _client(deployed).embeddings.create(model="bert", input="after").data


def test_each_engine_replicas_metrics_are_found_through_the_ingress(deployed: Deployed) -> None:
    _client(deployed).embeddings.create(model="bert", input=TEXTS)
    targets = httpx.get(f"{deployed.url}/metrics/targets", timeout=30).json()
    by_deployment = {t["labels"]["deployment"]: t["targets"][0] for t in targets}
    assert set(by_deployment) == {"engine-bert", "engine-llama"}
    assert all(t["labels"]["application"] == "test" for t in targets)

    def scraped() -> bool:
        text = httpx.get(f"http://{by_deployment['engine-bert']}/metrics", timeout=10).text
        return 'squeezer_batch_size_count{model="bert' in text

    _wait(scraped, "the bert replica's batch metrics")
    ingress = httpx.get(f"{deployed.url}/metrics", timeout=30).text
    assert 'squeezer_requests_total{route="/v1/embeddings",status="200"}' in ingress
