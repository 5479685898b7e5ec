"""Who may call which route: API keys, the admin key, and the loopback rule.

Every route declares one ``Access`` level as a FastAPI dependency (``OPEN``,
``INFERENCE``, ``ADMIN_READ``, ``ADMIN_WRITE`` below, on its router or on itself); a
test walks the app's routes so that none goes without. The rules, as vLLM, TGI and TEI
users expect them (``Authorization: Bearer KEY``):

- ``OPEN``: probes and the API's own description (``/health``, ``/ready``,
  ``/openapi.json`` and the docs page that reads it) answer anyone: load balancers and
  orchestrators carry no keys.
- ``INFERENCE``: with ``--api-key`` set, one of those keys (or the admin key).
- ``ADMIN_READ`` (``/metrics``, and the model paths in ``/info``): the admin key when
  one is set, otherwise the inference rule.
- ``ADMIN_WRITE`` (routes that change what is served): the admin key when one is set;
  without one, the inference rule on a loopback bind only, and 403 naming the flag on
  any other bind: nobody on the network may reload models because no key was set.

Keys are compared with ``hmac.compare_digest`` against every configured key, so the
time taken says nothing about how much of a key matched or which one did.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from enum import Enum
from typing import Any

from fastapi import Depends, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
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


_bearer = HTTPBearer(auto_error=False, description="an --api-key (or the --admin-api-key)")


def token_of(credentials: HTTPAuthorizationCredentials | None) -> bytes | None:
    return credentials.credentials.encode() if credentials is not None else None


def policy_of(request: Request) -> AccessPolicy:
    policy: AccessPolicy = request.app.state.access
    return policy


def _require(level: Access) -> Any:
    async def require(
        request: Request, credentials: HTTPAuthorizationCredentials | None = Security(_bearer)
    ) -> None:
        policy_of(request).check(level, token_of(credentials))

    require.access = level  # type: ignore[attr-defined]  # read by the route audit test
    return Depends(require)


async def _open() -> None:
    return None


_open.access = Access.OPEN  # type: ignore[attr-defined]

#: ``dependencies=`` for a router or a route of each level.
OPEN = [Depends(_open)]
INFERENCE = [_require(Access.INFERENCE)]
ADMIN_READ = [_require(Access.ADMIN_READ)]
ADMIN_WRITE = [_require(Access.ADMIN_WRITE)]


async def caller_token(
    credentials: HTTPAuthorizationCredentials | None = Security(_bearer),
) -> bytes | None:
    """The bearer token, for a route that shows more to admins (``/info``)."""
    return token_of(credentials)
