"""An engine replica's Prometheus endpoint: prometheus-client's WSGI app on a port of
the replica's node, behind the same rule as the ingress's ``/metrics`` (the admin key
when one is set, else the API keys; nothing when neither is). A replica's endpoint is
reachable by whoever reaches its node, so it must not be the one open door."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from squeezer.errors import SqueezerError
from squeezer.server.access import Access, AccessPolicy, bearer_token

_StartResponse = Callable[..., Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds the replica's exit


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per scrape: no
        return None


def keyed(app: Callable[..., Iterable[bytes]], policy: AccessPolicy) -> Callable[..., Any]:
    """``app`` for callers ``policy`` lets read admin routes; 401 for the others."""

    def guarded(environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        header = environ.get("HTTP_AUTHORIZATION")
        token = bearer_token(header.encode("latin-1") if header else None)
        try:
            policy.check(Access.ADMIN_READ, token)
        except SqueezerError as e:
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return [e.message.encode()]
        return app(environ, start_response)

    return guarded


def serve_metrics(registry: CollectorRegistry, host: str, port: int, policy: AccessPolicy) -> Any:
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread; returns
    the server (``server_port``, ``shutdown()``)."""
    app = keyed(make_wsgi_app(registry), policy)
    server = make_server(host, port, app, _Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="squeezer-metrics", daemon=True).start()
    return server


__all__ = ["keyed", "serve_metrics"]
