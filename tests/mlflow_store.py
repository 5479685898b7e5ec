"""An MLflow tracking store made at test time: SQLite in tmp_path, artifacts beside it.

Everything goes through ``MlflowClient`` bound to the store's URI rather than the
fluent ``mlflow.start_run()`` / ``mlflow.log_artifacts()``: those read and set the
process-wide tracking URI and active run, which would leak from one test into the next.
The effect is the same: ``folder`` logged as a run's ``model`` artifacts and the
``runs:/RUN/model`` URI registered.

Importing this module imports mlflow (about a second): import it once per test module.
"""

from __future__ import annotations

import os
from pathlib import Path

# MLflow's usage telemetry would write ~/.config/mlflow and try the network.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

EXPERIMENT = "squeezer-tests"


def _artifact_root(tracking_uri: str) -> str | None:
    """``artifacts/`` beside a SQLite file; None lets a server choose."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
    return None


def _experiment_id(client: MlflowClient, tracking_uri: str) -> str:
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        return str(found.experiment_id)
    return str(client.create_experiment(EXPERIMENT, artifact_location=_artifact_root(tracking_uri)))


def sqlite_tracking_uri(tmp_path: Path) -> str:
    """A fresh SQLite tracking + registry store in ``tmp_path`` (about 1.5 s: migrations).

    The test experiment keeps its artifacts in ``tmp_path/artifacts``; MLflow's
    ``Default`` experiment would put them in ``./mlruns``, so nothing should log there.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _experiment_id(MlflowClient(tracking_uri=uri), uri)
    return uri


def register_folder(
    tracking_uri: str, registered_name: str, folder: Path, *, alias: str | None = None
) -> str:
    """Log ``folder`` as a run's ``model`` artifacts, register it, return the version.

    Safe to call again: each call is a new run and a new version of ``registered_name``
    (created if missing); ``alias``, when given, moves to the new version.
    """
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run = client.create_run(_experiment_id(client, tracking_uri))
    run_id = run.info.run_id
    try:
        client.log_artifacts(run_id, str(folder), artifact_path="model")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    try:
        client.create_registered_model(registered_name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    mv = client.create_model_version(registered_name, f"runs:/{run_id}/model", run_id=run_id)
    version = str(mv.version)
    if alias is not None:
        client.set_registered_model_alias(registered_name, alias, version)
    return version
