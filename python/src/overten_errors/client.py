"""The five-line client: `Client` (sync) and `AsyncClient` (asyncio) on httpx.

    from overten_errors import Client

    client = Client("https://api.overten.example", api_key="sk_live_...")
    result = client.post("/v1/documents", json={"prompt": "Q3 sales as an Excel file"})

A call returns the result (the JSON the API answered, sync or as an async task) or raises a
typed error (`ApiError`, `TaskFailed`, `StillRunning`, `TransportError`,
`UnexpectedResponse`, `RequestError`). Underneath: a `RetryTransport` (retries, waits,
pacing per key, one idempotency key per logical POST), and the async flow of
`docs/retry.md`: a 408 `sync_timeout_upgrade_async` is resubmitted with `"async": true` and
the same idempotency key, and a 202 is polled at `/tasks/{task_id}` on the `PollSchedule`
until the task ends."""

from __future__ import annotations

import asyncio
import json as jsonlib
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from ._catalog import LIMITS, MAX_TASK_BODY_BYTES
from .errors import (
    ApiError,
    OvertenError,
    RequestError,
    StillRunning,
    TaskFailed,
    TransportError,
    UnexpectedResponse,
)
from .policy import PollSchedule
from .reading import TaskState, classify, parse_retry_after, read_task
from .retrier import Outcome, Retrier
from .transport import (
    ATTEMPT,
    KEYED_METHODS,
    OUTCOME,
    AsyncRetryTransport,
    Close,
    Flow,
    Read,
    RetryTransport,
    Send,
    Sleep,
    new_idempotency_key,
    run_async,
    run_sync,
)

#: The client's default timeout, in seconds: the API's sync ceiling (300 s) and a margin.
DEFAULT_TIMEOUT = LIMITS.sync_timeout_ms / 1000 + 30


def _api_error(response: httpx.Response) -> ApiError:
    outcome = response.extensions.get(OUTCOME)
    if isinstance(outcome, Outcome) and outcome.received is not None:
        return ApiError(outcome.received, outcome.decision, outcome.attempts)
    # Not through a RetryTransport: the status and headers alone.
    return ApiError(classify(response.status_code, response.headers, b""))


def _transport_error(error: httpx.TransportError) -> TransportError:
    outcome = getattr(error, "overten_outcome", None)
    decision = outcome.decision if isinstance(outcome, Outcome) else None
    attempts = outcome.attempts if isinstance(outcome, Outcome) else 1
    err = TransportError(f"no response: {type(error).__name__}", decision, attempts)
    err.__cause__ = error
    return err


def _resubmits(response: httpx.Response) -> Outcome | None:
    outcome = response.extensions.get(OUTCOME)
    if (
        isinstance(outcome, Outcome)
        and outcome.decision is not None
        and outcome.decision.advice.action == "resubmit_async"
    ):
        return outcome
    return None


def _json(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return jsonlib.loads(body)
    except ValueError:
        raise UnexpectedResponse("the response's body is not JSON") from None


def _accepted_task_id(body: bytes) -> str:
    try:
        doc = jsonlib.loads(body)
    except ValueError:
        doc = None
    task_id = doc.get("task_id") if isinstance(doc, dict) else None
    if not isinstance(task_id, str) or task_id == "":
        raise UnexpectedResponse("the 202's body names no task_id")
    return task_id


def _task_url(made_by: httpx.URL, base: str | None, task_id: str) -> str:
    segment = quote(task_id, safe="")
    if base is not None:
        return base.rstrip("/") + "/tasks/" + segment
    return str(made_by.copy_with(path="/tasks/" + segment, query=None, fragment=None))


def _task_result(state: TaskState | None) -> tuple[bool, Any]:
    if state is None:
        raise UnexpectedResponse("the task's body is not a task")
    if state.status == "succeeded":
        return True, state.result
    if state.status == "failed" and state.failure is not None:
        raise TaskFailed(state.failure)
    return False, None


def _poll_at_least_ms(response: httpx.Response) -> int:
    values = response.headers.get_list("retry-after")
    if len(values) != 1:
        return 0
    ra = parse_retry_after(values[0])
    return 0 if ra is None else ra.wait_ms(time.time_ns() // 1_000_000)


class _Common:
    def _setup(
        self,
        api_key: str | None,
        retrier: Retrier | None,
        poll: PollSchedule | None,
        tasks_at: str | None,
        max_result_bytes: int,
        headers: Mapping[str, str] | None,
    ) -> dict[str, str]:
        self.retrier = retrier if retrier is not None else Retrier()
        self.poll_schedule = poll if poll is not None else PollSchedule()
        self.tasks_at = tasks_at
        self.max_result_bytes = max_result_bytes
        self._rng = random.Random(secrets.randbits(64))
        out = dict(headers or {})
        if api_key is not None:
            out["Authorization"] = f"Bearer {api_key}"
        return out

    def _headers(
        self, method: str, body: Any, headers: Mapping[str, str] | None, api_key: str | None
    ) -> dict[str, str]:
        out = dict(headers or {})
        if api_key is not None:
            out["Authorization"] = f"Bearer {api_key}"
        if method.upper() in KEYED_METHODS and not any(k.lower() == "idempotency-key" for k in out):
            out["Idempotency-Key"] = new_idempotency_key()
        if body is not None:
            out["Content-Type"] = "application/json"
        return out

    def _poll_wait(self, polls: int, at_least: int) -> int:
        return max(self.poll_schedule.delay_ms(polls + 1, self._rng.getrandbits(64)), at_least)

    def _call(
        self,
        http: httpx.Client | httpx.AsyncClient,
        method: str,
        url: str,
        body: Any,
        headers: Mapping[str, str] | None,
        api_key: str | None,
        params: Mapping[str, str] | None,
    ) -> Flow[Any]:
        """One logical request (see the module), as a flow of IO steps: the sync and the
        asyncio clients drive the same one."""
        sent_headers = self._headers(method, body, headers, api_key)
        request = http.build_request(
            method, url, content=_encode(body), headers=sent_headers, params=params
        )
        response = yield Send(request)
        outcome = _resubmits(response)
        if outcome is not None:
            yield Close(response)
            again = http.build_request(
                method,
                url,
                content=_async_body(body),
                headers=sent_headers,
                params=params,
                extensions={ATTEMPT: outcome.attempts + 1},
            )
            response = yield Send(again)
        if response.status_code == 202:
            accepted = yield Read(response, LIMITS.max_body_bytes, bound=False)
            task_id = _accepted_task_id(accepted)
            task_url = _task_url(response.request.url, self.tasks_at, task_id)
            auth = request.headers.get("authorization")
            poll_headers = {"Authorization": auth} if auth else {}
            return (yield from self._poll_flow(http, task_url, task_id, poll_headers))
        if 200 <= response.status_code < 300:
            return _json((yield Read(response, self.max_result_bytes, bound=False)))
        yield Close(response)
        raise _api_error(response)

    def _poll_target(
        self,
        http: httpx.Client | httpx.AsyncClient,
        task: str,
        api_key: str | None,
    ) -> tuple[str, str, dict[str, str]]:
        if "/" in task:
            url, task_id = task, task.rstrip("/").rsplit("/", 1)[-1]
        else:
            task_id = task
            url = _task_url(http.base_url, self.tasks_at, task)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key is not None else {}
        return url, task_id, headers

    def _poll_flow(
        self,
        http: httpx.Client | httpx.AsyncClient,
        url: str,
        task_id: str,
        headers: dict[str, str],
    ) -> Flow[Any]:
        started = time.monotonic()
        give_up = self.poll_schedule.give_up_after_ms
        waited = polls = at_least = 0
        while True:
            wait = self._poll_wait(polls, at_least)
            left = give_up - max(int((time.monotonic() - started) * 1000), waited)
            if polls > 0 and left <= 0:
                raise StillRunning(task_id, polls, url)
            step = max(0, min(wait, left))
            waited += step
            yield Sleep(step)
            polls += 1
            response = yield Send(http.build_request("GET", url, headers=headers))
            if not 200 <= response.status_code < 300:
                yield Close(response)
                raise _api_error(response)
            at_least = _poll_at_least_ms(response)
            body = yield Read(response, self.max_result_bytes, bound=False)
            done, result = _task_result(read_task(body, self.max_result_bytes))
            if done:
                return result


def _encode(body: Any) -> bytes | None:
    if body is None:
        return None
    try:
        return jsonlib.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise RequestError(f"the body cannot be written as JSON: {e}") from None


def _async_body(body: Any) -> bytes:
    if not isinstance(body, dict):
        raise RequestError('the body is not a JSON object: "async": true cannot be added')
    return _encode({**body, "async": True}) or b"{}"


class Client(_Common):
    """A sync client for the Overten API (see the module). `api_key` is sent as
    `Authorization: Bearer`; a call's `api_key=` overrides it (one client can serve many
    keys: each is paced on its own). `retrier` is shared by every call (pass one to share it
    between clients); `transport` is the httpx transport that sends (default: httpx's)."""

    def __init__(
        self,
        base_url: str = "",
        api_key: str | None = None,
        *,
        retrier: Retrier | None = None,
        poll: PollSchedule | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        tasks_at: str | None = None,
        max_result_bytes: int = MAX_TASK_BODY_BYTES,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        default = self._setup(api_key, retrier, poll, tasks_at, max_result_bytes, headers)
        self._sleep = sleep
        self.http = httpx.Client(
            base_url=base_url,
            headers=default,
            timeout=timeout,
            transport=RetryTransport(transport, self.retrier, sleep=sleep),
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connections."""
        self.http.close()

    def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            return self.http.send(request, stream=True)
        except httpx.TransportError as e:
            raise _transport_error(e) from e
        except httpx.HTTPError as e:
            raise TransportError(f"no response: {type(e).__name__}") from e

    def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """Sends one logical request and returns its result (the JSON answered, `None` for
        an empty body), through retries, a resubmission as an async task and its polls."""
        flow = self._call(self.http, method, url, json, headers, api_key, params)
        return run_sync(flow, self._send, self._sleep)

    def get(self, url: str, **kw: Any) -> Any:
        """`request("GET", url, ...)`."""
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> Any:
        """`request("POST", url, ...)`: the async flow included."""
        return self.request("POST", url, **kw)

    def put(self, url: str, **kw: Any) -> Any:
        """`request("PUT", url, ...)`."""
        return self.request("PUT", url, **kw)

    def patch(self, url: str, **kw: Any) -> Any:
        """`request("PATCH", url, ...)`."""
        return self.request("PATCH", url, **kw)

    def delete(self, url: str, **kw: Any) -> Any:
        """`request("DELETE", url, ...)`."""
        return self.request("DELETE", url, **kw)

    def poll(self, task: str, *, api_key: str | None = None) -> Any:
        """Polls a task (its id, or the URL of `/tasks/{task_id}`) until it ends."""
        url, task_id, headers = self._poll_target(self.http, task, api_key)
        return run_sync(self._poll_flow(self.http, url, task_id, headers), self._send, self._sleep)


class AsyncClient(_Common):
    """The asyncio twin of `Client`: the same arguments, `await` on every call."""

    def __init__(
        self,
        base_url: str = "",
        api_key: str | None = None,
        *,
        retrier: Retrier | None = None,
        poll: PollSchedule | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        tasks_at: str | None = None,
        max_result_bytes: int = MAX_TASK_BODY_BYTES,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        default = self._setup(api_key, retrier, poll, tasks_at, max_result_bytes, headers)
        self._sleep = sleep
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers=default,
            timeout=timeout,
            transport=AsyncRetryTransport(transport, self.retrier, sleep=sleep),
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connections."""
        await self.http.aclose()

    async def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self.http.send(request, stream=True)
        except httpx.TransportError as e:
            raise _transport_error(e) from e
        except httpx.HTTPError as e:
            raise TransportError(f"no response: {type(e).__name__}") from e

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """See `Client.request`."""
        flow = self._call(self.http, method, url, json, headers, api_key, params)
        return await run_async(flow, self._send, self._sleep)

    async def get(self, url: str, **kw: Any) -> Any:
        """`request("GET", url, ...)`."""
        return await self.request("GET", url, **kw)

    async def post(self, url: str, **kw: Any) -> Any:
        """`request("POST", url, ...)`: the async flow included."""
        return await self.request("POST", url, **kw)

    async def put(self, url: str, **kw: Any) -> Any:
        """`request("PUT", url, ...)`."""
        return await self.request("PUT", url, **kw)

    async def patch(self, url: str, **kw: Any) -> Any:
        """`request("PATCH", url, ...)`."""
        return await self.request("PATCH", url, **kw)

    async def delete(self, url: str, **kw: Any) -> Any:
        """`request("DELETE", url, ...)`."""
        return await self.request("DELETE", url, **kw)

    async def poll(self, task: str, *, api_key: str | None = None) -> Any:
        """See `Client.poll`."""
        url, task_id, headers = self._poll_target(self.http, task, api_key)
        flow = self._poll_flow(self.http, url, task_id, headers)
        return await run_async(flow, self._send, self._sleep)


__all__ = ["AsyncClient", "Client", "OvertenError"]
