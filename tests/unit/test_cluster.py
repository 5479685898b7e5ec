"""The Ray Serve tier's logic without a Ray cluster: the ingress's engine link over
fake deployment handles (routing by model, retries when a replica dies, errors kept
with their class, streams cut mid-way), and the deployments' options and config."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError
from ray.serve.schema import ServeDeploySchema
from typer.testing import CliRunner

from squeezer.cli import app
from squeezer.cluster.application import (
    Scaling,
    app_builder,
    config_document,
    engine_groups,
    engine_options,
    keys_from_environment,
)
from squeezer.cluster.ray_engine import RayEngine
from squeezer.config import ModelSettings, Settings
from squeezer.engine.generation import Finished, FinishReason, GenerationRequest
from squeezer.errors import (
    ConflictError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
    UnavailableError,
)
from squeezer.server.lifecycle import ModelStatus
from squeezer.server.lifecycle.status import VersionStatus
from squeezer.types import EngineRequest


class Response:
    """A handle call's answer: awaited once; ``cancel`` is recorded."""

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.cancelled = False

    def __await__(self) -> Iterator[Any]:
        async def get() -> Any:
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            if isinstance(self.outcome, asyncio.Event):
                await self.outcome.wait()
            return self.outcome

        return get().__await__()

    def cancel(self) -> None:
        self.cancelled = True


class Streamed:
    """A streaming call's answer: its items in order (an exception is raised there)."""

    def __init__(self, items: list[Any]) -> None:
        self.items = list(items)
        self.cancelled = False

    def __aiter__(self) -> Streamed:
        return self

    async def __anext__(self) -> Any:
        await asyncio.sleep(0)
        if not self.items:
            raise StopAsyncIteration
        item = self.items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        self.cancelled = True


class Method:
    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[Any, ...]] = []

    def remote(self, *args: Any) -> Any:
        self.calls.append(args)
        return self.answers.pop(0)


class Handle:
    """A deployment handle whose methods answer from lists."""

    def __init__(self, **methods: list[Any]) -> None:
        for name, answers in methods.items():
            setattr(self, name, Method(answers))

    def options(self, **_: Any) -> Handle:
        return self


def _catalog(*keys: str) -> list[ModelStatus]:
    return [
        ModelStatus(
            key.split(":")[0],
            {},
            [
                VersionStatus(
                    key, "1", "ready", None, "/m", [], True, False, SimpleNamespace(engine_key=key)
                )
            ],  # type: ignore[arg-type]
        )
        for key in keys
    ]


async def _linked(**handles: Handle) -> RayEngine:
    engine = RayEngine(dict(handles), render_metrics=lambda: b"ingress", backoff_s=0)
    await engine.connect()
    return engine


def _request(model: str) -> EngineRequest:
    return EngineRequest(model=model, items=["x"], deadline=None)


async def test_requests_go_to_the_deployment_that_holds_their_model() -> None:
    a = Handle(call=[Response(("ok", _catalog("bert:1")))], run=[Response(("ok", "from a"))])
    b = Handle(call=[Response(("ok", _catalog("llama:1")))], run=[Response(("ok", "from b"))])
    engine = await _linked(a=a, b=b)
    assert [m.name for m in await engine.call("catalog")] == ["bert", "llama"]
    assert await engine.run(_request("llama:1")) == "from b"
    assert await engine.run(_request("bert:1")) == "from a"
    with pytest.raises(ModelNotFoundError):
        await engine.run(_request("nope:1"))
    assert await engine.call("metrics") == b"ingress"
    with pytest.raises(ConflictError, match="serve deploy"):
        await engine.call("admin", "load", "bert")
    assert [m.name for m in await engine.call("admin", "status")] == ["bert", "llama"]


async def test_a_dead_or_draining_replica_is_retried_and_errors_keep_their_class() -> None:
    died = ActorDiedError()
    a = Handle(
        call=[Response(("ok", _catalog("bert:1")))],
        run=[
            Response(died),
            Response(("retry", UnavailableError("engine replica is draining"))),
            Response(("ok", "third try")),
            Response(("error", InvalidRequestError("bad input"))),
            *[Response(died) for _ in range(4)],
            Response(BackPressureError(num_queued_requests=3, max_queued_requests=3)),
        ],
    )
    engine = await _linked(a=a)
    assert await engine.run(_request("bert:1")) == "third try"
    with pytest.raises(InvalidRequestError, match="bad input"):  # not retried: an answer
        await engine.run(_request("bert:1"))
    with pytest.raises(UnavailableError, match="after 4 attempts"):
        await engine.run(_request("bert:1"))
    with pytest.raises(OverloadedError):
        await engine.run(_request("bert:1"))


async def test_deadlines_cross_as_seconds_left() -> None:
    import time

    a = Handle(call=[Response(("ok", _catalog("bert:1")))], run=[Response(("ok", None))])
    engine = await _linked(a=a)
    request = EngineRequest(model="bert:1", items=["x"], deadline=time.monotonic() + 5)
    await engine.run(request)
    wire, left = a.run.calls[0]  # type: ignore[attr-defined]
    assert wire.deadline is None and 4 < left <= 5


async def test_a_cancelled_call_cancels_the_replica_call() -> None:
    hold = Response(asyncio.Event())
    a = Handle(call=[Response(("ok", _catalog("bert:1")))], run=[hold])
    engine = await _linked(a=a)
    task = asyncio.create_task(engine.run(_request("bert:1")))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hold.cancelled


def _tokens(stream: Any) -> Any:
    async def read() -> list[Any]:
        return [t async for t in stream]

    return read()


async def test_streams_retry_before_their_first_token_and_end_with_an_error_after() -> None:
    done = Finished(FinishReason.LENGTH, 2)
    cut = Streamed([("ok", None), ("event", "t1"), ActorDiedError()])
    a = Handle(
        call=[Response(("ok", _catalog("llama:1")))],
        generate=[
            Streamed([ActorDiedError()]),  # died before accepting: tried again
            Streamed([("ok", None), ("event", "t1"), ("event", "t2"), ("end", done)]),
            Streamed([("error", OverloadedError("full"))]),
            cut,
        ],
    )
    engine = await _linked(a=a)
    request = GenerationRequest(prompt=[1, 2], max_new_tokens=2)
    stream = await engine.open_stream("llama:1", request)
    assert await _tokens(stream) == ["t1", "t2"] and stream.finished == done
    with pytest.raises(OverloadedError):
        await engine.open_stream("llama:1", request)
    stream = await engine.open_stream("llama:1", request)
    got: list[Any] = []
    with pytest.raises(UnavailableError, match="went away"):
        async for token in stream:
            got.append(token)
    assert got == ["t1"]


async def test_leaving_a_stream_early_cancels_it_in_the_replica() -> None:
    long = Streamed([("ok", None), *[("event", f"t{i}") for i in range(50)]])
    a = Handle(call=[Response(("ok", _catalog("llama:1")))], generate=[long])
    engine = await _linked(a=a)
    stream = await engine.open_stream("llama:1", GenerationRequest(prompt=[1], max_new_tokens=50))
    tokens = stream.__aiter__()
    assert await tokens.__anext__() == "t0"
    await tokens.aclose()  # as a consumer that stops (a stop string, a client gone)
    assert long.cancelled


# -- deployments and config ----------------------------------------------------------


def _settings(**kw: Any) -> Settings:
    models = [ModelSettings(name="bert", path="/m/bert"), ModelSettings(name="llama", path="/m/l")]
    return Settings(models=models, **kw)


def test_engine_options_follow_the_flags() -> None:
    s = _settings(max_concurrent_requests=100, shutdown_timeout=7, drain_delay=1)
    fixed = engine_options(s, Scaling(replicas=3, replica_cpus=2, max_replicas_per_node=1))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    # Ray Serve's default of 5 in progress per replica would starve dynamic batching.
    assert fixed["max_ongoing_requests"] == 100
    assert fixed["graceful_shutdown_timeout_s"] == 8
    assert fixed["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0}
    assert fixed["max_replicas_per_node"] == 1
    auto = engine_options(s, Scaling(min_replicas=1, max_replicas=4, target_ongoing_requests=32))
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 32,
    }
    for bad in (
        {"min_replicas": 2},
        {"min_replicas": 3, "max_replicas": 2},
        {"target_ongoing_requests": 4},
    ):
        with pytest.raises(ValueError):
            Scaling(**bad)  # type: ignore[arg-type]


def test_one_engine_deployment_per_model_keeps_each_its_defaults() -> None:
    s = _settings(default_models={"embed": "bert"}, aliases={"llama": {"prod": "1"}})
    assert [g.name for g in engine_groups(s, Scaling())] == ["engine"]
    groups = {g.name: g.settings for g in engine_groups(s, Scaling(engine_per_model=True))}
    assert list(groups) == ["engine-bert", "engine-llama"]
    assert groups["engine-bert"].default_models == {"embed": "bert"}
    assert groups["engine-llama"].default_models == {} and "llama" in groups["engine-llama"].aliases
    with pytest.raises(InvalidRequestError, match="repository"):
        engine_groups(_settings(model_repository=Path("/repo")), Scaling(engine_per_model=True))


def test_the_config_is_a_valid_serve_config_without_the_keys(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s = _settings(api_keys=["user-key"], admin_api_key="admin-key")
    document = config_document(s, Scaling(replicas=2, engine_per_model=True))
    ServeDeploySchema.model_validate(document)
    text = yaml.safe_dump(document)
    assert "user-key" not in text and "admin-key" not in text
    names = [d["name"] for d in document["applications"][0]["deployments"]]
    assert names == ["engine-bert", "engine-llama", "ingress"]
    # The keys come from the replicas' environment, as serve reads them.
    (tmp_path / "keys").write_text("# ops\nfile-key\n")
    monkeypatch.setenv("SQUEEZER_API_KEY", "a b")
    monkeypatch.setenv("SQUEEZER_API_KEY_FILE", str(tmp_path / "keys"))
    monkeypatch.setenv("SQUEEZER_ADMIN_API_KEY", "admin-key")
    assert keys_from_environment() == {
        "api_keys": ["a", "b", "file-key"],
        "admin_api_key": "admin-key",
    }
    application = app_builder(document["applications"][0]["args"])
    assert type(application).__name__ == "Application"


def test_ray_config_writes_what_serve_deploy_takes(tmp_path: Path, tiny_bert: Path) -> None:
    out = tmp_path / "serve.yaml"
    result = CliRunner().invoke(
        app,
        ["ray-config", "-o", str(out), "--model", f"bert={tiny_bert}", "--min-replicas", "1",
         "--max-replicas", "3", "--replica-cpus", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = yaml.safe_load(out.read_text())
    ServeDeploySchema.model_validate(document)
    application = document["applications"][0]
    assert application["import_path"] == "squeezer.cluster.application:app_builder"
    assert application["args"]["settings"]["models"][0]["path"] == str(tiny_bert)
    engine = application["deployments"][0]
    assert engine["autoscaling_config"]["max_replicas"] == 3
    assert document["http_options"] == {"host": "0.0.0.0", "port": 8000}
    bad = CliRunner().invoke(app, ["ray-config", "-o", str(out), "--min-replicas", "2"])
    assert bad.exit_code == 2 and "both --min-replicas and --max-replicas" in bad.output


def test_a_replicas_metrics_endpoint_takes_the_admin_key() -> None:
    from prometheus_client import CollectorRegistry, Counter

    from squeezer.cluster.replica_metrics import serve_metrics
    from squeezer.server.access import AccessPolicy

    registry = CollectorRegistry()
    Counter("squeezer_probe", "a probe", registry=registry).inc()

    def scrape(policy: AccessPolicy, token: str | None) -> tuple[int, str]:
        server = serve_metrics(registry, "127.0.0.1", 0, policy)
        try:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            r = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", headers=headers)
            return r.status_code, r.text
        finally:
            server.shutdown()

    admin = AccessPolicy.from_settings(Settings(admin_api_key="adm", api_keys=["usr"]))
    assert scrape(admin, None)[0] == 401 and scrape(admin, "usr")[0] == 401
    status, text = scrape(admin, "adm")
    assert status == 200 and "squeezer_probe_total 1.0" in text
    users = AccessPolicy.from_settings(Settings(api_keys=["usr"]))
    assert scrape(users, "usr")[0] == 200 and scrape(users, "nope")[0] == 401
    assert scrape(AccessPolicy.from_settings(Settings()), None)[0] == 200
