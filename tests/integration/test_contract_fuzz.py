"""Fuzzing our own contract: schemathesis against the app's ``/openapi.json``.

Every operation the app publishes (each route and method) gets generated requests,
valid and invalid (schemathesis' explicit-example, coverage and fuzzing phases), sent
to the in-process app serving a tiny model of every kind the routes need. Two checks:
no 5xx (``not_a_server_error``), and every status is one the operation declares
(``status_code_conformance``). Generations stay small (``max_tokens``,
``max_new_tokens``, ``n`` clamped before sending; 32-token slots), so a status comes
from the request's content, never from load. Then the server still answers.

``benchmarks/fuzz.py`` runs the same fuzz (these hooks and clamps) for longer, against
a real server on the packaged models.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance
from starlette.testclient import TestClient

from squeezer.config import ModelSettings, Settings
from squeezer.server.app import create_app
from squeezer.server.errors import error_statuses

CHECKS = [not_a_server_error, status_code_conformance]
#: Largest generation a fuzzed request may ask for: new tokens, and choices.
MAX_NEW_TOKENS = 4
MAX_CHOICES = 2
#: Body fields that size a generation (any dialect's) and their ceilings.
_GENERATION_LIMITS = {
    "max_tokens": MAX_NEW_TOKENS,
    "max_completion_tokens": MAX_NEW_TOKENS,
    "max_new_tokens": MAX_NEW_TOKENS,
    "min_tokens": MAX_NEW_TOKENS,
    "n": MAX_CHOICES,
    "best_of": MAX_CHOICES,
}
#: ``{pipeline}`` values the HF Inference API routes know; the fuzz picks one half the
#: time (else whatever it generated, an unknown pipeline).
PIPELINES = [
    "feature-extraction",
    "sentence-similarity",
    "text-classification",
    "text-ranking",
    "token-classification",
    "fill-mask",
    "question-answering",
    "zero-shot-classification",
    "text-generation",
]
#: Operations whose body is the HF Inference API's ``{"inputs": Any, ...}``.
HF_PATHS = frozenset(
    {"/", "/models/{name}", "/models/{name}/pipeline/{pipeline}", "/pipeline/{pipeline}/{name}"}
)


def limit_generation(body: Any) -> Any:
    """``body`` with the fields that size a generation clamped, wherever the dialect
    puts them (TGI's and the HF API's under ``parameters``).

    Only sizes above the ceiling are lowered: zero, negative, huge-but-invalid types
    stay as generated, so the 4xx they earn is still tested."""
    if not isinstance(body, dict):
        return body
    out = dict(body)
    for key, ceiling in _GENERATION_LIMITS.items():
        value = out.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > ceiling:
            out[key] = ceiling
    if isinstance(out.get("parameters"), dict):
        out["parameters"] = limit_generation(out["parameters"])
    return out


def install_hooks(schema: Any, model_names: list[str]) -> Any:
    """Register the fuzz's generation hooks on ``schema`` (and return it).

    ``{name}`` is a served model's name half the time (else what was generated, a
    404), ``{pipeline}`` a known pipeline half the time, and an HF Inference API body
    has text ``inputs`` half the time: random JSON there rarely reaches a model."""
    known = {"name": model_names, "pipeline": PIPELINES}

    @schema.hook
    def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
        parameters = path_parameters or {}
        return st.fixed_dictionaries(
            {
                key: st.sampled_from([*known[key], value]) if key in known else st.just(value)
                for key, value in parameters.items()
            }
        )

    texts = st.text(max_size=40) | st.lists(st.text(max_size=20), min_size=1, max_size=3)

    @schema.hook
    def flatmap_body(context: Any, body: Any) -> Any:
        if context.operation.path not in HF_PATHS or not isinstance(body, dict):
            return st.just(body)
        return st.just(body) | texts.map(lambda inputs: {**body, "inputs": inputs})

    return schema


def fuzz_settings(tiny_models: dict[str, Path]) -> Settings:
    return Settings(
        models=[ModelSettings(name=n, path=str(p)) for n, p in tiny_models.items()],
        # Short generation slots: a fuzzed prompt and its new tokens stay small.
        max_total_tokens=32,
        max_num_seqs=4,
        max_client_batch_size=8,
        # One request at a time: no wait is long, and a 504 would be load, not content.
        request_timeout=0,
        warmup=False,
    )


def published_schema() -> dict[str, Any]:
    """The app's ``/openapi.json``. Routes do not depend on models, so a model-less
    app (never started) publishes the document the fuzzed app does (asserted by the
    fixture); it is needed when tests are collected, before any fixture runs."""
    response = TestClient(create_app(Settings())).get("/openapi.json")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


#: The names the fixture serves its tiny models under.
MODEL_NAMES = ["bert", "llama", "sentiment", "reranker", "nli", "ner", "mlm", "qa"]
# Loaded eagerly rather than with ``schemathesis.pytest.from_fixture``: that lazy
# loader reads ``Function._nodeid``, which pytest 9.2 no longer has.
schema = install_hooks(schemathesis.openapi.from_dict(published_schema()), MODEL_NAMES)


@pytest.fixture(scope="module")
def tiny_models(tiny_bert: Path, tiny_llama: Path, head_models: dict[str, Path]) -> dict[str, Path]:
    """An embedding model (the default), a chat LM, and one model per encoder head:
    every route has a model to run."""
    models = {"bert": tiny_bert, "llama": tiny_llama, **head_models}
    assert list(models) == MODEL_NAMES
    return models


@pytest.fixture(scope="module")
def fuzz_client(tiny_models: dict[str, Path]) -> Iterator[TestClient]:
    """The started app, behind a client of its own.

    Not schemathesis' ASGI transport: its pytest plugin ends, at every test's
    teardown, the lifespans that transport started, and a runtime does not start
    twice. A 500 comes back as a response (``raise_server_exceptions=False``), for
    ``not_a_server_error`` to judge."""
    app = create_app(fuzz_settings(tiny_models))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/ready").status_code == 200
        assert client.get("/openapi.json").json() == schema.raw_schema
        yield client


def send(client: TestClient, case: Any) -> httpx.Response:
    """``case`` (its generation clamped) as schemathesis would send it, via ``client``."""
    case.body = limit_generation(case.body)
    kwargs = case.as_transport_kwargs(base_url=str(client.base_url))
    body = kwargs.get("data")
    return client.request(
        kwargs["method"],
        kwargs["url"],
        params=kwargs.get("params"),
        headers=kwargs.get("headers"),
        cookies=kwargs.get("cookies"),
        json=kwargs.get("json"),
        content=body.encode() if isinstance(body, str) else body,
    )


#: Routes that change what is served: fuzzed on an app of their own (below), so
#: that an unload there cannot take the inference routes' models away.
LIFECYCLE = r"^/(admin/models|v2/repository)"


# ~50 s for the 26 operations on 2 cores, most of it the coverage phase's cases (a few
# hundred each) on the generation routes.
@schema.exclude(path_regex=LIFECYCLE).parametrize()
@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,  # the same cases every run: the suite is not flaky; fuzz.py explores
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_contract(case: Any, fuzz_client: TestClient) -> None:
    case.validate_response(send(fuzz_client, case), checks=CHECKS)


@pytest.fixture(scope="module")
def lifecycle_client(tiny_bert: Path) -> Iterator[TestClient]:
    app = create_app(fuzz_settings({"bert": tiny_bert}))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@schema.include(path_regex=LIFECYCLE).parametrize()
@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_lifecycle_contract(case: Any, lifecycle_client: TestClient) -> None:
    """Loads of fuzzed sources, unloads, aliases: 4xx in the contract, never a 500."""
    case.validate_response(send(lifecycle_client, case), checks=CHECKS)


def test_the_lifecycle_still_works_after_its_fuzz(lifecycle_client: TestClient) -> None:
    r = lifecycle_client.post("/admin/models/bert/versions/1/load")
    assert r.status_code == 200, r.text
    r = lifecycle_client.post("/embed", json={"inputs": "a normal sentence"})
    assert r.status_code == 200, r.text


def test_serves_after_the_fuzz(fuzz_client: TestClient) -> None:
    """Runs after ``test_contract`` (file order), on the same app: nothing leaked."""
    assert fuzz_client.get("/health").status_code == 200
    assert fuzz_client.get("/ready").status_code == 200
    r = fuzz_client.post("/embed", json={"inputs": ["a normal sentence", "and another"]})
    assert r.status_code == 200, r.text
    assert len(r.json()) == 2
    r = fuzz_client.post("/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 3}})
    assert r.status_code == 200, r.text
    assert fuzz_client.app.state.in_flight.count == 0  # type: ignore[attr-defined]


# -- regressions: what the fuzz found -------------------------------------------------


def test_every_route_declares_its_dialects_errors() -> None:
    """Each model-running route publishes every status an error takes in its dialect
    (``server.errors`` writes both). Found reading the table after the fuzz's one
    undeclared status (below): TEI's routes lacked 404/504, TGI's 400/404/413/504, the
    HF API's 413/424/503/504, OpenAI's 504 (and 500 on the embeddings and rerank
    routes); load (429/503/504) is not something the fuzz makes, so it never saw them."""
    for path, operations in schema.raw_schema["paths"].items():
        for method, operation in operations.items():
            if method == "post":
                declared = {int(s) for s in operation["responses"]}
                missing = set(error_statuses(path)) - declared
                assert not missing, f"{method.upper()} {path} does not declare {sorted(missing)}"


def test_unknown_model_in_the_path_is_a_declared_404(fuzz_client: TestClient) -> None:
    """``GET /models/{name}/v1/models`` for a model not served answered 404, which its
    OpenAPI entry did not list (only 200 and 422)."""
    r = fuzz_client.get("/models/nope/v1/models")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    declared = schema.raw_schema["paths"]["/models/{name}/v1/models"]["get"]["responses"]
    assert "404" in declared


@pytest.mark.parametrize("path", ["/v1/completions", "/models/llama/v1/completions"])
@pytest.mark.parametrize("prompt", [[-1], [[3, 2**40]], [[]]])
def test_echoed_token_ids_are_checked_before_decoding(
    fuzz_client: TestClient, path: str, prompt: list[Any]
) -> None:
    """``echo`` with token ids outside the vocabulary (found on SmolLM2 by
    ``benchmarks/fuzz.py``): the prompt was decoded for the echo before admission
    checked its ids, and the tokenizer's OverflowError was a 500. Now the 400 that
    admission gives."""
    body = {"model": "llama", "prompt": prompt, "echo": True, "max_tokens": 1}
    r = fuzz_client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "prompt"
    ok = fuzz_client.post(path, json={**body, "prompt": [3, 4]})
    assert ok.status_code == 200, ok.text
    assert isinstance(ok.json()["choices"][0]["text"], str)
