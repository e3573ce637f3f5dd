"""The ASGI middleware in front of every route: bearer token, body-size limit and admission
of in-flight bytes (with a share per client), the body read timeout, per-route metrics,
and a 500 instead of a dropped connection."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from mlfolio.errors import RequestError
from mlfolio.serve.contract import OPEN_ROUTES, error_body
from mlfolio.serve.metrics import ServerMetrics
from mlfolio.serve.options import BODY_TIMEOUT, MAX_INFLIGHT_BYTES

log = logging.getLogger(__name__)


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


@dataclass(eq=False)
class _Admission:
    """Bytes of request bodies in flight: announced or received, until the answer is sent;
    in all, and per client (peer address)."""

    limit: int
    client_limit: int
    inflight: int = 0
    by_client: dict[Any, int] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class _Ticket:
    """One request's share of the in-flight bytes (event loop only: no lock)."""

    admission: _Admission
    declared: bool  # a Content-Length was held up front
    client: Any  # the peer's address
    held: int = 0
    task: asyncio.Task | None = None  # the request's task, while it waits for its body
    waiting_since: float = 0.0
    stalled: bool = False  # cancelled by the body timeout
    clock: _BodyClock | None = None  # the body read timeout, when a body is expected
    refused: str = ""  # why take() said no

    def take(self, n: int) -> bool:
        """Hold ``n`` more bytes; False, holding nothing, when that passes the limit while
        other requests hold bytes (a request alone always gets in), or passes the client's
        share while that client has other bytes in flight: one client, stalled or slow,
        cannot hold the whole budget."""
        adm = self.admission
        if adm.inflight > self.held and adm.inflight + n > adm.limit:
            self.refused = (
                f"{adm.inflight - self.held} bytes of request bodies are in flight "
                f"(limit {adm.limit}); retry later"
            )
            return False
        if n:
            mine = adm.by_client.get(self.client, 0)
            if mine > self.held and mine + n > adm.client_limit:
                self.refused = (
                    f"{mine - self.held} bytes of request bodies from this client are in "
                    f"flight (limit {adm.client_limit} per client); retry later"
                )
                return False
            adm.by_client[self.client] = mine + n
        adm.inflight += n
        self.held += n
        return True

    def release(self) -> None:
        if self.held:
            adm = self.admission
            adm.inflight -= self.held
            left = adm.by_client[self.client] - self.held
            if left:
                adm.by_client[self.client] = left
            else:
                del adm.by_client[self.client]
            self.held = 0


def client_share(max_inflight_bytes: int) -> int:
    """One client's share of the in-flight bytes by default: half."""
    return max(1, max_inflight_bytes // 2)


class _BodyClock:
    """The body read timeout: requests reading their body (:func:`read_body`), and one
    timer (not one per request: the hot path only notes the time) that cancels the reads
    that got nothing for ``timeout`` seconds; the cancelled read raises a 408."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.interval = min(1.0, max(0.05, timeout / 4))
        self.waiting: set[_Ticket] = set()
        self._timer: asyncio.TimerHandle | None = None

    def start(self, ticket: _Ticket) -> None:
        """``ticket``'s request waits for its body (in this task) from now on."""
        ticket.task = asyncio.current_task()
        ticket.waiting_since = time.monotonic()
        self.waiting.add(ticket)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._sweep)

    def stalled(self, ticket: _Ticket) -> RequestError:
        """The 408 for a read the sweep cancelled (the task is no longer cancelling)."""
        if ticket.task is not None:
            ticket.task.uncancel()
        return RequestError(
            f"the request body stalled: nothing of it arrived for {self.timeout:g} s "
            "(the server's --body-timeout); send the body as you announce it",
            408,
            headers={"connection": "close"},
        )

    def _sweep(self) -> None:
        self._timer = None
        now = time.monotonic()
        for ticket in [t for t in self.waiting if now - t.waiting_since >= self.timeout]:
            self.waiting.discard(ticket)
            ticket.stalled = True
            if ticket.task is not None:
                ticket.task.cancel()
        if self.waiting:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._sweep)


_RETRY_AFTER = [(b"retry-after", b"1")]


class Gate:
    """Pure ASGI middleware: bearer token, body-size precheck and admission, per-route
    metrics, and a 500 instead of a dropped connection when a handler raises.

    Admission bounds memory: a body is refused (413) from its Content-Length when over
    ``max_body_bytes``, and (503, Retry-After) when it would bring the bodies in flight past
    ``max_inflight_bytes``, or one client's (peer address's) past
    ``max_client_inflight_bytes`` (default half) — before any of it is read. A body
    without a length is counted as it arrives (:func:`read_body`). A body that stalls
    (nothing received for ``body_timeout`` seconds) gets 408 and the connection is closed,
    which releases its bytes: a client that announces a body and never sends it cannot
    hold the budget."""

    def __init__(
        self,
        app: Any,
        *,
        route_of: Callable[[str], str],
        token: str | None,
        max_body_bytes: int,
        metrics: ServerMetrics,
        max_inflight_bytes: int = MAX_INFLIGHT_BYTES,
        max_client_inflight_bytes: int | None = None,
        body_timeout: float = BODY_TIMEOUT,
    ):
        self.app = app
        self.route_of = route_of
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.admission = _Admission(
            max_inflight_bytes,
            max_client_inflight_bytes or client_share(max_inflight_bytes),
        )
        self.clock = _BodyClock(body_timeout)
        self.metrics = metrics

    def around(self, app: Any) -> Gate:
        """This gate in front of ``app``: the factory Starlette's ``add_middleware`` calls
        when it builds the stack, so the app keeps the instance (and its one admission
        budget) for the routes it answers without the stack (:meth:`handle`)."""
        self.app = app
        return self

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send, self.app)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any, app: Any) -> None:
        """One HTTP request through the gate to ``app``: refused here, or passed on with its
        ticket, measured, and a 500 sent when ``app`` raises before answering."""
        started = time.perf_counter()
        path = scope["path"]
        route = self.route_of(path)
        status = 500
        response_started = False

        async def send_and_record(message: dict[str, Any]) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
            await send(message)

        ticket = None
        try:
            problem = self._refuse(scope, route)
            if problem is None:
                ticket = scope["mlfolio.ticket"]
                await app(scope, receive, send_and_record)
            else:
                code, message, headers = problem
                await _send(send_and_record, code, error_body(path, code, message), headers)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), path)
            if not response_started:
                await _send(
                    send_and_record,
                    500,
                    error_body(path, 500, "internal server error; see the server log"),
                )
        finally:
            if ticket is not None:
                ticket.release()
            self.metrics.request(route, status, time.perf_counter() - started)

    def _refuse(
        self, scope: dict[str, Any], route: str
    ) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        if self.token is not None and route not in OPEN_ROUTES:
            given = _header(scope, b"authorization")
            if given is None:
                return (
                    401,
                    "missing Authorization header: send 'Authorization: Bearer <token>'",
                    [(b"www-authenticate", b"Bearer")],
                )
            # The scheme is case-insensitive (RFC 9110 11.1), the token is not.
            scheme, _, credentials = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(
                credentials.lstrip(b" "), self.token
            ):
                return (
                    401,
                    "invalid bearer token in the Authorization header",
                    [(b"www-authenticate", b'Bearer error="invalid_token"')],
                )
        length = _header(scope, b"content-length")
        size = 0
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return (
                    400,
                    f"Content-Length {length.decode(errors='replace')!r} is not an integer",
                    [],
                )
            if size > self.max_body_bytes:
                return (
                    413,
                    f"request body of {size} bytes exceeds the limit of "
                    f"{self.max_body_bytes} bytes",
                    [],
                )
        client = scope.get("client")
        ticket = _Ticket(self.admission, length is not None, client and client[0])
        if size > 0 or (length is None and _header(scope, b"transfer-encoding") is not None):
            ticket.clock = self.clock
        if not ticket.take(size):
            return 503, ticket.refused, _RETRY_AFTER
        scope["mlfolio.ticket"] = ticket
        return None


def route_namer(app: Any) -> Callable[[str], str]:
    """Path → the route template it matches (``/v2/models/{name}/infer``), or "unmatched":
    the per-route label of the metrics, cached per path."""
    routes = [(r.path_regex, r.path) for r in app.router.routes if hasattr(r, "path_regex")]
    cache: dict[str, str] = {}

    def route_of(path: str) -> str:
        route = cache.get(path)
        if route is None:
            route = next((template for regex, template in routes if regex.match(path)), "unmatched")
            if route != "unmatched" and len(cache) < 10_000:
                cache[path] = route
        return route

    return route_of


async def _send(
    send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes even without a Content-Length (413), and
    a body without one that would pass the admission limit as it arrives (503); 408 when
    nothing of it arrives for the body timeout (the Gate's clock)."""
    ticket: _Ticket | None = request.scope.get("mlfolio.ticket")
    counted = ticket is not None and not ticket.declared
    clock = None if ticket is None else ticket.clock
    if clock is not None:
        clock.start(ticket)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(f"request body exceeds the limit of {limit} bytes", 413)
            if counted and not ticket.take(len(chunk)):
                raise RequestError(ticket.refused, 503, headers={"retry-after": "1"})
            chunks.append(chunk)
            if clock is not None:
                ticket.waiting_since = time.monotonic()  # progress: the clock starts again
    except asyncio.CancelledError:
        if clock is None or not ticket.stalled:
            raise
        raise clock.stalled(ticket) from None
    finally:
        if clock is not None:
            clock.waiting.discard(ticket)
    return b"".join(chunks)
