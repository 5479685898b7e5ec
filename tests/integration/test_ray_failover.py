"""An engine replica killed under load, on a two-node Ray cluster
(``ray.cluster_utils.Cluster``; one engine replica per node, taking no CPUs).

Ray Serve alone answers 500 when a replica dies mid-request (ray-project/ray#47219);
with squeezer's two tiers the ingress sends what the dead replica had not answered to
the other one. Asserted: every non-streamed request is answered 200 or 503 (never
500), requests keep being answered after the kill, and every stream ends either
with ``[DONE]`` or with the dialect's error event."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from squeezer.cluster.application import Scaling, build
from tests.integration.conftest import bert_and_llama, free_port


@pytest.fixture(scope="module")
def two_nodes(tiny_bert: Path, tiny_llama: Path) -> Iterator[str]:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = bert_and_llama(tiny_bert, tiny_llama, max_total_tokens=256)
    scaling = Scaling(replicas=2, replica_cpus=0, max_replicas_per_node=1, name="failover")
    serve.run(build(settings, scaling), name="failover", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()
    cluster.shutdown()


def _replicas(deployment: str) -> list[tuple[str, str]]:
    """(actor name, node id) of the application's live replicas of ``deployment``."""
    from ray.util.state import list_actors

    actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
    return [(a.name, a.node_id) for a in actors if a.name and f"failover#{deployment}#" in a.name]


class Load:
    """Clients posting embeddings and reading streams until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.statuses: list[tuple[float, int]] = []
        self.streams: list[str] = []
        self.lock = threading.Lock()

    def embed(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                r = client.post(
                    f"{self.url}/v1/embeddings", json={"model": "bert", "input": ["a b c"] * 4}
                )
                with self.lock:
                    self.statuses.append((time.monotonic(), r.status_code))

    def stream(self) -> None:
        body = {"model": "llama", "prompt": "one", "max_tokens": 240, "ignore_eos": True,
                "stream": True}  # fmt: skip
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                with client.stream("POST", f"{self.url}/v1/completions", json=body) as r:
                    if r.status_code != 200:
                        outcome = f"status {r.status_code}"
                    else:
                        lines = [x for x in r.iter_lines() if x.startswith("data: ")]
                        outcome = _stream_outcome(lines)
                with self.lock:
                    self.streams.append(outcome)


def _stream_outcome(lines: list[str]) -> str:
    """OpenAI's stream ends with ``[DONE]``, after the error event when one broke it."""
    if not lines or lines[-1] != "data: [DONE]":
        return f"cut without [DONE] after {len(lines)} events"
    if len(lines) > 1 and "error" in json.loads(lines[-2][6:]):
        error = json.loads(lines[-2][6:])["error"]
        return f"error event: {error['type']}"
    return "done"


def test_a_killed_engine_replica_costs_no_500_and_no_silent_cut(two_nodes: str) -> None:
    import ray

    replicas = _replicas("engine")
    assert len({node for _, node in replicas}) == 2  # one per node
    # The one beside the ingress: Ray Serve prefers a replica on the caller's node.
    ingress_node = _replicas("ingress")[0][1]
    name = next(name for name, node in replicas if node == ingress_node)
    load = Load(two_nodes)
    threads = [threading.Thread(target=load.embed) for _ in range(6)]
    # Four long streams: some are on the killed replica, and are cut.
    threads += [threading.Thread(target=load.stream) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        killed_at = time.monotonic()
        time.sleep(4)
    finally:
        load.stop.set()
        for t in threads:
            t.join(timeout=60)
    codes = {code for _, code in load.statuses}
    assert codes <= {200, 503}, codes
    after = [code for at, code in load.statuses if at > killed_at + 1]
    assert after and after.count(200) > len(after) // 2  # the survivor answers
    ends = set(load.streams)
    assert ends <= {"done", "error event: service_unavailable_error"}, load.streams
    assert "error event: service_unavailable_error" in ends, load.streams
