"""Following one request: its id on the response and on every log line, its JSON
access-log line (never its text), its trace, the generation latency metrics, CORS."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from squeezer.server import tracing
from squeezer.server.app import create_app
from squeezer.server.logs import configure_logging
from tests.integration.conftest import bert_and_llama

MARKER = "zebra-quartz-marker"


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The serving processes' log set-up, in JSON, into a buffer."""
    buffer = io.StringIO()
    handler = configure_logging("info", "json", stream=buffer)
    yield buffer
    logging.getLogger().removeHandler(handler)


@pytest.fixture(scope="module")
def client(tiny_bert: Path, tiny_llama: Path) -> Iterator[TestClient]:
    with TestClient(create_app(bert_and_llama(tiny_bert, tiny_llama))) as c:
        yield c


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    for handler in logging.getLogger().handlers:  # lines go out in batches (logs.py)
        handler.flush()
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]


def test_request_ids_are_returned_on_every_response_streams_included(client: TestClient) -> None:
    r = client.post("/embed", json={"inputs": "hi"})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    assert (
        client.post("/embed", json={"inputs": "hi"}).headers["x-request-id"]
        != (r.headers["x-request-id"])
    )  # a new one each time
    mine = {"X-Request-Id": "client-id-42"}
    assert (
        client.post("/embed", json={"inputs": "hi"}, headers=mine).headers["x-request-id"]
        == "client-id-42"
    )
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body, headers=mine) as s:
        assert s.headers["x-request-id"] == "client-id-42"
        assert "data: [DONE]" in "".join(s.iter_lines())
    # Errors and refusals carry it too; an id that could forge a log line is replaced.
    bad = client.post("/embed", json={"inputs": ""}, headers={"X-Request-Id": "a\tb" * 3})
    assert bad.status_code == 400 and re.fullmatch(r"[0-9a-f]{32}", bad.headers["x-request-id"])
    assert client.get("/nope", headers=mine).headers["x-request-id"] == "client-id-42"


def test_the_access_log_is_one_json_line_per_request_without_its_text(
    client: TestClient, json_log: io.StringIO
) -> None:
    headers = {"X-Request-Id": "access-1"}
    r = client.post("/embed", json={"inputs": [f"{MARKER} one", f"{MARKER} two"]}, headers=headers)
    assert r.status_code == 200
    chat = {"model": "llama", "messages": [{"role": "user", "content": MARKER}], "max_tokens": 4}
    r = client.post("/v1/chat/completions", json=chat, headers={"X-Request-Id": "access-2"})
    usage = r.json()["usage"]
    client.get("/health")  # probes are not logged
    lines = _lines(json_log)
    access = {line["request_id"]: line for line in lines if line["logger"] == "squeezer.access"}
    assert set(access) == {"access-1", "access-2"}
    embed, gen = access["access-1"], access["access-2"]
    assert (embed["method"], embed["route"], embed["status"], embed["model"]) == (
        "POST", "/embed", 200, "bert"
    )  # fmt: skip
    assert embed["input_tokens"] > 4 and embed["output_tokens"] == 0
    assert embed["compute_ms"] > 0 and embed["queue_ms"] >= 0 and embed["duration_ms"] > 0
    assert gen["route"] == "/v1/chat/completions" and gen["model"] == "llama"
    assert (gen["input_tokens"], gen["output_tokens"]) == (
        usage["prompt_tokens"], usage["completion_tokens"]
    )  # fmt: skip
    assert 0 < gen["ttft_ms"] <= gen["duration_ms"] and gen["compute_ms"] > 0
    assert {"time", "level", "message"} <= set(embed)
    assert MARKER not in json_log.getvalue()


def test_log_lines_written_while_serving_carry_the_request_id(
    client: TestClient, json_log: io.StringIO
) -> None:
    log = logging.getLogger("squeezer.test")

    @client.app.get("/test-log")  # type: ignore[attr-defined]
    async def logs_something() -> dict[str, str]:
        log.warning("inside the request")
        return {}

    client.get("/test-log", headers={"X-Request-Id": "log-7"})
    log.warning("outside any request")
    by_message = {line["message"]: line for line in _lines(json_log)}
    assert by_message["inside the request"]["request_id"] == "log-7"
    assert by_message["outside any request"]["request_id"] is None


def test_text_logs_name_the_request_too(client: TestClient) -> None:
    buffer = io.StringIO()
    handler = configure_logging("info", "text", stream=buffer)
    try:
        client.post("/embed", json={"inputs": "hi"}, headers={"X-Request-Id": "text-1"})
        handler.flush()
    finally:
        logging.getLogger().removeHandler(handler)
    line = next(x for x in buffer.getvalue().splitlines() if "squeezer.access" in x)
    assert "[text-1]" in line and "POST /embed 200 model=bert" in line


def test_generation_latency_metrics(client: TestClient) -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 6, "ignore_eos": True}}
    assert client.post("/models/llama", json=body).status_code == 200
    metrics = client.get("/metrics").text

    samples = [s for family in text_string_to_metric_families(metrics) for s in family.samples]

    def sample(name: str, **labels: str) -> float:
        for s in samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
        raise AssertionError(f"{name}{labels} not in /metrics")

    assert sample("squeezer_time_to_first_token_seconds_count", model="llama") >= 1
    gaps = sample("squeezer_inter_token_latency_seconds_count", model="llama")
    assert gaps >= 5  # 6 tokens, 5 gaps (more from other tests' generations)
    e2e = sample("squeezer_request_e2e_seconds_count", model="llama", route="/models/{name}")
    assert e2e >= 1
    assert sample("squeezer_request_e2e_seconds_count", model="bert", route="/embed") >= 1


def test_cors_is_off_by_default_and_answers_allowed_origins(
    client: TestClient, tiny_bert: Path, tiny_llama: Path
) -> None:
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    assert "access-control-allow-origin" not in client.options("/embed", headers=preflight).headers
    settings = bert_and_llama(
        tiny_bert, tiny_llama, cors_allow_origins=["https://app.example"], api_keys=["k"]
    )
    with TestClient(create_app(settings)) as c:
        r = c.options("/embed", headers=preflight)  # no key on a preflight: still answered
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = c.post(
            "/embed",
            json={"inputs": "hi"},
            headers={"Origin": "https://app.example", "Authorization": "Bearer k"},
        )
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        other = c.options("/embed", headers={**preflight, "Origin": "https://evil.example"})
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers


def test_a_request_is_one_trace_from_http_to_forward(tiny_bert: Path, tiny_llama: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert tracing.configure(provider)
    try:
        with TestClient(create_app(bert_and_llama(tiny_bert, tiny_llama))) as c:
            exporter.clear()  # start-up's own work is not a request
            r = c.post("/embed", json={"inputs": ["a", "b c"]}, headers={"X-Request-Id": "t-1"})
            embed_spans = exporter.get_finished_spans()
            exporter.clear()
            body = {
                "model": "llama",
                "prompt": "Hi",
                "max_tokens": 5,
                "stream": True,
                "ignore_eos": True,
            }
            with c.stream("POST", "/v1/completions", json=body) as s:
                chunks = [line for line in s.iter_lines() if line.startswith("data: {")]
            gen_spans = exporter.get_finished_spans()
    finally:
        tracing.disable()
    assert r.status_code == 200

    def tree(spans: Any) -> tuple[Any, dict[str, list[Any]]]:
        (root,) = [s for s in spans if s.parent is None]
        assert {s.context.trace_id for s in spans} == {root.context.trace_id}
        named: dict[str, list[Any]] = {}
        for s in spans:
            named.setdefault(s.name, []).append(s)
        return root, named

    root, named = tree(embed_spans)
    assert root.attributes["squeezer.request_id"] == "t-1"
    assert root.attributes["squeezer.model"] == "bert"
    status = root.attributes.get(
        "http.response.status_code", root.attributes.get("http.status_code")
    )
    assert status == 200
    for name in ("tokenize", "queue", "batch", "forward"):
        assert name in named, (name, list(named))
    (batch,) = named["batch"]
    (forward,) = named["forward"]
    assert forward.parent.span_id == batch.context.span_id
    assert batch.start_time <= forward.start_time <= forward.end_time <= batch.end_time
    assert batch.attributes["squeezer.batch_size"] == 2
    assert named["queue"][0].end_time == batch.start_time

    root, named = tree(gen_spans)
    assert root.attributes["squeezer.model"] == "llama"
    assert {"tokenize", "queue", "prefill", "decode"} <= set(named)
    (decode,) = named["decode"]
    assert decode.attributes["squeezer.completion_tokens"] == 5
    assert len(gen_spans) < 5 + len(chunks)  # no span per token or per chunk
    (prefill,) = named["prefill"]
    assert named["queue"][0].end_time <= prefill.start_time <= prefill.end_time
    assert prefill.end_time <= decode.start_time <= decode.end_time


def test_fastapi_does_not_look_for_its_own_telemetry_per_request(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """squeezer's traces are its own middleware's; FastAPI (0.165+) would otherwise
    ask OpenTelemetry for a global provider on every request (and trace twice once
    one is set): ~10% of the event loop at 500 embeddings/s."""
    from opentelemetry import metrics, trace

    asked: list[str] = []

    def provider(kind: str, real: Any) -> Any:
        def ask() -> Any:
            asked.append(kind)
            return real()

        return ask

    monkeypatch.setattr(trace, "get_tracer_provider", provider("traces", trace.get_tracer_provider))
    monkeypatch.setattr(
        metrics, "get_meter_provider", provider("metrics", metrics.get_meter_provider)
    )
    for _ in range(3):
        assert client.post("/embed", json={"inputs": "a"}).status_code == 200
    assert asked == []


def test_log_lines_go_out_in_batches_and_warnings_at_once() -> None:
    """One write per batch of lines, not per line (logs.py says why); an idle server's
    last lines still go out, and a warning goes out at once with what waited."""
    import time

    buffer = io.StringIO()
    handler = configure_logging("info", "text", stream=buffer)
    log = logging.getLogger("squeezer.test")
    try:
        log.info("first")
        log.info("second")
        for _ in range(100):  # the timer thread writes them out while nothing else comes
            if "second" in buffer.getvalue():
                break
            time.sleep(0.02)
        assert buffer.getvalue().index("first") < buffer.getvalue().index("second")
        log.info("held")
        log.warning("urgent")
        assert "held" in buffer.getvalue() and "urgent" in buffer.getvalue()
    finally:
        logging.getLogger().removeHandler(handler)
