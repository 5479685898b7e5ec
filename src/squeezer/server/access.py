"""Who may call which route: API keys, the admin key, and the loopback rule.

A route's access level comes from its path (``route_access``), checked in the one
pure-ASGI layer in front of every route (``middleware.HttpGuard``) before anything is
parsed: a server without keys pays nothing for it, and a refused request costs a
header lookup. The levels, as vLLM, TGI and TEI users expect them
(``Authorization: Bearer KEY``):

- ``OPEN``: probes and the API's own description (``/health``, ``/ready``,
  ``/v2/health/*``, ``/openapi.json`` and the docs pages that read it) answer anyone:
  load balancers and orchestrators carry no keys.
- ``INFERENCE`` (every other route unless listed below): with ``--api-key`` set, one
  of those keys (or the admin key).
- ``ADMIN_READ`` (``/metrics``, and the model paths in ``/info``): the admin key when
  one is set, otherwise the inference rule.
- ``ADMIN_WRITE`` (routes under ``ADMIN_WRITE_PREFIXES``: what changes what is
  served): the admin key when one is set; without one, the inference rule on a
  loopback bind only, and 403 naming the flag on any other bind: nobody on the network
  may reload models because no key was set.

Default-deny: a new route is ``INFERENCE`` unless a list here says otherwise, and a
test calls every published operation without a key.

Keys are compared with ``hmac.compare_digest`` against every configured key, so the
time taken says nothing about how much of a key matched or which one did.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from enum import Enum
from typing import Any

from starlette.requests import Request

from squeezer.config import Settings
from squeezer.errors import ForbiddenError, UnauthorizedError


class Access(str, Enum):
    OPEN = "open"
    INFERENCE = "inference"
    ADMIN_READ = "admin_read"
    ADMIN_WRITE = "admin_write"


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 and ::1; an unspecified address (0.0.0.0, ::) is
    every interface, so not loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    api_keys: tuple[bytes, ...]
    admin_key: bytes | None
    loopback: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        admin = settings.admin_api_key
        return cls(
            tuple(k.encode() for k in settings.api_keys),
            admin.encode() if admin is not None else None,
            is_loopback(settings.host),
        )

    @property
    def open_to_all(self) -> bool:
        """No keys and a loopback bind: every route answers everyone (nothing to check)."""
        return not self.api_keys and self.admin_key is None and self.loopback

    def _is_admin(self, token: bytes | None) -> bool:
        return self.admin_key is not None and _equal(token, (self.admin_key,))

    def _passes_keys(self, token: bytes | None) -> bool:
        if not self.api_keys:
            return True
        return _equal(token, self.api_keys) or self._is_admin(token)

    def check(self, level: Access, token: bytes | None) -> None:
        """Return if ``token`` may use a route of ``level``; raise 401 or 403."""
        if level is Access.OPEN:
            return
        if level is Access.INFERENCE or self.admin_key is None:
            if level is Access.ADMIN_WRITE and not self.loopback:
                raise ForbiddenError(
                    "this route changes what the server serves: set --admin-api-key to "
                    "use it on a server bound to a non-loopback address"
                )
            if not self._passes_keys(token):
                raise _unauthorized(token)
            return
        if not self._is_admin(token):
            raise _unauthorized(token, admin=True)

    def sees_admin_fields(self, token: bytes | None) -> bool:
        """Whether a caller already let in may also see admin-only fields (model paths)."""
        try:
            self.check(Access.ADMIN_READ, token)
        except (UnauthorizedError, ForbiddenError):
            return False
        return True


def _equal(token: bytes | None, keys: tuple[bytes, ...]) -> bool:
    """Constant time in the token and over the keys: every key is compared."""
    if token is None:
        return False
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token, key)
    return matched


def _unauthorized(token: bytes | None, *, admin: bool = False) -> UnauthorizedError:
    which = "the admin API key (--admin-api-key)" if admin else "an API key (--api-key)"
    if token is None:
        return UnauthorizedError(f"this route needs {which}: send Authorization: Bearer KEY")
    return UnauthorizedError(f"the key sent is not {which}")


#: Routes anyone may call, keys or not.
OPEN_PATHS = frozenset({"/health", "/ready", "/openapi.json", "/docs", "/docs/oauth2-redirect",
                        "/redoc"})  # fmt: skip
OPEN_PREFIXES = ("/v2/health/",)
ADMIN_READ_PATHS = frozenset({"/metrics", "/metrics/targets"})
#: Routes that change what is served (model management: issue 25 adds them here).
ADMIN_WRITE_PREFIXES = ("/admin/", "/v2/repository/")


def route_access(path: str) -> Access:
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return Access.OPEN
    if path in ADMIN_READ_PATHS:
        return Access.ADMIN_READ
    if path.startswith(ADMIN_WRITE_PREFIXES):
        return Access.ADMIN_WRITE
    return Access.INFERENCE


def bearer_token(authorization: bytes | None) -> bytes | None:
    """The key in ``Authorization: Bearer KEY`` (any case of ``Bearer``), else None."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return None
    return token.strip()


def policy_of(request: Request) -> AccessPolicy:
    policy: AccessPolicy = request.app.state.access
    return policy


def caller_token(request: Request) -> bytes | None:
    value = request.headers.get("authorization")
    return bearer_token(value.encode("latin-1")) if value is not None else None


def add_security_scheme(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document says which operations take a bearer key (all but the open
    ones), as a dependency-declared scheme would, without a per-request dependency."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["HTTPBearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "an --api-key (or the --admin-api-key)",
    }
    for path, operations in schema.get("paths", {}).items():
        if route_access(path) is Access.OPEN:
            continue
        for operation in operations.values():
            if isinstance(operation, dict):
                operation["security"] = [{"HTTPBearer": []}]
    return schema
