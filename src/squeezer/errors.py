"""The one exception hierarchy: every failure a user can see is one of these.

Each class names a *kind* of failure, not an HTTP status: the server maps kinds to
statuses and to each dialect's error shape in one table (``server/errors.py``), so a
dialect never invents its own status for the same failure.
"""

from __future__ import annotations


class SqueezerError(Exception):
    """Base of every error squeezer raises on purpose."""

    #: Name of the offending request field, where one is to blame (OpenAI's ``param``).
    param: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if param is not None:
            self.param = param


class InvalidRequestError(SqueezerError):
    """The request is well-formed JSON but asks for something not allowed."""


class EmptyInputError(InvalidRequestError):
    """No input at all, or an empty string: nothing to compute."""


class InputTooLongError(InvalidRequestError):
    """An input has more tokens than the model takes and truncation was not asked for."""


class TooManyInputsError(InvalidRequestError):
    """More inputs in one request than ``max_client_batch_size`` allows."""


class TokenizerError(InvalidRequestError):
    """The tokenizer could not encode or decode what was sent (e.g. unknown token ids)."""


class ConflictError(InvalidRequestError):
    """The request contradicts the state it acts on: loading a version already loaded
    from another source, unloading the version an alias still names (409)."""


class UnauthorizedError(SqueezerError):
    """No API key, or not one this server takes, on a route that needs one (401)."""


class ForbiddenError(SqueezerError):
    """The key is fine but the route is not open to it, or not on this bind (403)."""


class ModelNotFoundError(SqueezerError):
    """No served model has this name."""


class TaskNotSupportedError(SqueezerError):
    """The model exists but does not serve the task the route means."""


class PayloadTooLargeError(SqueezerError):
    """The request body is larger than ``max_body_bytes``; refused before parsing."""


class OverloadedError(SqueezerError):
    """Too many requests are waiting: come back later (429 with Retry-After)."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(SqueezerError):
    """The request's deadline passed before it could be computed; it was not run."""


class BackendError(SqueezerError):
    """The forward pass of the batch holding this request failed."""


class DeviceOutOfMemoryError(BackendError):
    """A forward pass did not fit in the device's memory (or ``--gpu-memory-fraction``).

    The batch queue halves a batch that raises this until the parts fit; a client sees
    it only when one input alone does not fit at that moment (503: try again)."""


class UnavailableError(SqueezerError):
    """The server is starting up or draining and takes no new work."""


class ModelNotReadyError(UnavailableError):
    """The model version exists but is not serving now: loading, verifying, failed,
    unloaded or evicted (503 with Retry-After; the admin list says why)."""

    def __init__(
        self, message: str, *, param: str | None = None, retry_after_s: float = 1.0
    ) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s


class ModelLoadError(SqueezerError):
    """A model folder could not be found or loaded (raised at start-up, not per request)."""
