"""squeezer as a Ray Serve application: an ingress deployment (the HTTP app, every
dialect) in front of engine deployments (the models), scaled by ``Scaling``.

``build`` makes the application from ``Settings``; ``app_builder`` is the same for
``serve deploy`` (a config's ``import_path``, its ``args`` holding both), and
``config_document`` writes that config. ``prepare`` runs before any replica starts:
a GGUF file's conversion, an MLflow version's download and ``--optimize``'s search
happen once, on the machine that deploys, and the replicas load what they left.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from squeezer.cluster.replicas import EngineReplica, IngressReplica, ReplicaSetup
from squeezer.config import ModelSettings, Settings
from squeezer.errors import InvalidRequestError

#: ``serve deploy``'s import path of ``app_builder``.
IMPORT_PATH = "squeezer.cluster.application:app_builder"
INGRESS = "ingress"


class Scaling(BaseModel):
    """How many replicas of what: the ``--ray`` flags, and a config's ``scaling`` args."""

    model_config = ConfigDict(extra="forbid")

    #: The Serve application's name (its metrics' ``application`` label).
    name: str = "squeezer"
    #: Engine replicas per engine deployment, when not autoscaling.
    replicas: int = Field(default=1, ge=1)
    #: Autoscaling: set both bounds (``target_ongoing_requests`` per replica).
    min_replicas: int | None = Field(default=None, ge=0)
    max_replicas: int | None = Field(default=None, ge=1)
    target_ongoing_requests: float | None = Field(default=None, gt=0)
    #: Requests one engine replica takes at once; None: ``--max-concurrent-requests``.
    #: Ray Serve's own default (5) would starve dynamic batching.
    max_ongoing_requests: int | None = Field(default=None, ge=1)
    #: Requests Ray Serve queues for an engine deployment beyond that; past it: 429.
    #: -1: no bound (the engines' own limits still answer 429).
    max_queued_requests: int = Field(default=-1, ge=-1)
    #: Each engine replica's share of its node: CPUs (its compute threads) and GPUs.
    replica_cpus: float = Field(default=1.0, ge=0)
    replica_gpus: float = Field(default=0.0, ge=0)
    #: At most this many engine replicas of a deployment on one node (1: one per node,
    #: e.g. a node's GPUs all to one replica); None: Ray places them as it likes.
    max_replicas_per_node: int | None = Field(default=None, ge=1)
    ingress_replicas: int = Field(default=1, ge=1)
    ingress_cpus: float = Field(default=0.0, ge=0)
    #: One engine deployment per model (scaled on its own, routed to by name) rather
    #: than one deployment holding every model.
    engine_per_model: bool = False
    #: Port of each engine replica's Prometheus endpoint on its node (0: any free).
    metrics_port: int = Field(default=0, ge=0, le=65535)

    @model_validator(mode="after")
    def _autoscaling_bounds(self) -> Scaling:
        bounds = (self.min_replicas, self.max_replicas)
        if (bounds[0] is None) != (bounds[1] is None):
            raise ValueError("autoscaling takes both --min-replicas and --max-replicas")
        if bounds[0] is not None and bounds[1] is not None and bounds[0] > bounds[1]:
            raise ValueError(f"--min-replicas {bounds[0]} is above --max-replicas {bounds[1]}")
        if self.target_ongoing_requests is not None and bounds[0] is None:
            raise ValueError("--target-ongoing-requests is an autoscaling setting: set the bounds")
        return self

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None


@dataclass(frozen=True, slots=True)
class EngineGroup:
    """One engine deployment: its name and the settings its replicas load."""

    name: str
    settings: Settings


def engine_groups(settings: Settings, scaling: Scaling) -> list[EngineGroup]:
    if not scaling.engine_per_model:
        return [EngineGroup("engine", _replica_settings(settings, scaling))]
    if settings.model_repository is not None:
        raise InvalidRequestError(
            "--engine-per-model splits --model models; a model repository is served "
            "by one engine deployment"
        )
    groups = []
    for spec in settings.models:
        one = settings.model_copy(
            update={
                "models": [spec],
                "default_models": {
                    t: n for t, n in settings.default_models.items() if n == spec.name
                },
                "aliases": {n: a for n, a in settings.aliases.items() if n == spec.name},
            }
        )
        groups.append(EngineGroup(f"engine-{spec.name}", _replica_settings(one, scaling)))
    return groups


def _replica_settings(settings: Settings, scaling: Scaling) -> Settings:
    """A replica is one process: no API workers of its own, and as many compute
    threads as the CPUs it reserved (unless ``--threads`` says; with none reserved,
    one per core it may use)."""
    threads = settings.threads or int(scaling.replica_cpus)
    return settings.model_copy(update={"api_workers": 0, "threads": threads})


def engine_options(settings: Settings, scaling: Scaling) -> dict[str, Any]:
    """Ray Serve deployment options of an engine deployment."""
    options: dict[str, Any] = {
        "max_ongoing_requests": scaling.max_ongoing_requests or settings.max_concurrent_requests,
        "max_queued_requests": scaling.max_queued_requests,
        # Serve waits this long for the requests a stopping replica accepted.
        "graceful_shutdown_timeout_s": settings.shutdown_timeout + settings.drain_delay,
        "ray_actor_options": {"num_cpus": scaling.replica_cpus, "num_gpus": scaling.replica_gpus},
        "logging_config": _logging(settings),
    }
    if scaling.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = scaling.max_replicas_per_node
    if scaling.autoscaling:
        autoscaling: dict[str, Any] = {
            "min_replicas": scaling.min_replicas,
            "max_replicas": scaling.max_replicas,
        }
        if scaling.target_ongoing_requests is not None:
            autoscaling["target_ongoing_requests"] = scaling.target_ongoing_requests
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = scaling.replicas
    return options


def ingress_options(settings: Settings, scaling: Scaling) -> dict[str, Any]:
    return {
        "num_replicas": scaling.ingress_replicas,
        # Each request here waits on an engine; the engines' limits are what bound work.
        "max_ongoing_requests": 4 * settings.max_concurrent_requests,
        "graceful_shutdown_timeout_s": settings.shutdown_timeout + settings.drain_delay,
        "ray_actor_options": {"num_cpus": scaling.ingress_cpus},
        "logging_config": _logging(settings),
    }


def _logging(settings: Settings) -> dict[str, Any]:
    """Ray Serve's own per-request log lines off: squeezer's access log (the ingress's,
    with ids, model and tokens; ``--no-access-log`` turns it off) is the one, and an
    engine call is not a request of anyone's."""
    return {"enable_access_log": False, "log_level": settings.log_level.upper()}


def build(settings: Settings, scaling: Scaling, *, setup: ReplicaSetup | None = None) -> Any:
    """The Serve application (``serve.run`` it). ``setup`` runs first in each engine
    replica (tests)."""
    from ray import serve

    deployment: Any = serve.deployment  # typed for decorator use only
    engines = {
        group.name: deployment(
            EngineReplica, name=group.name, **engine_options(group.settings, scaling)
        ).bind(group.settings.model_dump_json(), scaling.metrics_port, setup)
        for group in engine_groups(settings, scaling)
    }
    ingress = deployment(
        serve.ingress()(IngressReplica), name=INGRESS, **ingress_options(settings, scaling)
    )
    return ingress.bind(settings.model_dump_json(), engines)


def app_builder(args: dict[str, Any]) -> Any:
    """``serve deploy``'s entry: ``args`` is ``{"settings": {...}, "scaling": {...}}``
    as ``squeezer ray-config`` writes them."""
    settings = Settings.model_validate({**keys_from_environment(), **args.get("settings", {})})
    scaling = Scaling.model_validate(args.get("scaling", {}))
    return build(settings, scaling)


#: Settings a config never holds: they come from the environment (``keys_from_environment``).
SECRET_FIELDS = frozenset({"api_keys", "admin_api_key"})


def keys_from_environment() -> dict[str, Any]:
    """The API keys as ``serve`` reads them: ``SQUEEZER_API_KEY`` (space-separated),
    ``SQUEEZER_API_KEY_FILE``, ``SQUEEZER_ADMIN_API_KEY(_FILE)``."""
    from squeezer.config import read_keys

    env = os.environ
    keys = env.get("SQUEEZER_API_KEY", "").split()
    if env.get("SQUEEZER_API_KEY_FILE"):
        keys += read_keys(Path(env["SQUEEZER_API_KEY_FILE"]))
    found: dict[str, Any] = {"api_keys": keys} if keys else {}
    admin = env.get("SQUEEZER_ADMIN_API_KEY")
    if env.get("SQUEEZER_ADMIN_API_KEY_FILE"):
        admin = read_keys(Path(env["SQUEEZER_ADMIN_API_KEY_FILE"]))[0]
    if admin:
        found["admin_api_key"] = admin
    return found


def prepare(settings: Settings) -> Settings:
    """The settings with each ``--model`` resolved to the folder its replicas load:
    a GGUF file converted (cached by its hash), an MLflow version downloaded, and with
    ``--optimize`` the optimizer's artifact, searched here once. Paths must be the
    same on every node (a shared volume, or the same image) on a cluster."""
    from squeezer.backends.device import resolve_device
    from squeezer.models import locate
    from squeezer.models.gguf import source_gguf
    from squeezer.models.locate import PACKAGE_PREFIX
    from squeezer.models.manifest import read_manifest
    from squeezer.optimize.cache import optimized_artifact

    models: list[ModelSettings] = []
    for spec in settings.models:
        path = locate(spec.path, tracking_uri=settings.mlflow_tracking_uri)
        packaged = spec.path.startswith(PACKAGE_PREFIX) and source_gguf(path) is None
        if packaged and not settings.optimize:
            models.append(spec)  # found in the installed package on each node
            continue
        if settings.optimize and read_manifest(path) is None:
            device = resolve_device(spec.device or settings.device)
            path = optimized_artifact(
                path, settings.optimize_max_loss, settings.optimize_cache, device
            )
        models.append(spec.model_copy(update={"path": str(path)}))
    return settings.model_copy(update={"models": models})


def config_document(settings: Settings, scaling: Scaling) -> dict[str, Any]:
    """A Serve config (``serve deploy``): one application built by ``app_builder``,
    and each deployment's options written out, for an operator to tune in place."""
    deployments = [
        {"name": group.name, **engine_options(group.settings, scaling)}
        for group in engine_groups(settings, scaling)
    ]
    deployments.append({"name": INGRESS, **ingress_options(settings, scaling)})
    return {
        "proxy_location": "EveryNode",
        "http_options": http_options(settings),
        "applications": [
            {
                "name": scaling.name,
                "route_prefix": "/",
                "import_path": IMPORT_PATH,
                "args": {
                    "settings": settings.model_dump(mode="json", exclude=set(SECRET_FIELDS)),
                    "scaling": scaling.model_dump(mode="json"),
                },
                "deployments": deployments,
            }
        ],
    }


def local_cpus(scaling: Scaling) -> int:
    """CPUs a local Ray gets: the machine's, or what the replicas ask if more."""
    replicas = scaling.max_replicas if scaling.autoscaling else scaling.replicas
    wanted = (replicas or 1) * scaling.replica_cpus + scaling.ingress_cpus
    return max(os.cpu_count() or 1, int(-(-wanted // 1)))


def http_options(settings: Settings) -> dict[str, Any]:
    """Ray Serve's HTTP proxies: squeezer's bind and TLS."""
    http: dict[str, Any] = {"host": settings.host, "port": settings.port}
    if settings.ssl_certfile is not None and settings.ssl_keyfile is not None:
        http |= {
            "ssl_certfile": str(settings.ssl_certfile),
            "ssl_keyfile": str(settings.ssl_keyfile),
        }
    return http


__all__ = [
    "IMPORT_PATH",
    "EngineGroup",
    "Scaling",
    "app_builder",
    "build",
    "config_document",
    "engine_groups",
    "http_options",
    "keys_from_environment",
    "local_cpus",
    "prepare",
]
