"""Each engine replica's metrics, scraped where they are, and found through the ingress.

An engine replica's metrics (batches, queues, KV cache, generation load) live in its
own process, and a Ray Serve handle call reaches one replica of a deployment, never
each: so the ingress cannot gather them. Each engine replica serves its registry on
a port of its own node (prometheus-client's HTTP server) and registers the address
with one small named actor per application, renewing it while it lives; the
ingress's ``/metrics/targets`` lists the live ones in Prometheus's HTTP service
discovery format (``http_sd_configs``). Prometheus then scrapes each replica and
PromQL aggregates them (``sum without (instance, replica) (...)``; docs/scale-out.md).
A replica that dies stops renewing and drops out after ``TTL_S``.
"""

from __future__ import annotations

import time
from typing import Any

#: Seconds a registration lives without renewal; replicas renew every third of it.
TTL_S = 30.0


class TargetBoard:
    """A Ray actor: live scrape targets, by address."""

    def __init__(self) -> None:
        self._targets: dict[str, tuple[float, dict[str, str]]] = {}

    def register(self, address: str, labels: dict[str, str]) -> None:
        self._targets[address] = (time.monotonic(), labels)

    def unregister(self, address: str) -> None:
        self._targets.pop(address, None)

    def targets(self) -> list[dict[str, Any]]:
        """Prometheus HTTP SD: one group per target, with its replica's labels."""
        now = time.monotonic()
        for address, (seen, _) in list(self._targets.items()):
            if now - seen > TTL_S:
                del self._targets[address]
        return [
            {"targets": [address], "labels": labels}
            for address, (_, labels) in sorted(self._targets.items())
        ]


def board_name(app_name: str) -> str:
    return f"squeezer-metrics-targets-{app_name}"


def target_board(app_name: str) -> Any:
    """The application's board, made by whichever replica asks first. Detached, so
    it outlives the replica that made it; ``squeezer serve --ray`` kills it at exit."""
    import ray

    actor = ray.remote(num_cpus=0)(TargetBoard)
    return actor.options(  # type: ignore[attr-defined]
        name=board_name(app_name), namespace="serve", get_if_exists=True, lifetime="detached"
    ).remote()


def kill_board(app_name: str) -> None:
    import ray

    try:
        ray.kill(ray.get_actor(board_name(app_name), namespace="serve"))
    except ValueError:  # never made
        return


__all__ = ["TTL_S", "TargetBoard", "board_name", "kill_board", "target_board"]
