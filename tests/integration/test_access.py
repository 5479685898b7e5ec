"""API keys, the admin key and the loopback rule, on the in-process app: every
dialect's 401, the routes that stay open, admin-only fields and routes, and an audit
that no route goes without an access level."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter
from starlette.testclient import TestClient

from squeezer.config import Settings
from squeezer.server.access import Access, AccessPolicy, is_loopback, route_access
from squeezer.server.app import create_app
from tests.integration.conftest import bert_and_llama

KEYS = ["key-one", "key-two"]
ADMIN = "admin-key"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _with_write_route(settings: Settings) -> TestClient:
    """The app plus one route under ``/admin/``, where model management goes (issue 25
    adds load, unload and alias there): the rule is its path's, nothing to declare."""
    app = create_app(settings)
    router = APIRouter()

    @router.post("/admin/test-write")
    async def write() -> dict[str, bool]:
        return {"written": True}

    app.include_router(router)
    return TestClient(app)


@pytest.fixture(scope="module")
def keyed(tiny_bert: Path, tiny_llama: Path) -> Iterator[TestClient]:
    settings = bert_and_llama(tiny_bert, tiny_llama, api_keys=KEYS, admin_api_key=ADMIN)
    with _with_write_route(settings) as c:
        yield c


# Each dialect's routes, a body they accept, and how their 401 reads.
DIALECTS = [
    ("/embed", {"inputs": "hi"}, "tei"),
    ("/v1/embeddings", {"input": "hi", "model": "bert"}, "openai"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        "openai",
    ),
    ("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 2}}, "tgi"),
    ("/models/bert", {"inputs": "hi"}, "hf"),
    ("/v1/rerank", {"query": "q", "documents": ["d"], "model": "bert"}, "openai"),
    ("/tokenize", {"inputs": "hi"}, "tei"),
]


@pytest.mark.parametrize(("route", "body", "dialect"), DIALECTS)
def test_every_dialect_answers_401_in_its_own_shape(
    keyed: TestClient, route: str, body: dict[str, Any], dialect: str
) -> None:
    for headers in ({}, _bearer("wrong"), {"Authorization": f"Basic {KEYS[0]}"}):
        r = keyed.post(route, json=body, headers=headers)
        assert r.status_code == 401, (route, headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        error = r.json()["error"]
        if dialect == "openai":
            assert error["type"] == "invalid_request_error" and "API key" in error["message"]
        else:
            want = "unauthorized" if dialect == "tgi" else "Unauthorized"
            assert r.json()["error_type"] == want and "API key" in error
    # Either key, or the admin key, gets past the gate (a 200, or the route's own
    # verdict: /v1/rerank on an embedding model is a 400, not a 401).
    for key in [*KEYS, ADMIN]:
        r = keyed.post(route, json=body, headers=_bearer(key))
        assert r.status_code in (200, 400), (route, key, r.text)


def test_probes_and_the_api_description_stay_open(keyed: TestClient) -> None:
    for path in ("/health", "/ready", "/openapi.json", "/docs"):
        assert keyed.get(path).status_code == 200, path
    spec = keyed.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_metrics_take_the_admin_key_and_info_shows_paths_to_admins_only(
    keyed: TestClient, tiny_bert: Path
) -> None:
    assert keyed.get("/metrics").status_code == 401
    assert keyed.get("/metrics", headers=_bearer(KEYS[0])).status_code == 401
    r = keyed.get("/metrics", headers=_bearer(ADMIN))
    assert r.status_code == 200 and "squeezer_requests_total" in r.text
    assert keyed.get("/info").status_code == 401
    user = keyed.get("/info", headers=_bearer(KEYS[1])).json()
    assert {m["name"]: m["path"] for m in user["models"]} == {"bert": None, "llama": None}
    admin = keyed.get("/info", headers=_bearer(ADMIN)).json()
    assert admin["models"][0]["path"] == str(tiny_bert)
    assert admin["model_id"] == user["model_id"] == "bert"  # the rest is the same


def test_write_routes_take_only_the_admin_key_when_one_is_set(keyed: TestClient) -> None:
    assert keyed.post("/admin/test-write").status_code == 401
    r = keyed.post("/admin/test-write", headers=_bearer(KEYS[0]))
    assert r.status_code == 401 and "--admin-api-key" in r.json()["error"]
    assert keyed.post("/admin/test-write", headers=_bearer(ADMIN)).json() == {"written": True}


def test_without_an_admin_key_write_routes_need_a_loopback_bind(
    tiny_bert: Path, tiny_llama: Path
) -> None:
    exposed = bert_and_llama(tiny_bert, tiny_llama, host="0.0.0.0", api_keys=KEYS)
    with _with_write_route(exposed) as c:
        r = c.post("/admin/test-write", headers=_bearer(KEYS[0]))
        assert r.status_code == 403
        assert r.json()["error_type"] == "Forbidden" and "--admin-api-key" in r.json()["error"]
        # Read-only admin routes follow --api-key.
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=_bearer(KEYS[0])).status_code == 200
        info = c.get("/info", headers=_bearer(KEYS[0])).json()
        assert info["models"][0]["path"] is not None  # no admin key: key holders see it
    local = bert_and_llama(tiny_bert, tiny_llama, host="127.0.0.1")
    with _with_write_route(local) as c:  # no keys at all, loopback: open
        assert c.post("/admin/test-write").json() == {"written": True}
        assert c.post("/embed", json={"inputs": "hi"}).status_code == 200


def test_every_route_is_behind_a_key_unless_it_is_a_probe(keyed: TestClient) -> None:
    """A route added without an access level would be open to anyone: every operation
    the API publishes is called without a key, and only the probes answer."""
    spec = keyed.get("/openapi.json").json()
    answered: dict[str, int] = {}
    for path, operations in spec["paths"].items():
        concrete = path.replace("{name}", "bert").replace("{model}", "bert")
        for method in operations:
            r = keyed.request(method.upper(), concrete, json={})
            answered[f"{method.upper()} {path}"] = r.status_code
    opened = {op for op, status in answered.items() if status != 401}
    probes = {"GET /health", "GET /ready", "GET /v2/health/live", "GET /v2/health/ready"}
    assert opened == probes, answered
    assert len(answered) > 25  # every dialect's routes were there to be tried
    for op, operation in ((op, spec["paths"][op.split(" ")[1]]) for op in answered):
        method = op.split(" ")[0].lower()
        secured = "security" in operation[method]
        assert secured is (op not in opened), op  # the published contract says so too


def test_route_levels_default_to_inference() -> None:
    assert route_access("/health") is route_access("/v2/health/ready") is Access.OPEN
    assert route_access("/metrics") is Access.ADMIN_READ
    assert route_access("/admin/models/x/load") is Access.ADMIN_WRITE
    assert route_access("/v2/repository/index") is Access.ADMIN_WRITE
    for path in ("/embed", "/info", "/v1/models", "/a/route/added/later", "/healthz"):
        assert route_access(path) is Access.INFERENCE, path


def test_keys_are_compared_in_full() -> None:
    policy = AccessPolicy((b"secret-key",), b"admin", loopback=True)
    policy.check(Access.INFERENCE, b"secret-key")
    for near in (b"secret-ke", b"secret-key ", b"SECRET-KEY", b"", None):
        with pytest.raises(Exception, match="API key"):
            policy.check(Access.INFERENCE, near)
    assert not policy.sees_admin_fields(b"secret-key")
    assert policy.sees_admin_fields(b"admin")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("example.com", False)],
)  # fmt: skip
def test_loopback_binds(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_keys_from_a_file_and_settings_refuse_blank_keys(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from squeezer.config import read_keys

    path = tmp_path / "keys"
    path.write_text("# team keys\nkey-a\n\n  key-b  \n")
    assert read_keys(path) == ["key-a", "key-b"]
    with pytest.raises(ValidationError, match="whitespace"):
        Settings(api_keys=["has space"])
    with pytest.raises(ValidationError, match="non-empty"):
        Settings(admin_api_key="")
    with pytest.raises(ValidationError, match="both"):
        Settings(ssl_certfile=tmp_path / "cert.pem")
    keyed = Settings(api_keys=["key-a"], admin_api_key="key-b")
    assert "key-a" not in repr(keyed) and "key-b" not in repr(keyed)
    # API processes (--api-workers) get their settings as JSON: the keys go with them.
    again = Settings.model_validate_json(keyed.model_dump_json())
    assert (again.api_keys, again.admin_api_key) == (["key-a"], "key-b")
