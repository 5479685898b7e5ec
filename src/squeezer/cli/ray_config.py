"""``squeezer ray-config``: a Ray Serve config for ``serve deploy`` (KubeRay's
RayService takes the same document as its ``serveConfigV2``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from squeezer.cli import ray_flags as rf
from squeezer.cli.app import app, option

_HEADER = """\
# A Ray Serve config for squeezer, written by `squeezer ray-config`.
# Deploy: serve deploy THIS_FILE (a running cluster: RAY_ADDRESS), or paste it as a
# KubeRay RayService's serveConfigV2. Every node needs squeezer[ray] installed and the
# model paths below (a shared volume, or the same image); docs/scale-out.md.
# API keys are not written here: set SQUEEZER_API_KEY / SQUEEZER_API_KEY_FILE and
# SQUEEZER_ADMIN_API_KEY / SQUEEZER_ADMIN_API_KEY_FILE in the replicas' environment
# (runtime_env env_vars, or the pod spec from a Kubernetes Secret).
# The deployments' options below override the scaling args: tune them in place.
"""


@app.command("ray-config")
def ray_config(
    output: Annotated[Path, typer.Option("--output", "-o", help="YAML file to write.")],
    model: Annotated[
        list[str] | None,
        option("Model as NAME=PATH or NAME:VERSION=PATH (repeatable), as serve takes.", "MODEL"),
    ] = None,
    config: Annotated[
        Path | None,
        option("squeezer TOML: [server] settings and [models.NAME] tables.", "CONFIG", exists=True),
    ] = None,
    host: Annotated[
        str | None, option("Address Ray Serve's proxies bind. [default: 0.0.0.0]", "HOST")
    ] = None,
    port: Annotated[
        int | None, option("Port of Ray Serve's proxies. [default: 8000]", "PORT")
    ] = None,
    prepare: Annotated[
        bool,
        typer.Option(
            help="Resolve each model here first (GGUF conversion, MLflow download, "
            "--optimize's search) and write the prepared paths.",
        ),
    ] = True,
    replicas: rf.Replicas = None,
    min_replicas: rf.MinReplicas = None,
    max_replicas: rf.MaxReplicas = None,
    target_ongoing_requests: rf.TargetOngoing = None,
    max_ongoing_requests: rf.MaxOngoing = None,
    max_queued_requests: rf.MaxQueued = None,
    replica_cpus: rf.ReplicaCpus = None,
    replica_gpus: rf.ReplicaGpus = None,
    max_replicas_per_node: rf.MaxPerNode = None,
    ingress_replicas: rf.IngressReplicas = None,
    engine_per_model: rf.EnginePerModel = None,
    replica_metrics_port: rf.ReplicaMetricsPort = None,
) -> None:
    """Write a Ray Serve config (serve deploy / KubeRay) for these models."""
    import yaml

    from squeezer.cli.ray_flags import scaling_from
    from squeezer.cli.serve_settings import settings_from_flags
    from squeezer.cluster.application import config_document
    from squeezer.cluster.application import prepare as prepare_models
    from squeezer.errors import SqueezerError

    flags = dict(locals())
    flags["host"] = host or "0.0.0.0"
    flags["port"] = port or 8000
    settings = settings_from_flags(flags)
    try:
        if prepare:
            settings = prepare_models(settings)
        document = config_document(settings, scaling_from(flags))
    except SqueezerError as e:
        typer.echo(f"squeezer: {e.message}", err=True)
        raise typer.Exit(2) from None
    output.write_text(_HEADER + yaml.safe_dump(document, sort_keys=False))
    typer.echo(f"wrote {output}: serve deploy {output}")


__all__ = ["ray_config"]
