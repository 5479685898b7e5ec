"""A server that does nothing, fast: what the load generator can send on this machine.

Every run measures the generator against it at the same levels, so that a result
close to the generator's own ceiling is read as "the generator's limit", not the
server's. A bare ASGI callable under uvicorn (no framework), answering any POST with a
small JSON body, or for streaming routes with as many server-sent events as the body
asks tokens.

    python -m squeezer.bench.noop PORT
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream")]


async def read_body(receive: Receive) -> bytes:
    """The whole request body, however many messages it came in."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = await read_body(receive)
    path = scope["path"]
    if not path.endswith(("/chat/completions", "/completions", "/generate_stream")):
        await send({"type": "http.response.start", "status": 200, "headers": _JSON})
        await send({"type": "http.response.body", "body": b"[[0.0]]"})
        return
    try:
        req = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        req = {}
    tokens = int(req.get("max_tokens") or (req.get("parameters") or {}).get("max_new_tokens") or 16)
    await send({"type": "http.response.start", "status": 200, "headers": _SSE})
    event: dict[str, Any]
    for _ in range(tokens):
        if path.endswith("/generate_stream"):
            event = {"token": {"id": 1, "text": "x", "special": False}}
        elif path.endswith("/chat/completions"):
            event = {"choices": [{"index": 0, "delta": {"content": "x"}}]}
        else:
            event = {"choices": [{"index": 0, "text": "x"}]}
        chunk = b"data: " + orjson.dumps(event) + b"\n\n"
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def main() -> None:
    import uvicorn

    port = int(sys.argv[1])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
