"""HTTP transport: the server-side middleware chain and the peer client.

I/O. Every request, from a client or a peer, passes the same chain:

1. a request id (``X-Request-Id``, generated when absent) for tracing a
   request across the hops it is forwarded over. The middleware puts it in
   ``legion.engine.REQUEST_ID_CONTEXT`` (a context variable, so every task the
   handler starts, and every worker thread it hands work to, sees it), and
   ``PeerClient`` sends it on every peer call made on the request's behalf;
2. authentication: ``Authorization: Bearer <cluster token>``, compared in
   constant time; anything else is 401 before a handler runs (except what
   the node declares ``public``: the dashboard's static files, and
   ``/metrics`` from loopback on a ``--metrics-open`` node);
3. error mapping — the one place a ``LegionError`` becomes an HTTP status and
   a JSON body saying what to fix. aiohttp's own HTTP errors (unknown route,
   wrong method, oversized body) get the same JSON shape. Anything else is a
   bug: logged with its traceback, answered 500 without one;
4. ``observe``: how each request ended (status, seconds), for the metrics.

``PeerClient`` is how a node talks to other nodes (over mutual TLS on a TLS
cluster, ``legion.runtime.tls``): one pooled aiohttp session,
every call bounded by a deadline, connection failures raised as
``Unavailable`` and peer errors rebuilt as the typed error the peer raised.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import msgpack
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from legion.engine import REQUEST_ID_CONTEXT
from legion.errors import (
    BadRequest,
    DeadlineExceeded,
    LegionError,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
    from_json,
)
from legion.limits import PEER_BODY_BYTES_MAX, PEER_CONNECT_TIMEOUT_MS, REQUEST_BODY_BYTES_MAX, REQUEST_DEADLINE_MS
from legion.replication import Operation

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
# Unix milliseconds after which a forwarded membership change must not be applied (see
# http_api: the forwarder has answered 504 by then). Wall clocks, so it assumes nodes'
# clocks agree within a few seconds; a receiver running ahead refuses, it never applies late.
DEADLINE_HEADER = "X-Legion-Deadline"
# The sender's cluster-state digest, "<epoch>:<committed_by>", on every peer call: a replica
# that knows a newer state sees that the sender planned with an older one (see http_api).
EPOCH_HEADER = "X-Legion-Epoch"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# Request ids: a random per-process prefix and a counter — unique, and far cheaper
# than a uuid4 per request (which reads the OS entropy pool every time).
_REQUEST_ID_PREFIX = secrets.token_hex(4)
_request_counter = itertools.count(1)


def next_request_id() -> str:
    return f"{_REQUEST_ID_PREFIX}-{next(_request_counter):x}"


def error_response(error: LegionError, request_id: str = "") -> web.Response:
    """The one mapping from a typed error to an HTTP response."""
    headers = {REQUEST_ID_HEADER: request_id} if request_id else None
    return web.json_response(error.to_json(), status=error.http_status, headers=headers)


def _from_http_exception(exc: web.HTTPException) -> LegionError:
    if exc.status == 413:
        return PayloadTooLarge(f"request body is over the limit ({exc.text or 'too large'})")
    if exc.status == 404:
        return NotFound("no such endpoint; see the README for the HTTP API")
    reason = "method not allowed on this endpoint" if exc.status == 405 else exc.reason or "bad request"
    err = BadRequest(reason)
    err.http_status = exc.status if 400 <= exc.status < 500 else 400
    return err


class BadInputLogFilter(logging.Filter):
    """Turns aiohttp's log of a request it could not parse into one INFO line without a traceback.

    A malformed request line or header is the client's bad input, answered
    400 by aiohttp itself; logged as an ERROR with a traceback it would read
    as a fault of the node."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            detail = " ".join(str(getattr(exc, "message", "") or exc).split())
            record.msg = f"{record.getMessage()}: bad request ({getattr(exc, 'code', 400)}): {detail}"
            record.args = None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def quiet_parser_errors() -> None:
    """Install ``BadInputLogFilter`` on aiohttp's server logger (once per process)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadInputLogFilter) for f in logger.filters):
        logger.addFilter(BadInputLogFilter())


def sender_digest(request: web.Request) -> tuple[int, str] | None:
    """The cluster-state digest a peer sent in ``EPOCH_HEADER``; None if absent, BadRequest if malformed."""
    raw = request.headers.get(EPOCH_HEADER)
    if raw is None:
        return None
    epoch, sep, committed_by = raw.partition(":")
    if not sep or not epoch.isdigit():
        raise BadRequest(f"{EPOCH_HEADER} must be '<epoch>:<node id>', got {raw!r:.80}")
    return int(epoch), committed_by


def make_middlewares(
    token: str,
    admit: Callable[[web.Request], None] | None = None,
    *,
    public: Callable[[web.Request], bool] | None = None,
    observe: Callable[[web.Request, int, float], None] | None = None,
) -> list[Callable[..., Any]]:
    """Request id, authentication, admission and error mapping, in one middleware (each layer
    of middleware costs a coroutine per request). ``admit`` raises a LegionError for an
    authenticated request the node cannot serve yet. ``public`` says which requests need no
    token (static dashboard files, which hold no data); ``observe(request, status, seconds)``
    learns how every request ended, for the node's metrics."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = request.headers.get(REQUEST_ID_HEADER) or next_request_id()
        request["request_id"] = request_id
        # Tasks copy the context they are created in, so work this request starts keeps its id
        # (a long-lived task serving many requests must start in an empty context instead).
        context_token = REQUEST_ID_CONTEXT.set(request_id)
        try:
            if public is None or not public(request):
                supplied = request.headers.get("Authorization", "").encode("utf-8", "replace")
                if not hmac.compare_digest(supplied, expected):
                    raise Unauthorized("missing or wrong cluster token: send 'Authorization: Bearer <token>'")
                if admit is not None:
                    admit(request)
            response = await handler(request)
            response.headers.setdefault(REQUEST_ID_HEADER, request_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, web.HTTPException) and exc.status < 400:
                raise  # a redirect: aiohttp's to send
            if request.writer.output_size > 0:
                # Part of a streamed response is sent, so no error response can follow: aiohttp logs
                # the error and cuts the connection, and the receiver reads an incomplete body, an
                # error, where an error response after it would leave it waiting for the rest.
                raise
            response = error_response(_legion_error(exc, request, request_id), request_id)
        finally:
            REQUEST_ID_CONTEXT.reset(context_token)
        if observe is not None:
            observe(request, response.status, time.perf_counter() - started)
        return response

    return [errors]


def _legion_error(exc: Exception, request: web.Request, request_id: str) -> LegionError:
    """What a handler's failure says to the client (a 4xx/5xx ``error_response``)."""
    if isinstance(exc, LegionError):
        return exc
    if isinstance(exc, web.HTTPException):
        return _from_http_exception(exc)
    log.exception("unhandled error in %s %s (request %s)", request.method, request.path, request_id)
    return LegionError("internal error; the node's log has the details", request_id=request_id)


async def read_chunks(request: web.Request, limit_bytes: int) -> AsyncIterator[bytes]:
    """The request body in chunks as it arrives, refusing (413) anything over ``limit_bytes``."""
    if request.content_length is not None and request.content_length > limit_bytes:
        raise PayloadTooLarge(f"request body is {request.content_length} bytes; the limit is {limit_bytes}")
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit_bytes:
            raise PayloadTooLarge(f"request body is over the limit of {limit_bytes} bytes")
        yield chunk


async def read_body(request: web.Request, limit_bytes: int = REQUEST_BODY_BYTES_MAX) -> bytes:
    """The request body, refusing (413) anything over ``limit_bytes`` before reading it all."""
    return b"".join([chunk async for chunk in read_chunks(request, limit_bytes)])


async def read_json(request: web.Request, limit_bytes: int = REQUEST_BODY_BYTES_MAX) -> Any:
    body = await read_body(request, limit_bytes)
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def _peer_error(status: int, body: bytes) -> LegionError:
    """The typed error a peer answered with."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    return from_json(status, parsed)


class PeerClient:
    """Calls to other nodes: pooled connections, deadlines, typed errors."""

    def __init__(
        self,
        token: str,
        state_digest: Callable[[], tuple[int, str]] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._token = token
        # On a TLS cluster: peers' certificates checked against the CA, this node's own presented.
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None
        self._state_digest = state_digest

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=64, ttl_dns_cache=300, ssl=self._ssl)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"Authorization": f"Bearer {self._token}"},
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(
        self,
        method: str,
        url: str,
        *,
        data: bytes | None = None,
        json_body: Any = None,
        content_type: str = "application/msgpack",
        timeout_ms: int = REQUEST_DEADLINE_MS,
        request_id: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """One request to a peer; the response body. Raises Unavailable/DeadlineExceeded or the peer's error.

        Carries ``request_id``, or else the id of the request being served (``REQUEST_ID_CONTEXT``)."""
        assert self._session is not None, "PeerClient.start() first"
        request_id = request_id or REQUEST_ID_CONTEXT.get()
        headers = {**(headers or {}), **self._epoch_header(), **({REQUEST_ID_HEADER: request_id} if request_id else {})}
        if json_body is not None:
            data, content_type = json.dumps(json_body).encode(), "application/json"
        if data is not None:
            headers["Content-Type"] = content_type
        timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000, connect=PEER_CONNECT_TIMEOUT_MS / 1000)
        try:
            async with self._session.request(method, url, data=data, headers=headers, timeout=timeout) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise _peer_error(resp.status, body)
                return body
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"{url} did not answer within {timeout_ms} ms") from None
        except aiohttp.ClientError as exc:
            raise Unavailable(f"{url} is unreachable: {exc.__class__.__name__}") from None

    def _epoch_header(self) -> dict[str, str]:
        if self._state_digest is None:
            return {}
        epoch, committed_by = self._state_digest()
        return {EPOCH_HEADER: f"{epoch}:{committed_by}"}

    async def stream(
        self, url: str, *, data: bytes | None = None, read_timeout_ms: int = 30_000
    ) -> AsyncIterator[bytes]:
        """GET ``url`` (POST ``data``, msgpack, if given) and yield the body in chunks as they arrive (for
        long transfers: no total deadline, but each read must arrive within ``read_timeout_ms``)."""
        assert self._session is not None, "PeerClient.start() first"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=read_timeout_ms / 1000, connect=PEER_CONNECT_TIMEOUT_MS / 1000)
        headers = self._epoch_header()
        if data is not None:
            headers["Content-Type"] = "application/msgpack"
        try:
            async with self._session.request(
                "GET" if data is None else "POST", url, data=data, timeout=timeout, headers=headers
            ) as resp:
                if resp.status >= 400:
                    raise _peer_error(resp.status, await resp.read())
                async for chunk in resp.content.iter_any():
                    yield chunk
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"{url} stalled for {read_timeout_ms} ms") from None
        except aiohttp.ClientError as exc:
            raise Unavailable(f"{url} failed: {exc.__class__.__name__}") from None

    async def stream_ops(
        self, url: str, *, data: bytes | None = None, read_timeout_ms: int = 30_000
    ) -> AsyncIterator[list[Operation]]:
        """``stream`` of a body of msgpack batches of operations (a fold): each batch as it is complete."""
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=PEER_BODY_BYTES_MAX)
        async for chunk in self.stream(url, data=data, read_timeout_ms=read_timeout_ms):
            unpacker.feed(chunk)
            for batch in unpacker:
                yield [Operation.from_wire(raw) for raw in batch]
