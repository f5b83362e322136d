"""httpx transports that retry as `docs/retry.md` says: `RetryTransport` (sync) and
`AsyncRetryTransport` (asyncio), each wrapping the transport that sends.

Per request: a `POST` or `PATCH` without an `Idempotency-Key` gets one, kept across its
attempts; the key's pacer holds it while its rate-limit window is spent; an error response
(its body read up to 64 KiB) or a transport failure is decided by the `Retrier` (one budget
and one pacer per API key, shared by every request through it), and a retry waits its delay
and is sent again. The response handed back is the success, or the last error with its body
as read (an error body past 64 KiB is cut there: it is no envelope anyway); its
`extensions["overten.outcome"]` is an `Outcome` (the decision, the attempts). A
`resubmit_async` decision (a 408) is handed back too: `Client` resubmits it."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from ._catalog import LIMITS
from .decision import RETRY_CANCELLED, Decision, RetryTicket, decide
from .errors import TransportError, UnexpectedResponse
from .reading import Received, classify, rate_limit_of
from .retrier import MAX_WAITS, Outcome, Retrier, bearer_key

#: Request extension: the number of this request's first attempt (a resubmission is the
#: next attempt after the request it resubmits).
ATTEMPT = "overten.attempt"
#: Response extension: the `Outcome`.
OUTCOME = "overten.outcome"
#: Methods sending twice is harmless for (RFC 9110 section 9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
#: Methods that get an `Idempotency-Key` when they have none.
KEYED_METHODS = frozenset({"POST", "PATCH"})
_T = TypeVar("_T")
_DROP = frozenset({b"content-encoding", b"content-length", b"transfer-encoding"})


def new_idempotency_key() -> str:
    """128 random bits in hex."""
    return secrets.token_hex(16)


def _prepare(request: httpx.Request) -> tuple[str | None, bool, bool, int]:
    if request.method in KEYED_METHODS and "idempotency-key" not in request.headers:
        request.headers["Idempotency-Key"] = new_idempotency_key()
    key = bearer_key(request.headers.get_list("authorization"))
    replay_safe = request.method in IDEMPOTENT_METHODS or "idempotency-key" in request.headers
    replayable = isinstance(request.stream, httpx.ByteStream)
    attempt = request.extensions.get(ATTEMPT, 1)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        attempt = 1
    return key, replay_safe, replayable, attempt


def _sent(error: httpx.TransportError) -> bool:
    # Refused, unresolved, or timed out connecting: the server never saw the request.
    return not isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout))


def _final(
    request: httpx.Request, response: httpx.Response, body: bytes, outcome: Outcome
) -> httpx.Response:
    headers = [(k, v) for (k, v) in response.headers.raw if k.lower() not in _DROP]
    extensions = dict(response.extensions)
    extensions.pop("network_stream", None)
    extensions[OUTCOME] = outcome
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=body,
        request=request,
        extensions=extensions,
    )


@dataclass(slots=True)
class Sleep:
    """A step of a flow: wait this long; with a `ticket` (a retry's wait), end early when
    a newer retry takes the ticket's tokens."""

    ms: int
    ticket: RetryTicket | None = None


@dataclass(slots=True)
class Send:
    """A step of a flow: send this request; the flow gets the response back, or has the
    transport's `httpx.TransportError` thrown into it."""

    request: httpx.Request


@dataclass(slots=True)
class Read:
    """A step of a flow: read this response's body, up to `limit` bytes, then close it.
    `bound` (an error body): stop there and hand back at most `limit + 1` bytes, and what
    came before a cut; otherwise (a result) more, or a cut, is an error."""

    response: httpx.Response
    limit: int
    bound: bool = True


@dataclass(slots=True)
class Close:
    """A step of a flow: close this response unread."""

    response: httpx.Response


#: What a flow asks its driver to do. Every decision is taken in the flow, once, for the
#: sync and the asyncio drivers alike; a driver only does IO.
Step = Sleep | Send | Read | Close
Flow = Generator[Step, Any, _T]


def wait_retry(ms: int, ticket: RetryTicket | None) -> Flow[bool]:
    """A retry's wait: True when the retry is to be sent, False when a newer retry took
    its ticket's tokens first (`docs/retry.md`, step 10, newest first). A flow closed while
    it waits returns the ticket's tokens."""
    if ticket is None:
        yield Sleep(ms)
        return True
    try:
        yield Sleep(ms, ticket)
    except BaseException:
        ticket.release()
        raise
    return ticket.send()


def attempts(retrier: Retrier, request: httpx.Request) -> Flow[httpx.Response]:
    """One request's attempts (see the module), as a flow of IO steps."""
    r = retrier
    key, replay_safe, replayable, attempt = _prepare(request)
    pacer = r.pacer(key)
    while True:
        # Its slot (or hold), then again while its window was seen spent meanwhile.
        wait = r.take_ms(pacer)
        for waits in range(1, MAX_WAITS + 1):
            if not wait:
                break
            yield Sleep(wait)
            wait = r.recheck_ms(pacer, waits)
        r.sent(pacer)
        try:
            response: httpx.Response = yield Send(request)
        except httpx.TransportError as e:
            if replayable:
                d, ticket = r.decide_transport_reserving(_sent(e), replay_safe, attempt)
            else:
                d, ticket = r.decide_transport(_sent(e), replay_safe, attempt), None
            if d.advice.action == "retry" and replayable:
                if (yield from wait_retry(d.advice.after_ms or 0, ticket)):
                    attempt += 1
                    continue
                d = RETRY_CANCELLED
            e.overten_outcome = Outcome(d, attempt, None)  # type: ignore[attr-defined]
            raise
        # Every response's window: a spent one paces the key, one with room ends its
        # slots, and its used count tells a shared key.
        if "x-ratelimit-remaining" in response.headers:
            r.observe(pacer, rate_limit_of(response.headers), response.status_code)
        if response.status_code < 400:
            if 200 <= response.status_code < 300:
                r.on_success(attempt)
            response.extensions[OUTCOME] = Outcome(None, attempt, None)
            return response
        body = yield Read(response, LIMITS.max_body_bytes)
        received: Received = classify(response.status_code, response.headers, body)
        if replay_safe and replayable:
            d, ticket = r.decide_reserving(received, attempt)
        else:
            d, ticket = _no_budget(r, received, attempt), None
        if d.advice.action == "retry" and replay_safe and replayable:
            if (yield from wait_retry(d.advice.after_ms or 0, ticket)):
                attempt += 1
                continue
            d = RETRY_CANCELLED
        return _final(request, response, body, Outcome(d, attempt, received))


def read_sync(response: httpx.Response, limit: int, bound: bool) -> bytes:
    """`Read`, for a sync response."""
    out = bytearray()
    try:
        for chunk in response.iter_bytes():
            out += chunk
            if len(out) > limit:
                if bound:
                    break
                raise UnexpectedResponse(f"the response's body is larger than {limit} bytes")
    except httpx.HTTPError as e:
        # An error body cut short is read as far as it came (the status decides); a
        # result cut short is an error.
        if not bound:
            raise TransportError(f"the body was cut: {type(e).__name__}") from e
    finally:
        response.close()
    return bytes(out[: limit + 1])


async def read_async(response: httpx.Response, limit: int, bound: bool) -> bytes:
    """`Read`, for an asyncio response."""
    out = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            out += chunk
            if len(out) > limit:
                if bound:
                    break
                raise UnexpectedResponse(f"the response's body is larger than {limit} bytes")
    except httpx.HTTPError as e:
        if not bound:
            raise TransportError(f"the body was cut: {type(e).__name__}") from e
    finally:
        await response.aclose()
    return bytes(out[: limit + 1])


def run_sync(
    flow: Flow[_T],
    send: Callable[[httpx.Request], httpx.Response],
    sleep: Callable[[float], None],
) -> _T:
    """Drives a flow with blocking IO."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = flow.throw(error) if error is not None else flow.send(value)
        except StopIteration as done:
            result: _T = done.value
            return result
        value, error = None, None
        if isinstance(step, Sleep):
            if step.ticket is not None and sleep is time.sleep:
                step.ticket.wait_sync(step.ms / 1000)
            elif step.ms > 0:
                sleep(step.ms / 1000)
        elif isinstance(step, Send):
            try:
                value = send(step.request)
            except httpx.TransportError as e:
                error = e
        elif isinstance(step, Read):
            value = read_sync(step.response, step.limit, step.bound)
        else:
            step.response.close()


async def run_async(
    flow: Flow[_T],
    send: Callable[[httpx.Request], Awaitable[httpx.Response]],
    sleep: Callable[[float], Awaitable[None]],
) -> _T:
    """Drives a flow with asyncio."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = flow.throw(error) if error is not None else flow.send(value)
        except StopIteration as done:
            result: _T = done.value
            return result
        value, error = None, None
        if isinstance(step, Sleep):
            if step.ticket is not None:
                await step.ticket.wait_async(step.ms / 1000, sleep)
            elif step.ms > 0:
                await sleep(step.ms / 1000)
        elif isinstance(step, Send):
            try:
                value = await send(step.request)
            except httpx.TransportError as e:
                error = e
        elif isinstance(step, Read):
            value = await read_async(step.response, step.limit, step.bound)
        else:
            await step.response.aclose()


class RetryTransport(httpx.BaseTransport):
    """A sync httpx transport that retries, waits and paces (see the module)."""

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        retrier: Retrier | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = transport if transport is not None else httpx.HTTPTransport()
        self.retrier = retrier if retrier is not None else Retrier()
        self._sleep = sleep

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return run_sync(attempts(self.retrier, request), self.inner.handle_request, self._sleep)

    def close(self) -> None:
        self.inner.close()


class AsyncRetryTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of `RetryTransport`."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        retrier: Retrier | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.inner = transport if transport is not None else httpx.AsyncHTTPTransport()
        self.retrier = retrier if retrier is not None else Retrier()
        self._sleep = sleep

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        flow = attempts(self.retrier, request)
        return await run_async(flow, self.inner.handle_async_request, self._sleep)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _no_budget(r: Retrier, received: Received, attempt: int) -> Decision:
    """The decision for a request that cannot be sent again: nothing is spent."""
    return decide(received, attempt, r.clock(), r.draw, r.policy, None)
