"""The engine's calls from the ingress tier, over Ray Serve deployment handles.

The ingress replica runs squeezer's whole HTTP app (every dialect, tokenization,
detokenization) as an ``--api-workers`` API process does, and its ``Runtime`` sends
the engine's calls here instead of over a Unix socket: ``run`` (a tokenized request)
and ``open_stream`` (a generation) go to the engine deployment that holds the model
(squeezer's model-aware routing: each engine deployment's catalog names its models),
and Ray Serve picks one of that deployment's replicas.

Two tiers are what make a replica's death survivable (ray-project/ray#47219: with
one, Ray's proxy answers 500). An engine replica that dies is seen here as a Ray
actor error: a request that has not answered yet is sent again (a tokenized request
has no side effect, and nothing of it reached the client), up to ``attempts`` times,
then answered 503 in the dialect's shape. A stream is sent again only while no token
has reached the client; a stream cut after that ends with the dialect's error event.

Deadlines cross as seconds left, not as a time: ``time.monotonic`` on another node
is another clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from squeezer.engine.generation import GenerationRequest, GenerationStream
from squeezer.errors import (
    ConflictError,
    ModelNotFoundError,
    OverloadedError,
    SqueezerError,
    UnavailableError,
)
from squeezer.server.lifecycle import ModelStatus
from squeezer.types import Answer, EngineRequest

log = logging.getLogger("squeezer")

#: What an engine replica's methods answer: ("ok", value), ("error", exception), or
#: ("retry", exception) from a replica not accepting work (starting, draining): sent
#: to another replica. Errors travel as values: a raised SqueezerError would come
#: back wrapped in Ray's task error, and its class (hence its HTTP status) lost.
Reply = tuple[str, Any]


def seconds_left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def deadline_in(left: float | None) -> float | None:
    """The deadline ``left`` seconds from now on this node's clock."""
    return None if left is None else time.monotonic() + left


def portable(exc: BaseException) -> BaseException:
    """What the ingress can re-raise: squeezer's errors as they are (their class sets
    the status), anything else as the message of an unexpected failure."""
    if isinstance(exc, SqueezerError):
        return exc
    return RuntimeError(f"{type(exc).__name__}: {exc}")


def _replica_gone_errors() -> tuple[type[BaseException], ...]:
    """Ray's errors for a replica that died or cannot be reached (retryable)."""
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.serve.exceptions import DeploymentUnavailableError

    return (RayActorError, ActorUnavailableError, DeploymentUnavailableError)


def _overloaded(exc: BaseException) -> OverloadedError:
    return OverloadedError(f"every engine replica is at max_ongoing_requests: {exc}")


class RayStream(GenerationStream):
    """A generation running in an engine replica, read from its streaming response:
    ("event", token) items, then ("end", Finished) or ("error", exception)."""

    def __init__(self, ident: int, response: Any) -> None:
        super().__init__(ident, lambda _: response.cancel())
        self._response = response
        self._pump = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for kind, payload in self._response:
                self._queue.put_nowait(payload)
                if kind != "event":
                    return
            self._queue.put_nowait(UnavailableError("the engine replica ended the stream early"))
        except _replica_gone_errors() as e:
            log.error("an engine replica went away mid-stream: %s", e)
            self._queue.put_nowait(
                UnavailableError("the engine replica serving this stream went away")
            )
        except Exception as e:
            self._queue.put_nowait(portable(e))

    def cancel(self) -> None:
        super().cancel()
        self._pump.cancel()


class RayEngine:
    """``EngineCalls`` and the link ``Runtime`` keeps to its engine (connect, call,
    note, close), over the engine deployments' handles (deployment name -> handle)."""

    def __init__(
        self,
        handles: dict[str, Any],
        *,
        render_metrics: Callable[[], bytes],
        attempts: int = 4,
        backoff_s: float = 0.05,
    ) -> None:
        """``render_metrics``: the ingress's own metrics (HTTP); each engine replica
        serves its own (``targets.py``)."""
        self.handles = handles
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._render_metrics = render_metrics
        #: Engine key (a loaded model version) -> the deployment that holds it.
        self.routes: dict[str, str] = {}
        self._catalog: list[ModelStatus] = []
        self._ids = itertools.count(1)
        #: Never set: Ray Serve replaces an engine replica that dies; the ingress lives on.
        self.lost = asyncio.Event()
        self.on_push: Callable[..., Any] | None = None

    async def connect(self, attempts: int = 1, delay: float = 0.1) -> None:
        """Read every engine deployment's catalog (Ray Serve holds the calls until a
        replica is up) and route each loaded version to its deployment."""
        catalog: list[ModelStatus] = []
        for name, handle in self.handles.items():
            snapshot: list[ModelStatus] = await self._ask(handle, "call", "catalog")
            for model in snapshot:
                for version in model.versions:
                    if version.info is not None:
                        self.routes[version.info.engine_key] = name
            catalog.extend(snapshot)
        self._catalog = catalog

    async def close(self) -> None:
        return None

    async def call(self, name: str, *args: Any) -> Any:
        if name == "catalog":
            return self._catalog
        if name == "metrics":
            return self._render_metrics()
        if name == "admin" and args[:1] == ("status",):  # read: the catalog read at start
            return self._catalog
        if name == "admin":
            raise ConflictError(
                "model versions of a Ray Serve deployment change by deploying a new "
                "config (squeezer ray-config, then serve deploy): Ray Serve replaces the "
                "replicas one at a time, each draining what it accepted"
            )
        raise ValueError(f"unknown engine call {name!r}")

    def note(self, name: str, *args: Any) -> None:
        """Observations the engine process takes from API processes: under Ray the
        ingress keeps its own HTTP metrics, and residency limits are per replica."""
        return None

    def _handle(self, model: str) -> Any:
        deployment = self.routes.get(model)
        if deployment is None:
            raise ModelNotFoundError(f"model {model!r} is not served by any engine deployment")
        return self.handles[deployment]

    async def run(self, request: EngineRequest) -> Answer:
        handle = self._handle(request.model)
        left = seconds_left(request.deadline)
        wire = dataclasses.replace(request, deadline=None)
        answer: Answer = await self._ask(handle, "run", wire, left)
        return answer

    async def open_stream(self, model: str, request: GenerationRequest) -> RayStream:
        """Start a generation; refusals (overload, an unknown model) raise here. A
        replica that dies before its first token is replaced by another's."""
        from ray.serve.exceptions import BackPressureError

        handle = self._handle(model).options(stream=True)
        left = seconds_left(request.deadline)
        wire = dataclasses.replace(request, deadline=None)
        last: BaseException | None = None
        for attempt in range(self.attempts):
            response = handle.generate.remote(model, wire, left)
            try:
                kind, payload = await response.__anext__()  # ("ok", None) once accepted
                if kind == "error":
                    raise payload
                if kind == "ok":
                    return RayStream(next(self._ids), response)
                last = payload  # "retry": a replica not accepting work
            except asyncio.CancelledError:
                response.cancel()
                raise
            except BackPressureError as e:
                raise _overloaded(e) from None
            except StopAsyncIteration:
                last = UnavailableError("the engine replica closed the stream unanswered")
            except _replica_gone_errors() as e:
                last = e
            await asyncio.sleep(self.backoff_s * 2**attempt)
        raise self._gone(last)

    async def _ask(self, handle: Any, method: str, *args: Any) -> Any:
        from ray.serve.exceptions import BackPressureError

        last: BaseException | None = None
        for attempt in range(self.attempts):
            response = getattr(handle, method).remote(*args)
            try:
                kind, payload = await response
            except asyncio.CancelledError:  # the HTTP client left: stop the work too
                response.cancel()
                raise
            except BackPressureError as e:
                raise _overloaded(e) from None
            except _replica_gone_errors() as e:
                last = e
                await asyncio.sleep(self.backoff_s * 2**attempt)
                continue
            if kind == "error":
                raise payload
            if kind == "ok":
                return payload
            last = payload  # "retry": a replica not accepting work
            await asyncio.sleep(self.backoff_s * 2**attempt)
        raise self._gone(last)

    def _gone(self, last: BaseException | None) -> UnavailableError:
        log.error("engine replicas unreachable after %d attempts: %s", self.attempts, last)
        return UnavailableError(
            f"no engine replica answered after {self.attempts} attempts (a replica went "
            "away; Ray Serve is replacing it): retry"
        )


__all__ = ["RayEngine", "RayStream", "deadline_in", "portable", "seconds_left"]
