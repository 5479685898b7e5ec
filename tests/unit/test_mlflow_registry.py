"""MLflow registry versions as local folders, against a SQLite store made at test time."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
from pathlib import Path

import pytest

# Before mlflow's first import, which starts its usage telemetry (~/.config/mlflow).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
pytest.importorskip("mlflow", reason="needs squeezer[mlflow]")

import mlflow.artifacts

from squeezer.errors import ModelLoadError
from squeezer.models import locate
from squeezer.models.mlflow_registry import (
    MlflowVersion,
    is_mlflow_uri,
    resolve_mlflow,
)
from tests.mlflow_store import register_folder, sqlite_tracking_uri


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One store for the module: its migrations cost more than all the tests."""
    return sqlite_tracking_uri(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture(scope="module")
def registered(store: str, tiny_bert: Path) -> str:
    """``bert`` version 1, aliased ``champion``."""
    assert register_folder(store, "bert", tiny_bert, alias="champion") == "1"
    return "bert"


def files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".squeezer")
    }


def test_spelling() -> None:
    assert is_mlflow_uri("models:/x/1") and is_mlflow_uri("models:/x@a")
    assert not is_mlflow_uri("org/name") and not is_mlflow_uri("package:x")


def test_version_and_alias_resolve_to_the_logged_files(
    store: str, registered: str, tiny_bert: Path, tmp_path: Path
) -> None:
    by_version = resolve_mlflow("models:/bert/1", tracking_uri=store, cache_dir=tmp_path)
    assert by_version.registered_name == "bert" and by_version.version == "1"
    assert (by_version.path / "config.json").is_file()
    assert by_version.path.is_relative_to(tmp_path / "bert" / "1")
    assert files(by_version.path) == files(tiny_bert)
    by_alias = resolve_mlflow("models:/bert@champion", tracking_uri=store, cache_dir=tmp_path)
    assert by_alias == by_version
    assert not [p for p in (tmp_path / "bert").iterdir() if p.name != "1"]  # no scratch left


def test_moved_alias_resolves_to_the_new_version(
    store: str, tiny_bert: Path, tiny_bert_cls: Path, tmp_path: Path
) -> None:
    register_folder(store, "moving", tiny_bert, alias="prod")
    first = resolve_mlflow("models:/moving@prod", tracking_uri=store, cache_dir=tmp_path)
    assert register_folder(store, "moving", tiny_bert_cls, alias="prod") == "2"
    second = resolve_mlflow("models:/moving@prod", tracking_uri=store, cache_dir=tmp_path)
    assert (first.version, second.version) == ("1", "2")
    assert files(second.path) == files(tiny_bert_cls) != files(first.path)


def test_cache_is_reused_without_downloading(
    store: str, registered: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = resolve_mlflow("models:/bert/1", tracking_uri=store, cache_dir=tmp_path)

    def no_download(**kwargs: object) -> str:
        raise AssertionError(f"downloaded again: {kwargs}")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", no_download)
    assert resolve_mlflow("models:/bert@champion", tracking_uri=store, cache_dir=tmp_path) == first


@pytest.mark.parametrize("leftover", ["no marker", "other source"])
def test_incomplete_or_foreign_cache_is_downloaded_again(
    store: str, registered: str, tiny_bert: Path, tmp_path: Path, leftover: str
) -> None:
    target = tmp_path / "bert" / "1"
    (target / "model").mkdir(parents=True)
    (target / "model" / "config.json").write_text("{}")  # looks like a model, is not ours
    if leftover == "other source":
        record = {"source": "runs:/elsewhere/model", "folder": "model"}
        (target / ".squeezer-mlflow.json").write_text(json.dumps(record))
    got = resolve_mlflow("models:/bert/1", tracking_uri=store, cache_dir=tmp_path)
    assert files(got.path) == files(tiny_bert)


def test_a_failed_download_leaves_nothing_that_looks_complete(
    store: str, registered: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = mlflow.artifacts.download_artifacts

    def crash(**kwargs: object) -> str:
        real(**kwargs)  # every file lands, then the process "dies" before the marker
        raise OSError("disk full")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", crash)
    with pytest.raises(ModelLoadError, match=r"could not download.*disk full"):
        resolve_mlflow("models:/bert/1", tracking_uri=store, cache_dir=tmp_path)
    assert list((tmp_path / "bert").iterdir()) == []
    monkeypatch.undo()
    assert resolve_mlflow("models:/bert/1", tracking_uri=store, cache_dir=tmp_path).version == "1"


def test_model_folder_one_level_down(store: str, tiny_bert: Path, tmp_path: Path) -> None:
    logged = tmp_path / "logged"
    shutil.copytree(tiny_bert, logged / "weights")
    (logged / "NOTES.md").write_text("trained on tuesday")
    register_folder(store, "nested", logged)
    got = resolve_mlflow("models:/nested/1", tracking_uri=store, cache_dir=tmp_path / "cache")
    assert got.path.name == "weights" and files(got.path) == files(tiny_bert)


def test_no_model_folder_names_what_was_found(store: str, tmp_path: Path) -> None:
    logged = tmp_path / "logged"
    (logged / "a").mkdir(parents=True)
    (logged / "README.md").write_text("no model here")
    register_folder(store, "empty", logged)
    with pytest.raises(ModelLoadError, match=r"config\.json.*found: README\.md, a/"):
        resolve_mlflow("models:/empty/1", tracking_uri=store, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "empty" / "1").exists()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("models:/nope/1", "no registered model 'nope'"),
        ("models:/nope@champion", "no registered model 'nope'"),
        ("models:/bert/7", r"'bert' .* has no version 7 \(its aliases: champion -> 1\)"),
        ("models:/bert@gone", r"'bert' .* has no alias 'gone' \(its aliases: champion -> 1\)"),
    ],
)
def test_unknown_names_say_what_exists(
    store: str, registered: str, tmp_path: Path, spec: str, message: str
) -> None:
    with pytest.raises(ModelLoadError, match=message) as e:
        resolve_mlflow(spec, tracking_uri=store, cache_dir=tmp_path)
    assert store in e.value.message


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("models:/bert/Production", "stages such as Production are deprecated"),
        ("models:/bert/latest", "'latest' is refused"),
        ("models:/bert", "names no version or alias"),
        ("models:/", "names no version or alias"),
        ("models:/bert@", "not a plain alias"),
        ("models:/bert@a/b", "not a plain alias"),
        ("models:/@champion", "'' is not a registered model name"),
        ("models:/a/b/1", "'a/b' is not a registered model name"),
    ],
)
def test_other_forms_are_refused_with_the_accepted_ones(spec: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message) as e:
        resolve_mlflow(spec, tracking_uri="sqlite:///unused.db")
    assert "models:/NAME/VERSION" in e.value.message and "models:/NAME@ALIAS" in e.value.message


def test_tracking_server_must_be_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ModelLoadError, match="set MLFLOW_TRACKING_URI"):
        resolve_mlflow("models:/bert/1")


def test_mistyped_sqlite_path_is_not_created(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'typo' / 'mlflow.db'}"
    with pytest.raises(ModelLoadError, match="names no existing database file"):
        resolve_mlflow("models:/bert/1", tracking_uri=uri)
    assert not (tmp_path / "typo").exists()


def test_unreachable_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    with pytest.raises(
        ModelLoadError, match=re.escape(f"could not ask the MLflow registry at {uri} (")
    ):
        resolve_mlflow("models:/bert/1", tracking_uri=uri, cache_dir=tmp_path)


def test_mlflow_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("mlflow", "mlflow.artifacts", "mlflow.tracking"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ModelLoadError, match=r"install squeezer\[mlflow\]"):
        resolve_mlflow("models:/bert/1", tracking_uri="http://mlflow:5000")


def test_locate_takes_registry_specs(
    store: str, registered: str, tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = locate("models:/bert/1")
    assert path.is_relative_to(tmp_path / "squeezer" / "mlflow" / "bert" / "1")
    assert files(path) == files(tiny_bert)
    assert locate("models:/bert@champion") == path
    assert isinstance(resolve_mlflow("models:/bert/1"), MlflowVersion)
