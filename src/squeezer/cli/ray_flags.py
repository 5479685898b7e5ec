"""The Ray Serve flags ``serve --ray`` and ``ray-config`` share, declared once."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from squeezer.cli.app import option

RayAddress = Annotated[
    str | None,
    option(
        "A running Ray cluster (ray://HOST:10001, or auto). Unset: a local Ray for this process.",
        "RAY_ADDRESS",
    ),
]
RayHaproxy = Annotated[
    bool,
    option(
        "A local Ray's HTTP in front: Ray Serve's direct ingress behind HAProxy rather "
        "than its Python proxy; about half the per-request overhead "
        "(docs/scale-out.md). On a cluster, set RAY_SERVE_ENABLE_DIRECT_INGRESS=1 "
        "RAY_SERVE_ENABLE_HA_PROXY=1 for `ray start` on every node instead.",
        "RAY_HAPROXY",
    ),
]
Replicas = Annotated[
    int | None,
    option("Engine replicas per engine deployment, without autoscaling. [default: 1]", "REPLICAS"),
]
MinReplicas = Annotated[
    int | None,
    option("Autoscaling: fewest engine replicas (with --max-replicas).", "MIN_REPLICAS"),
]
MaxReplicas = Annotated[
    int | None,
    option("Autoscaling: most engine replicas (with --min-replicas).", "MAX_REPLICAS"),
]
TargetOngoing = Annotated[
    float | None,
    option(
        "Autoscaling: requests in progress per engine replica that Ray Serve scales "
        "toward. [default: Ray Serve's, 2]",
        "TARGET_ONGOING_REQUESTS",
    ),
]
MaxOngoing = Annotated[
    int | None,
    option(
        "Requests one engine replica takes at once (beyond: queued by Ray Serve). "
        "[default: --max-concurrent-requests]",
        "MAX_ONGOING_REQUESTS",
    ),
]
MaxQueued = Annotated[
    int | None,
    option(
        "Requests Ray Serve queues per engine deployment beyond that; past it: 429. "
        "[default: -1 = no bound]",
        "MAX_QUEUED_REQUESTS",
    ),
]
ReplicaCpus = Annotated[
    float | None,
    option("CPUs each engine replica takes (its compute threads). [default: 1]", "REPLICA_CPUS"),
]
ReplicaGpus = Annotated[
    float | None, option("GPUs each engine replica takes. [default: 0]", "REPLICA_GPUS")
]
MaxPerNode = Annotated[
    int | None,
    option(
        "At most this many engine replicas of a deployment per node (1: one per node). "
        "[default: no limit]",
        "MAX_REPLICAS_PER_NODE",
    ),
]
IngressReplicas = Annotated[
    int | None,
    option("Ingress replicas (HTTP, tokenization, JSON). [default: 1]", "INGRESS_REPLICAS"),
]
EnginePerModel = Annotated[
    bool | None,
    option(
        "One engine deployment per --model, each scaled on its own and routed to by "
        "model name. [default: one deployment holds every model]",
        "ENGINE_PER_MODEL",
    ),
]
ReplicaMetricsPort = Annotated[
    int | None,
    option(
        "Port of each engine replica's Prometheus endpoint on its node; listed at "
        "/metrics/targets. [default: 0 = any free port]",
        "REPLICA_METRICS_PORT",
    ),
]

#: Flag name -> ``Scaling`` field.
_FIELDS = {
    "replicas": "replicas",
    "min_replicas": "min_replicas",
    "max_replicas": "max_replicas",
    "target_ongoing_requests": "target_ongoing_requests",
    "max_ongoing_requests": "max_ongoing_requests",
    "max_queued_requests": "max_queued_requests",
    "replica_cpus": "replica_cpus",
    "replica_gpus": "replica_gpus",
    "max_replicas_per_node": "max_replicas_per_node",
    "ingress_replicas": "ingress_replicas",
    "engine_per_model": "engine_per_model",
    "replica_metrics_port": "metrics_port",
}


def refuse_without_ray(flags: dict[str, Any]) -> None:
    """A Ray flag given to ``serve`` without ``--ray`` would do nothing: say so."""
    given = [f for f in (*_FIELDS, "ray_address") if flags.get(f) is not None]
    given += ["ray_haproxy"] if flags.get("ray_haproxy") else []
    if given:
        names = ", ".join("--" + f.replace("_", "-") for f in given)
        raise typer.BadParameter(f"{names} take effect with --ray only")


def scaling_from(flags: dict[str, Any]) -> Any:
    """The ``Scaling`` the flags ask for (unset flags keep its defaults)."""
    from pydantic import ValidationError

    from squeezer.cluster.application import Scaling

    chosen = {field: flags[flag] for flag, field in _FIELDS.items() if flags.get(flag) is not None}
    try:
        return Scaling(**chosen)
    except ValidationError as e:
        raise typer.BadParameter("; ".join(err["msg"] for err in e.errors())) from None


__all__ = ["refuse_without_ray", "scaling_from"]
