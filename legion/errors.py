"""Legion's error tree: every expected failure is a typed ``LegionError``.

Pure: no I/O. Each class names its HTTP status once, here; the runtime maps
errors to responses in one place (``legion.runtime.http_errors``) and the
client maps responses back to these classes, so a caller catches the same
type whether the failure happened in-process or three hops away.
"""

from __future__ import annotations


class LegionError(Exception):
    """Root of every error Legion raises on purpose."""

    http_status: int = 500
    code: str = "internal"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"error": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class BadRequest(LegionError):
    """The request is malformed: wrong JSON, wrong types, bad names."""

    http_status = 400
    code = "bad_request"


class Unauthorized(LegionError):
    """The request carries no cluster token, or the wrong one."""

    http_status = 401
    code = "unauthorized"


class NotFound(LegionError):
    """The key, index, route or node named by the request does not exist."""

    http_status = 404
    code = "not_found"


class Conflict(LegionError):
    """The request contradicts the cluster's state (e.g. removing the last node)."""

    http_status = 409
    code = "conflict"


class StaleRing(Conflict):
    """The sender's cluster state is older than ours; refresh and retry."""

    code = "stale_ring"


class NotOwner(Conflict):
    """This node holds no replica of the partition the request names."""

    code = "not_owner"


class EngineMissing(Conflict):
    """This node does not have the engine a peer named installed: the peer asks another replica."""

    code = "engine_missing"


class PayloadTooLarge(LegionError):
    """The request body is over the size limit."""

    http_status = 413
    code = "payload_too_large"


class Overloaded(LegionError):
    """A bounded queue is full; back off and retry."""

    http_status = 429
    code = "overloaded"


class Unavailable(LegionError):
    """Not enough live replicas answered to meet the requested quorum."""

    http_status = 503
    code = "unavailable"


class NoQuorum(Unavailable):
    """A membership change cannot be decided: this node cannot reach a majority of the voters
    (the minority side of a network split, or too many voters down). Retrying is safe:
    ``add-node`` and ``remove-node`` are idempotent."""

    code = "no_quorum"


class DeadlineExceeded(LegionError):
    """The request's deadline passed before enough replicas answered."""

    http_status = 504
    code = "deadline_exceeded"


class ConfigError(LegionError):
    """A local configuration problem (missing cluster directory, bad token file)."""

    http_status = 400
    code = "config"


_BY_CODE: dict[str, type[LegionError]] = {}


def _register(cls: type[LegionError]) -> None:
    _BY_CODE[cls.code] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(LegionError)


def from_json(status: int, body: object) -> LegionError:
    """Rebuild the typed error a peer or server sent as ``to_json()``."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        cls = _BY_CODE.get(body["error"], LegionError)
        details = body.get("details") if isinstance(body.get("details"), dict) else {}
        return cls(str(body.get("message", "")), **details)
    if status == 401:
        return Unauthorized("the server refused the cluster token")
    if status == 404:
        return NotFound("no such resource")
    if 400 <= status < 500:
        return BadRequest(f"the server rejected the request (HTTP {status})")
    return Unavailable(f"the server failed (HTTP {status})")
