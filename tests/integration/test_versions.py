"""Model versions and aliases on the in-process app: how requests name them, the
admin API that loads, unloads and moves them, Triton's repository extension, and
swaps under load that drop nothing."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from squeezer.config import ModelSettings, Settings, load_settings, parse_model_arg

TEXTS = ["the cat sat on the mat", "a swap must drop nothing"]


def _settings(models: list[str], **kw: Any) -> Settings:
    kw = {"max_total_tokens": 128, "max_num_seqs": 8, "warmup": False, **kw}
    return Settings(models=[parse_model_arg(m) for m in models], **kw)


async def _embed(client: httpx.AsyncClient, model: str) -> tuple[np.ndarray, str]:
    r = await client.post("/v1/embeddings", json={"model": model, "input": TEXTS})
    assert r.status_code == 200, r.text
    vectors = np.array([d["embedding"] for d in r.json()["data"]])
    return vectors, r.headers["x-model-version"]


async def _versions(client: httpx.AsyncClient, name: str) -> dict[str, dict[str, Any]]:
    r = await client.get(f"/admin/models/{name}")
    assert r.status_code == 200, r.text
    return {v["version"]: v for v in r.json()["versions"]}


# -- naming ----------------------------------------------------------------------------


def test_names_may_not_hold_at_or_colon_and_versions_parse() -> None:
    for bad in ("a@b", "a:b"):
        with pytest.raises(ValueError, match="'@' or ':'"):
            ModelSettings(name=bad, path="/x")
    assert parse_model_arg("bert:2=/m/b").version == "2"
    pinned = parse_model_arg("org/minilm@0123abc")
    assert (pinned.name, pinned.version, pinned.path) == ("minilm", "0123abc", "org/minilm@0123abc")
    two = load_settings(model_args=["bert:1=/m/a", "bert:2=/m/b"])
    assert [(m.name, m.version) for m in two.models] == [("bert", "1"), ("bert", "2")]
    with pytest.raises(ValueError, match="unique"):
        load_settings(model_args=["bert=/m/a", "bert=/m/b"])


async def test_a_request_names_a_version_an_alias_or_the_default(
    make_async_client: Any, tiny_bert: Path, tiny_bert_cls: Path
) -> None:
    client = await make_async_client(
        _settings(
            [f"bert:1={tiny_bert}", f"bert:2={tiny_bert_cls}"], aliases={"bert": {"prod": "1"}}
        )
    )
    v1, seen1 = await _embed(client, "bert:1")
    v2, seen2 = await _embed(client, "bert:2")
    assert (seen1, seen2) == ("1", "2") and not np.allclose(v1, v2)
    newest, seen = await _embed(client, "bert")  # no default alias: the newest version
    assert seen == "2" and np.allclose(newest, v2)
    prod, seen = await _embed(client, "bert@prod")
    assert seen == "1" and np.allclose(prod, v1)
    # An alias moves atomically; ``default`` is what the name alone means.
    r = await client.put("/admin/models/bert/aliases/default", json={"version": "1"})
    assert r.status_code == 200 and r.json()["aliases"] == {"prod": "1", "default": "1"}
    assert (await _embed(client, "bert"))[1] == "1"
    for ref, status in (("bert:9", 404), ("bert@canary", 404), ("nope", 404)):
        r = await client.post("/v1/embeddings", json={"model": ref, "input": "x"})
        assert r.status_code == status, r.text
        assert r.json()["error"]["param"] == "model"
    listed = (await client.get("/v1/models")).json()["data"]
    assert [m["id"] for m in listed] == ["bert"]


# -- the admin API -----------------------------------------------------------------------


async def test_load_unload_and_alias_through_the_admin_api(
    make_async_client: Any, tiny_bert: Path, tiny_bert_cls: Path, tmp_path: Path
) -> None:
    client = await make_async_client(_settings([f"bert:1={tiny_bert}"]))
    r = await client.post(
        "/admin/models/bert/versions/2/load",
        json={"source": str(tiny_bert_cls), "aliases": ["canary"]},
    )
    assert r.status_code == 200, r.text
    versions = {v["version"]: v for v in r.json()["versions"]}
    assert versions["2"]["state"] == "ready" and versions["2"]["aliases"] == ["canary"]
    assert versions["2"]["default"] and not versions["1"]["default"]  # newest
    assert versions["2"]["content_hash"] and versions["2"]["tasks"] == ["embed"]
    assert (await _embed(client, "bert@canary"))[1] == "2"

    # Loading again is a no-op; from other files, a conflict.
    again = await client.post("/admin/models/bert/versions/2/load", json={})
    assert again.status_code == 200
    clash = await client.post("/admin/models/bert/versions/2/load", json={"source": str(tiny_bert)})
    assert clash.status_code == 409, clash.text

    # A broken version fails with its reason; what served keeps serving.
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bert, broken)
    (broken / "config.json").write_text("{not json")
    r = await client.post("/admin/models/bert/versions/3/load", json={"source": str(broken)})
    assert r.status_code == 400, r.text
    assert "bert:3" in r.json()["error"]
    versions = await _versions(client, "bert")
    assert versions["3"]["state"] == "failed" and versions["3"]["reason"]
    assert (await _embed(client, "bert"))[1] == "2"

    # An aliased version is not unloaded unless forced or the alias moves.
    r = await client.post("/admin/models/bert/versions/2/unload", json={})
    assert r.status_code == 409 and "bert@canary" in r.json()["error"]
    r = await client.delete("/admin/models/bert/aliases/canary")
    assert r.status_code == 200 and r.json()["aliases"] == {}
    r = await client.post("/admin/models/bert/versions/2/unload")
    assert r.status_code == 200
    versions = {v["version"]: v for v in r.json()["versions"]}
    assert versions["2"]["state"] == "available" and versions["1"]["default"]
    assert (await _embed(client, "bert"))[1] == "1"
    gone = await client.post("/v1/embeddings", json={"model": "bert:2", "input": "x"})
    assert gone.status_code == 503 and "available" in gone.json()["error"]["message"]
    # Known versions come back by name alone, from where they were loaded.
    r = await client.post("/admin/models/bert/versions/2/load")
    assert r.status_code == 200 and (await _embed(client, "bert:2"))[1] == "2"
    # An alias may only name a version that serves.
    r = await client.put("/admin/models/bert/aliases/prod", json={"version": "3"})
    assert r.status_code == 409


async def test_a_reload_serves_the_new_load_and_retires_the_old(
    make_async_client: Any, tiny_bert: Path
) -> None:
    client = await make_async_client(_settings([f"bert:1={tiny_bert}"]))
    runtime = client._transport.app.state.runtime  # type: ignore[attr-defined]
    before, _ = await _embed(client, "bert")
    assert runtime.engine.models == ("bert:1",)
    r = await client.post("/admin/models/bert/versions/1/reload")
    assert r.status_code == 200, r.text
    after, seen = await _embed(client, "bert")
    assert seen == "1" and np.allclose(before, after)
    assert len(runtime.engine.models) == 1 and runtime.engine.models[0].startswith("bert:1#")


async def test_admin_routes_take_the_admin_key(make_async_client: Any, tiny_bert: Path) -> None:
    client = await make_async_client(
        _settings([f"bert={tiny_bert}"], api_keys=["user"], admin_api_key="admin")
    )
    for path in ("/admin/models", "/v2/repository/index"):
        method = client.get if path.startswith("/admin") else client.post
        assert (await method(path)).status_code == 401
        user = await method(path, headers={"Authorization": "Bearer user"})
        assert user.status_code == 401  # an inference key is not the admin key
        admin = await method(path, headers={"Authorization": "Bearer admin"})
        assert admin.status_code == 200, admin.text


# -- a model repository and Triton's repository extension --------------------------------


def _version(repo: Path, name: str, version: str, source: Path) -> None:
    shutil.copytree(source, repo / name / version)


def _two_versions(tmp_path: Path, one: Path, two: Path, toml: str) -> Path:
    """A repository with ``bert`` versions 1 and 2, and its ``squeezer.toml``."""
    repo = tmp_path / "repo"
    _version(repo, "bert", "1", one)
    _version(repo, "bert", "2", two)
    (repo / "bert" / "squeezer.toml").write_text(toml)
    return repo


async def test_a_triton_repository_loads_the_newest_and_swaps_on_load(
    make_async_client: Any, tiny_bert: Path, tiny_bert_cls: Path, tmp_path: Path
) -> None:
    repo = _two_versions(tmp_path, tiny_bert, tiny_bert_cls, '[model]\ndtype = "float32"\n')
    (repo / "junk").mkdir(parents=True)
    (repo / "junk" / "notes.txt").write_text("not a version")
    settings = Settings(model_repository=repo, warmup=False)
    client = await make_async_client(settings)

    r = await client.post("/v2/repository/index", content=b"")
    assert r.status_code == 200, r.text
    index = {(e["name"], e["version"]): e["state"] for e in r.json()}
    assert index == {("bert", "1"): "UNAVAILABLE", ("bert", "2"): "READY"}
    ready = await client.post("/v2/repository/index", json={"ready": True})
    assert [(e["name"], e["version"]) for e in ready.json()] == [("bert", "2")]
    assert (await _embed(client, "bert"))[1] == "2"

    # A new version folder, then Triton's load: it serves, and version 2 goes.
    _version(repo, "bert", "3", tiny_bert)
    r = await client.post("/v2/repository/models/bert/load")
    assert r.status_code == 200 and r.json() == {}
    assert (await _embed(client, "bert"))[1] == "3"
    states = {v: s["state"] for v, s in (await _versions(client, "bert")).items()}
    assert states == {"1": "available", "2": "available", "3": "ready"}
    # Loading again is a no-op; unloading takes the model down.
    assert (await client.post("/v2/repository/models/bert/load")).status_code == 200
    r = await client.post(
        "/v2/repository/models/bert/unload", json={"parameters": {"unload_dependents": False}}
    )
    assert r.status_code == 200
    down = await client.post("/v1/embeddings", json={"model": "bert", "input": "x"})
    assert down.status_code == 503
    missing = await client.post("/v2/repository/models/nope/load")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    with_files = await client.post(
        "/v2/repository/models/bert/load", json={"parameters": {"file:1/model.bin": "AA=="}}
    )
    assert with_files.status_code == 422


async def test_repository_aliases_and_explicit_control(
    make_async_client: Any, tiny_bert: Path, tiny_bert_cls: Path, tmp_path: Path
) -> None:
    toml = '[aliases]\ndefault = "1"\ncanary = "2"\n'
    repo = _two_versions(tmp_path, tiny_bert, tiny_bert_cls, toml)
    client = await make_async_client(Settings(model_repository=repo, warmup=False))
    assert (await _embed(client, "bert"))[1] == "1"
    assert (await _embed(client, "bert@canary"))[1] == "2"

    explicit = await make_async_client(
        Settings(model_repository=repo, warmup=False, repository_load_all=False)
    )
    index = (await explicit.post("/v2/repository/index")).json()
    assert {e["state"] for e in index} == {"UNAVAILABLE"}
    assert (await explicit.post("/v2/repository/models/bert/load")).status_code == 200
    assert (await _embed(explicit, "bert"))[1] == "1"


# -- swaps under load --------------------------------------------------------------------


async def test_twenty_swaps_under_mixed_load_drop_nothing(
    make_async_client: Any,
    tiny_bert: Path,
    tiny_bert_cls: Path,
    tiny_llama: Path,
    tiny_llama_b: Path,
) -> None:
    """Embeddings and streamed chat completions run without pause while versions a and
    b of both models swap 20 times: every request succeeds, and each answer is the
    one its version (the X-Model-Version header) gives."""
    client = await make_async_client(
        _settings(
            [
                f"bert:a={tiny_bert}",
                f"bert:b={tiny_bert_cls}",
                f"llama:a={tiny_llama}",
                f"llama:b={tiny_llama_b}",
            ],
            aliases={"bert": {"default": "a"}, "llama": {"default": "a"}},
        )
    )
    expected_vectors = {v: (await _embed(client, f"bert:{v}"))[0] for v in "ab"}

    async def chat(model: str) -> tuple[str, str]:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "tell me about swaps"}],
            "max_tokens": 12,
            "temperature": 0,
            "stream": True,
        }
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200, await r.aread()
            text = ""
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunk = json.loads(line[6:])
                    assert "error" not in chunk, chunk
                    for choice in chunk["choices"]:
                        text += choice["delta"].get("content") or ""
            return text, r.headers["x-model-version"]

    expected_text = {v: (await chat(f"llama:{v}"))[0] for v in "ab"}
    assert expected_text["a"] != expected_text["b"]
    for name in ("bert", "llama"):  # one version of each serves from here on
        r = await client.post(f"/admin/models/{name}/versions/b/unload")
        assert r.status_code == 200, r.text

    done = asyncio.Event()
    counts = {"embed": 0, "chat": 0}
    failures: list[str] = []

    async def embed_loop() -> None:
        while not done.is_set():
            try:
                vectors, seen = await _embed(client, "bert")
                if not np.allclose(vectors, expected_vectors[seen], atol=1e-5):
                    failures.append(f"embedding from bert:{seen} differs")
                counts["embed"] += 1
            except AssertionError as e:
                failures.append(f"embed: {e}")

    async def chat_loop() -> None:
        while not done.is_set():
            try:
                text, seen = await chat("llama@default")
                if text != expected_text[seen]:
                    failures.append(f"chat from llama:{seen}: {text!r}")
                counts["chat"] += 1
            except AssertionError as e:
                failures.append(f"chat: {e}")

    load = [asyncio.create_task(embed_loop()) for _ in range(3)]
    load += [asyncio.create_task(chat_loop()) for _ in range(3)]
    swaps = []
    try:
        for i in range(20):
            await asyncio.sleep(0.05)
            version = "ab"[(i + 1) % 2]
            for name in ("bert", "llama"):
                r = await client.post(
                    f"/admin/models/{name}/versions/{version}/load",
                    json={"aliases": ["default"], "unload_replaced": True},
                )
                assert r.status_code == 200, r.text
                states = {v["version"]: v["state"] for v in r.json()["versions"]}
                assert (
                    states[version] == "ready" and states["ab".replace(version, "")] == "available"
                )
            swaps.append(version)
    finally:
        done.set()
        await asyncio.gather(*load)
    assert failures == []
    assert len(swaps) == 20
    assert counts["embed"] > 20 and counts["chat"] > 20, counts


# -- MLflow Model Registry as a source ---------------------------------------------------


async def test_versions_load_from_the_mlflow_registry(
    make_async_client: Any,
    tiny_bert: Path,
    tiny_bert_cls: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``models:/NAME@ALIAS`` resolves to the MLflow version it names now, which is
    the served version's label; a moved MLflow alias is picked up by the next load."""
    from tests.mlflow_store import register_folder, sqlite_tracking_uri

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    uri = sqlite_tracking_uri(tmp_path)
    register_folder(uri, "minilm", tiny_bert, alias="champion")
    client = await make_async_client(
        _settings(["bert=models:/minilm@champion"], mlflow_tracking_uri=uri)
    )
    first, seen = await _embed(client, "bert")
    assert seen == "1"
    listed = await _versions(client, "bert")
    assert listed["1"]["source"] == "models:/minilm/1"  # pinned to what the alias named

    register_folder(uri, "minilm", tiny_bert_cls, alias="champion")
    r = await client.post(
        "/admin/models/bert/load",
        json={"source": "models:/minilm@champion", "unload_replaced": True},
    )
    assert r.status_code == 200, r.text
    states = {v["version"]: v["state"] for v in r.json()["versions"]}
    assert states == {"1": "available", "2": "ready"}
    second, seen = await _embed(client, "bert")
    assert seen == "2" and not np.allclose(first, second)
    missing = await client.post("/admin/models/bert/load", json={"source": "models:/minilm@nope"})
    assert missing.status_code == 400 and "nope" in missing.json()["error"]


# -- residency: eviction of idle versions, lazy loads, pins ----------------------------


async def _until_served(client: httpx.AsyncClient, model: str) -> tuple[np.ndarray, str]:
    for _ in range(200):
        r = await client.post("/v1/embeddings", json={"model": model, "input": TEXTS})
        if r.status_code == 200:
            vectors = np.array([d["embedding"] for d in r.json()["data"]])
            return vectors, r.headers["x-model-version"]
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
        await asyncio.sleep(0.05)
    raise AssertionError(f"{model} never came back")


async def test_the_least_recently_used_idle_version_is_evicted_and_comes_back(
    make_async_client: Any, tiny_bert: Path, tiny_bert_cls: Path
) -> None:
    client = await make_async_client(
        _settings([f"bert:1={tiny_bert}", f"bert:2={tiny_bert_cls}"], max_loaded_models=2)
    )
    v1, _ = await _embed(client, "bert:1")
    await _embed(client, "bert:2")
    # A third version: 2 is the default (the newest before it), 3 the new newest;
    # version 1 is neither, and the least recently used: it goes.
    r = await client.post("/admin/models/bert/versions/3/load", json={"source": str(tiny_bert)})
    assert r.status_code == 200, r.text
    states = {v["version"]: (v["state"], v["reason"]) for v in r.json()["versions"]}
    assert states["1"][0] == "evicted" and "bert:3" in states["1"][1]
    assert states["2"][0] == states["3"][0] == "ready"
    # A request for it: 503 with Retry-After, and it loads again (evicting version 2,
    # now neither the default nor aliased, and the least recently used).
    first = await client.post("/v1/embeddings", json={"model": "bert:1", "input": "x"})
    assert first.status_code == 503 and first.headers["retry-after"] == "2"
    assert "evicted" in first.json()["error"]["message"]
    again, seen = await _until_served(client, "bert:1")
    assert seen == "1" and np.allclose(again, v1)
    states = {v["version"]: v["state"] for v in (await _versions(client, "bert")).values()}
    assert states == {"1": "ready", "2": "evicted", "3": "ready"}
    index = (await client.post("/v2/repository/index")).json()
    assert {e["version"]: e["state"] for e in index}["2"] == "UNAVAILABLE"


async def test_pinned_and_aliased_versions_are_never_evicted(
    make_async_client: Any, tiny_bert: Path, tiny_bert_cls: Path
) -> None:
    client = await make_async_client(
        _settings([f"bert:1={tiny_bert}"], max_loaded_models=2, aliases={"bert": {"prod": "1"}})
    )
    r = await client.post(
        "/admin/models/bert/versions/2/load",
        json={"source": str(tiny_bert_cls), "settings": {"pin": True}},
    )
    assert r.status_code == 200 and {v["version"]: v["pinned"] for v in r.json()["versions"]} == {
        "1": False,
        "2": True,
    }
    # Version 1 is aliased (prod), version 2 pinned: no room for a third.
    full = await client.post("/admin/models/bert/versions/3/load", json={"source": str(tiny_bert)})
    assert full.status_code == 400 and "no room" in full.json()["error"]
    assert (await _embed(client, "bert@prod"))[1] == "1"
    assert (await _embed(client, "bert:2"))[1] == "2"


async def test_a_memory_budget_evicts_by_weight_size(
    make_async_client: Any, tiny_bert: Path, tiny_bert_cls: Path
) -> None:
    size_mib = sum(f.stat().st_size for f in tiny_bert.glob("*.safetensors")) / 2**20
    client = await make_async_client(
        _settings(
            [f"bert:1={tiny_bert}", f"other:1={tiny_bert_cls}"],
            max_loaded_memory_mib=size_mib * 2.5,  # two of them fit, not three
        )
    )
    r = await client.post("/admin/models/bert/versions/2/load", json={"source": str(tiny_bert)})
    assert r.status_code == 200, r.text
    # bert:1 and other:1 are their names' defaults (the newest before the load);
    # bert:2 takes bert's default from bert:1, which is then the only one that may go.
    states = {v["version"]: v["state"] for v in r.json()["versions"]}
    assert states == {"1": "evicted", "2": "ready"}
    assert (await _embed(client, "other"))[1] == "1"
