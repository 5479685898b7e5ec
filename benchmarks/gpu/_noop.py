"""The HTTP stack's ceiling for embeddings: a no-op ``/embed`` that answers full-size vectors.

    python3 benchmarks/gpu/_noop.py PORT [--dim 384] [--workers 1]

``squeezer.bench.noop`` answers every POST with ``[[0.0]]``: right for one sentence per
request, but at 32 sentences per request a real answer is ~32 x 384 floats (~130 kB of
JSON) and the ceiling would be read against bytes never sent. This app does what any
embedding route must do besides the model, and nothing more: read and parse the body
(orjson), count the inputs, and send that many vectors of ``--dim`` realistic floats
(rows rendered once at start-up). A bare ASGI callable under uvicorn, as the issue's
"no-op route" asks; any GET answers 200 (readiness).
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson

from squeezer.bench.noop import Receive, Scope, Send, read_body

_JSON = [(b"content-type", b"application/json")]


def make_app(dim: int) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    # A unit-norm vector as a model gives it: each float prints at full length.
    row = np.random.default_rng(0).standard_normal(dim).astype(np.float32)
    rendered = orjson.dumps(row / np.linalg.norm(row), option=orjson.OPT_SERIALIZE_NUMPY)
    bodies: dict[int, bytes] = {}

    def answer(n: int) -> bytes:
        if n not in bodies:
            bodies[n] = b"[" + b",".join([rendered] * n) + b"]"
        return bodies[n]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        n = 0
        if scope["method"] == "POST":
            inputs = orjson.loads(body).get("inputs") if body else None
            n = len(inputs) if isinstance(inputs, list) else 1
        await send({"type": "http.response.start", "status": 200, "headers": _JSON})
        await send({"type": "http.response.body", "body": answer(n)})

    return app


def serve(app: Any, port: int, workers: int) -> None:
    """uvicorn on one listening socket shared by ``workers`` forked processes.

    One process is the ceiling of a server with one API process; a server that runs
    several in front of its engine (``--api-workers``) is read against as many here."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    if workers <= 1:
        uvicorn.Server(config).run(sockets=[sock])
        return
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # SIGTERM to the process group stops every worker
            uvicorn.Server(config).run(sockets=[sock])
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("port", type=int)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--workers", type=int, default=1, help="HTTP processes sharing the port")
    a = p.parse_args()
    serve(make_app(a.dim), a.port, a.workers)


if __name__ == "__main__":
    main()
