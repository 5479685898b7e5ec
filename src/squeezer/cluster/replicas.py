"""The two kinds of Ray Serve replica: an engine replica holds squeezer's engine and
models, an ingress replica squeezer's HTTP app. Plain classes: ``application.py``
makes them deployments with the options the flags chose.

An engine replica is a whole ``Runtime`` (the same loading, warm-up, golden gate and
batching as ``squeezer serve``) built in the replica's constructor, answering the
engine's two calls for the ingress: ``run`` a tokenized request and ``generate``
(a streaming method: one item per token). Ray Serve drains a replica before it stops
it (it waits for the requests it accepted, up to ``graceful_shutdown_timeout_s``, set
from ``--shutdown-timeout``); ``__del__`` then stops the engine as ``squeezer serve``
does on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from squeezer.cluster.ray_engine import RayEngine, Reply, deadline_in, portable
from squeezer.cluster.targets import TTL_S, target_board
from squeezer.config import Settings
from squeezer.engine.generation import GenerationRequest
from squeezer.errors import UnavailableError
from squeezer.server.runtime import Phase, Runtime
from squeezer.types import EngineRequest

log = logging.getLogger("squeezer")

#: Runs first in each engine replica (before any model loads), given the replica:
#: tests use it to hold the backend at a gate in the replica's own process.
ReplicaSetup = Callable[["EngineReplica"], None]


class EngineReplica:
    """One engine replica: its models, its engine, its metrics endpoint."""

    async def __init__(  # type: ignore[misc]  # Ray Serve awaits an async constructor
        self, settings_json: str, metrics_port: int = 0, setup: ReplicaSetup | None = None
    ) -> None:
        from squeezer.backends.device import configure_threads
        from squeezer.server.metrics import Metrics
        from squeezer.server.serve import start_observing

        self._metrics_server: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        settings = Settings.model_validate_json(settings_json)
        start_observing(settings, worker="engine replica")
        configure_threads(settings.threads)
        if setup is not None:
            setup(self)
        self.metrics = Metrics()
        self.runtime = Runtime(settings, observer=self.metrics)
        await self.runtime.start()
        self._serve_metrics(metrics_port)

    # the engine's calls ------------------------------------------------------------

    async def run(self, request: EngineRequest, left: float | None) -> Reply:
        if not self.runtime.ready:
            return self._not_accepting()
        try:
            answer = await self.runtime.engine.run(
                dataclasses.replace(request, deadline=deadline_in(left))
            )
        except Exception as e:
            return ("error", portable(e))
        return ("ok", answer)

    async def generate(
        self, model: str, request: GenerationRequest, left: float | None
    ) -> AsyncIterator[Reply]:
        """("ok", None) once accepted (or one ("error", e)), then ("event", token)s
        and ("end", Finished) or ("error", e). Cancelled by the ingress when its
        client leaves: the engine's stream is cancelled with it."""
        if not self.runtime.ready:
            yield self._not_accepting()
            return
        try:
            stream = self.runtime.engine.generate(
                model, dataclasses.replace(request, deadline=deadline_in(left))
            )
        except Exception as e:
            yield ("error", portable(e))
            return
        yield ("ok", None)
        try:
            async for token in stream:
                yield ("event", token)
            yield ("end", stream.finished)
        except Exception as e:
            yield ("error", portable(e))

    def _not_accepting(self) -> Reply:
        """A replica starting or draining (a rolling update's race): the ingress sends
        the request to another replica rather than answering 503."""
        return ("retry", UnavailableError(f"engine replica is {self.runtime.phase.value}"))

    async def call(self, name: str, *args: Any) -> Reply:
        """What the ingress reads at start: this replica's catalog."""
        if name != "catalog":
            return ("error", ValueError(f"unknown engine call {name!r}"))
        return ("ok", self.runtime.models.status())

    # Ray Serve's hooks ---------------------------------------------------------------

    def check_health(self) -> None:
        if self.runtime.phase is Phase.STOPPED:
            raise RuntimeError("the engine has stopped")

    async def __del__(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        if hasattr(self, "runtime"):  # not when the constructor failed before it
            await self.runtime.begin_drain()
            await self.runtime.stop()

    # metrics -------------------------------------------------------------------------

    def _serve_metrics(self, port: int) -> None:
        """The registry on a port of this node (behind the admin key, as the
        ingress's ``/metrics``), registered with the application's target board
        (``targets.py``). Gauges read from the runtime are refreshed every few
        seconds rather than at scrape time: the scrape runs on the metrics server's
        thread, the runtime on this loop."""
        import ray
        from ray import serve

        from squeezer.cluster.replica_metrics import serve_metrics
        from squeezer.server.access import AccessPolicy
        from squeezer.server.routes.admin import refresh_gauges

        host = ray.util.get_node_ip_address()
        policy = AccessPolicy.from_settings(self.runtime.settings)
        try:
            self._metrics_server = serve_metrics(self.metrics.registry, host, port, policy)
        except OSError as e:
            log.error("engine replica metrics: port %d on %s: %s; not served", port, host, e)
            return
        address = f"{host}:{self._metrics_server.server_port}"
        context = serve.get_replica_context()
        labels = {
            "replica": str(context.replica_id.unique_id),
            "deployment": context.deployment,
            "application": context.app_name,
        }
        board = target_board(context.app_name)
        log.info("engine replica metrics at http://%s/metrics", address)

        async def renew() -> None:
            while True:
                refresh_gauges(self.runtime, self.metrics)
                with contextlib.suppress(Exception):  # the board is back next round
                    await board.register.remote(address, labels)
                await asyncio.sleep(min(5.0, TTL_S / 3))

        self._tasks.append(asyncio.get_running_loop().create_task(renew()))


class IngressReplica:
    """One ingress replica: squeezer's HTTP app, with every dialect, in front of the
    engine deployments (deployment name -> handle)."""

    def __init__(self, settings_json: str, engines: dict[str, Any]) -> None:
        self.settings = Settings.model_validate_json(settings_json)
        self.engines = engines

    def __serve_build_asgi_app__(self) -> Any:
        from squeezer.cluster.routes import router
        from squeezer.server.app import create_app
        from squeezer.server.metrics import Metrics
        from squeezer.server.serve import start_observing

        start_observing(self.settings, worker="ingress")
        metrics = Metrics()
        engine = RayEngine(self.engines, render_metrics=metrics.render)
        runtime = Runtime(self.settings, remote=engine)
        app = create_app(self.settings, runtime=runtime, metrics=metrics)
        app.include_router(router)
        return app


__all__ = ["EngineReplica", "IngressReplica", "ReplicaSetup"]
