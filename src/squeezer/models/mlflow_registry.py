"""Versions of the MLflow Model Registry as local Hugging Face folders, downloaded once.

A registered version here is an HF folder logged as run artifacts and registered
(``runs:/RUN/model``), not MLflow's transformers flavor: squeezer loads the folder
itself, so it needs only the files. Two spellings pin what is served:
``models:/NAME/3`` (a version, which never changes) and ``models:/NAME@ALIAS`` (an
alias, resolved once at load time). Stages and ``latest`` are refused: stages are
deprecated in MLflow, and both would change what a restart serves without anyone
saying so in the server's arguments.

Downloads land in ``CACHE/NAME/VERSION``: written to a scratch folder and renamed into
place with a marker inside, so a crash mid-download never leaves a folder that looks
complete. A cached folder is reused only while the registry still names the same
source for that version (a model deleted and registered again, or another server's
model of the same name, gets its files downloaded afresh).

``mlflow`` is optional (``squeezer[mlflow]``) and takes about a second to import, so it
is imported only when a ``models:/`` spec is resolved.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from squeezer.errors import ModelLoadError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("squeezer.models")

MLFLOW_PREFIX = "models:/"
#: Written last into a complete download: its absence means "download again".
_MARKER = ".squeezer-mlflow.json"
_FORMS = "models:/NAME/VERSION (a version number, e.g. models:/NAME/3) or models:/NAME@ALIAS"
_SQLITE = "sqlite:///"


@dataclass(frozen=True, slots=True)
class MlflowVersion:
    """One registered version, resolved and on local disk."""

    registered_name: str
    #: The version number, as MLflow spells it (an alias is resolved to one).
    version: str
    #: The local HF folder (holds ``config.json``).
    path: Path


@dataclass(frozen=True, slots=True)
class _Ref:
    name: str
    #: A version number, or an alias name when ``is_alias``.
    label: str
    is_alias: bool


def is_mlflow_uri(spec: str) -> bool:
    """True for a ``models:/...`` spec (checked before any path or hub-id reading)."""
    return spec.startswith(MLFLOW_PREFIX)


def mlflow_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "squeezer" / "mlflow"


def _parse(spec: str) -> _Ref:
    def bad(why: str) -> ModelLoadError:
        return ModelLoadError(f"MLflow model {spec!r}: {why}; use {_FORMS}")

    if not is_mlflow_uri(spec):
        raise bad(f"does not start with {MLFLOW_PREFIX!r}")
    rest = spec[len(MLFLOW_PREFIX) :]
    if "@" in rest:
        name, _, alias = rest.partition("@")
        if not alias or "/" in alias or "@" in alias:
            raise bad(f"alias {alias!r} is not a plain alias name")
        ref = _Ref(name, alias, is_alias=True)
    else:
        name, sep, version = rest.rpartition("/")
        if not sep:
            raise bad("names no version or alias")
        if version == "latest":
            raise bad("'latest' is refused: it changes what a restart serves unannounced")
        if not re.fullmatch(r"[0-9]+", version):
            raise bad(
                f"{version!r} is not a version number (stages such as Production are "
                "deprecated in MLflow and refused; point an alias at the version instead)"
            )
        ref = _Ref(name, version, is_alias=False)
    if not ref.name or any(c in ref.name for c in "/:") or ref.name in (".", ".."):
        raise bad(f"{ref.name!r} is not a registered model name (no '/' or ':', not empty)")
    return ref


def _tracking_uri(explicit: str | None) -> str:
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        # MLflow's own fallback is ./mlflow.db in the working directory: an empty
        # database created on the spot, which can never hold the model asked for.
        raise ModelLoadError(
            "no MLflow tracking server given for models:/ sources: set MLFLOW_TRACKING_URI "
            "(e.g. http://mlflow:5000) or the server's MLflow tracking URI setting"
        )
    if uri.startswith(_SQLITE):
        db = uri[len(_SQLITE) :].split("?", 1)[0]
        if db and db != ":memory:" and not Path(db).is_file():
            # MLflow would create an empty database (and its folders) at a mistyped path.
            raise ModelLoadError(f"MLflow tracking URI {uri!r} names no existing database file")
    return uri


def _import_mlflow() -> tuple[type[MlflowClient], Any]:
    try:
        import mlflow.artifacts
        from mlflow.tracking import MlflowClient
    except ImportError as e:
        raise ModelLoadError(
            f"models:/ sources need MLflow's client: install squeezer[mlflow] ({e})"
        ) from e
    return MlflowClient, mlflow.artifacts


def resolve_mlflow(
    spec: str, *, tracking_uri: str | None = None, cache_dir: Path | None = None
) -> MlflowVersion:
    """Resolve ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` to a local HF folder.

    ``tracking_uri`` None reads ``MLFLOW_TRACKING_URI``; the registry is the tracking
    server unless ``MLFLOW_REGISTRY_URI`` says otherwise (MLflow's own rule). Every
    failure is a ``ModelLoadError`` that says what to fix.
    """
    ref = _parse(spec)
    uri = _tracking_uri(tracking_uri)
    client_cls, artifacts = _import_mlflow()
    try:
        client = client_cls(tracking_uri=uri)
    except Exception as e:
        raise _unreachable(spec, uri, e) from e
    try:
        if ref.is_alias:
            mv = client.get_model_version_by_alias(ref.name, ref.label)
        else:
            mv = client.get_model_version(ref.name, ref.label)
    except Exception as e:  # MLflow wraps most failures, not all (a broken store, a bug)
        raise _lookup_error(client, ref, spec, uri, e) from e
    version = str(mv.version)
    source = str(mv.source)
    target = (cache_dir or mlflow_cache_dir()) / ref.name / version
    cached = _cached_folder(target, source)
    if cached is not None:
        log.info("MLflow %s: version %s found in %s", spec, version, cached)
        return MlflowVersion(ref.name, version, cached)
    path = _download(artifacts.download_artifacts, spec, source, uri, target)
    return MlflowVersion(ref.name, version, path)


def _unreachable(spec: str, uri: str, e: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"{spec}: could not ask the MLflow registry at {uri} ({e}); check the tracking "
        "URI and that the server is up"
    )


def _lookup_error(
    client: MlflowClient, ref: _Ref, spec: str, uri: str, e: Exception
) -> ModelLoadError:
    """Say which part of the spec is unknown, and what exists instead."""
    # A missing alias is INVALID_PARAMETER_VALUE in some stores, RESOURCE_DOES_NOT_EXIST
    # in others; anything else (connection refused, 5xx, bad URI) is not "unknown".
    if getattr(e, "error_code", "") not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
        return _unreachable(spec, uri, e)
    try:
        model = client.get_registered_model(ref.name)
    except Exception as again:
        if getattr(again, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return ModelLoadError(f"{spec}: no registered model {ref.name!r} in MLflow at {uri}")
        return _unreachable(spec, uri, e)
    what = f"no alias {ref.label!r}" if ref.is_alias else f"no version {ref.label}"
    aliases = ", ".join(f"{a} -> {v}" for a, v in sorted(model.aliases.items())) or "none"
    return ModelLoadError(
        f"{spec}: registered model {ref.name!r} in MLflow at {uri} has {what} "
        f"(its aliases: {aliases})"
    )


def _read_marker(target: Path) -> dict[str, str] | None:
    try:
        record = json.loads((target / _MARKER).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _cached_folder(target: Path, source: str) -> Path | None:
    record = _read_marker(target)
    if record is None or record.get("source") != source:
        return None
    folder = target / record.get("folder", "")
    return folder if (folder / "config.json").is_file() else None


def _hf_folder(root: Path, spec: str) -> Path:
    if (root / "config.json").is_file():
        return root
    if not root.is_dir():
        raise ModelLoadError(f"{spec}: its artifacts are a single file, not a model folder")
    subs = [d for d in root.iterdir() if d.is_dir() and (d / "config.json").is_file()]
    if len(subs) == 1:
        return subs[0]
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    shown = ", ".join(found[:12]) + (", ..." if len(found) > 12 else "") or "nothing"
    where = "several subfolders have one" if subs else "neither it nor one subfolder has one"
    raise ModelLoadError(
        f"{spec}: its artifacts hold no single Hugging Face folder (config.json: {where}); "
        f"found: {shown}"
    )


def _download(download: Any, spec: str, source: str, uri: str, target: Path) -> Path:
    t0 = time.perf_counter()
    log.info("MLflow %s: downloading %s to %s", spec, source, target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as e:
        raise ModelLoadError(f"{spec}: cannot write the MLflow cache {target.parent}: {e}") from e
    try:
        try:
            local = Path(download(artifact_uri=source, dst_path=str(scratch), tracking_uri=uri))
        except Exception as e:
            raise ModelLoadError(
                f"{spec}: could not download its files from {source} (tracking URI {uri}): {e}"
            ) from e
        folder = _hf_folder(local, spec).relative_to(scratch)
        (scratch / _MARKER).write_text(json.dumps({"source": source, "folder": str(folder)}))
        shutil.rmtree(target, ignore_errors=True)  # an older or incomplete copy
        try:
            scratch.rename(target)
        except OSError:
            # Another process may have renamed its own complete copy into place first.
            if _cached_folder(target, source) is None:
                raise
    except OSError as e:
        raise ModelLoadError(f"{spec}: cannot write the MLflow cache {target}: {e}") from e
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("MLflow %s: downloaded in %.1f s", spec, time.perf_counter() - t0)
    return target / folder
