"""The httpx client and transports against scripted servers (httpx.MockTransport): retries,
waits, pacing per key, one idempotency key per logical POST, the async flow, typed errors,
hostile bodies. Sleeps are recorded, not slept."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from overten_errors import (
    ApiError,
    AsyncClient,
    Client,
    Retrier,
    RetryBudget,
    RetryTransport,
    StillRunning,
    TaskFailed,
    TransportError,
    UnexpectedResponse,
)
from overten_errors.policy import PollSchedule

KEY_A, KEY_B = "sk_live_a", "sk_live_b"


def envelope(code: str, message: str = "m") -> bytes:
    return json.dumps({"success": False, "error": code, "message": message}).encode()


class Script:
    """Answers each request with the next response of a list (the last one repeats) and
    records every request."""

    def __init__(self, *answers: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
            answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        return answer(request)


def reply(
    status: int, body: bytes = b"", **headers: str
) -> Callable[[httpx.Request], httpx.Response]:
    hs = {k.replace("_", "-"): v for k, v in headers.items()}
    return lambda request: httpx.Response(status, content=body, headers=hs)


class Sleeps:
    """Records each sleep and moves a clock (Unix ms, from the real one) forward by it: time
    as a paced request sees it."""

    def __init__(self) -> None:
        self.slept: list[float] = []
        self.now_ms = time.time_ns() // 1_000_000

    def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now_ms += round(seconds * 1000)

    def clock(self) -> int:
        return self.now_ms


def client(script: Script, sleeps: Sleeps, **kw: Any) -> Client:
    kw.setdefault("retrier", Retrier(clock=sleeps.clock))
    return Client(
        "http://api.test", api_key=KEY_A, transport=httpx.MockTransport(script), sleep=sleeps, **kw
    )


def test_a_post_keeps_one_idempotency_key_and_body_through_its_retries() -> None:
    script = Script(
        reply(503, envelope("service_unavailable"), retry_after="1"),
        reply(500, envelope("internal_error")),
        reply(201, b'{"id":"f_1"}'),
    )
    sleeps = Sleeps()
    assert client(script, sleeps).post("/v1/files", json={"a": 1}) == {"id": "f_1"}
    keys = {r.headers["idempotency-key"] for r in script.requests}
    assert len(script.requests) == 3 and len(keys) == 1 and "" not in keys
    assert {r.content for r in script.requests} == {b'{"a":1}'}
    # Retry-After: 1 is waited at least (spread up to half more); then a backoff of 2 s
    # less up to half (attempt 2).
    assert 1.0 <= sleeps.slept[0] <= 1.5 and 1.0 <= sleeps.slept[1] <= 2.0


def test_a_permanent_error_is_typed_and_sent_once() -> None:
    script = Script(reply(404, envelope("not_found", "no such run"), x_request_id="req_9"))
    with pytest.raises(ApiError) as e:
        client(script, Sleeps()).get("/v1/runs/r_1")
    assert (e.value.code, e.value.status, e.value.message, e.value.request_id) == (
        "not_found",
        404,
        "no such run",
        "req_9",
    )
    assert e.value.decision is not None and e.value.decision.advice.reason == "permanent"
    assert len(script.requests) == 1


def test_a_501_is_not_retried_though_it_names_a_wait() -> None:
    script = Script(reply(501, envelope("not_implemented"), retry_after="1"))
    with pytest.raises(ApiError):
        client(script, Sleeps()).get("/v1/x")
    assert len(script.requests) == 1


def task(status: str, **extra: object) -> bytes:
    return json.dumps({"task_id": "task_7", "status": status, **extra}).encode()


def test_the_async_flow_is_one_call() -> None:
    script = Script(
        reply(408, envelope("sync_timeout_upgrade_async")),
        reply(202, task("queued")),
        reply(200, task("running")),
        reply(
            200, task("succeeded", result={"file": "q3.xlsx"}, credits_used=4, duration_ms=61000)
        ),
    )
    sleeps = Sleeps()
    result = client(script, sleeps).post("/v1/excel", json={"prompt": "Q3"})
    assert result == {"file": "q3.xlsx"}
    sync, resubmit, poll1, poll2 = script.requests
    assert json.loads(resubmit.content) == {"prompt": "Q3", "async": True}
    assert sync.headers["idempotency-key"] == resubmit.headers["idempotency-key"]
    assert resubmit.extensions["overten.attempt"] == 2
    assert [str(p.url) for p in (poll1, poll2)] == ["http://api.test/tasks/task_7"] * 2
    assert {p.headers["authorization"] for p in (poll1, poll2)} == {f"Bearer {KEY_A}"}
    # Polls wait 1 s, then 2 s, less up to a quarter.
    assert 0.75 <= sleeps.slept[0] <= 1.0 and 1.5 <= sleeps.slept[1] <= 2.0


def test_a_failed_task_is_a_typed_failure() -> None:
    failure = {"code": "upstream_error", "message": "provider down"}
    script = Script(
        reply(202, task("queued")),
        reply(200, task("failed", error=failure, credits_used=0, duration_ms=9)),
    )
    with pytest.raises(TaskFailed) as e:
        client(script, Sleeps()).post("/v1/excel", json={"async": True})
    assert (e.value.code, e.value.status, e.value.task_id) == ("upstream_error", 502, "task_7")


def test_a_task_that_does_not_end_is_reported_still_running() -> None:
    script = Script(reply(202, task("queued")), reply(200, task("running")))
    c = client(script, Sleeps(), poll=PollSchedule(give_up_after_ms=10_000))
    with pytest.raises(StillRunning) as e:
        c.post("/v1/excel", json={})
    assert e.value.task_id == "task_7" and 3 <= e.value.polls <= 5


def test_pacing_holds_only_the_key_whose_window_is_spent() -> None:
    now = int(time.time())
    spent = {
        "x_ratelimit_limit": "10",
        "x_ratelimit_remaining": "0",
        "x_ratelimit_reset": str(now + 20),
    }
    script = Script(reply(200, b"{}", **spent), reply(200, b"{}"))
    sleeps = Sleeps()
    c = client(script, sleeps)
    c.get("/v1/a")  # key A's window is spent
    c.get("/v1/b", api_key=KEY_B)  # another key: sent at once
    assert sleeps.slept == []
    c.get("/v1/a")  # key A: its first slot, within one interval (6 s) of the reset
    assert len(sleeps.slept) == 1 and 19 <= sleeps.slept[0] <= 26, sleeps.slept


@pytest.mark.parametrize("remaining", ["0", " 00\t", "0"])
def test_any_spelling_of_a_spent_window_holds_the_key(remaining: str) -> None:
    now = int(time.time())
    spent = {
        "x_ratelimit_limit": "10",
        "x_ratelimit_remaining": remaining,
        "x_ratelimit_reset": str(now + 20),
    }
    sleeps = Sleeps()
    c = client(Script(reply(200, b"{}", **spent), reply(200, b"{}")), sleeps)
    c.get("/v1/a")
    c.get("/v1/a")
    assert len(sleeps.slept) == 1 and 10 <= sleeps.slept[0] <= 31


def test_one_budget_is_shared_by_every_thread() -> None:
    script = Script(reply(500, envelope("internal_error")))
    budget = RetryBudget()
    c = client(script, Sleeps(), retrier=Retrier(budget=budget))
    errors: list[BaseException] = []

    def one() -> None:
        try:
            c.get("/v1/x")
        except ApiError as e:
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    # 100 tokens at 5 a retry: exactly 20 retries in all, whatever the interleaving.
    assert len(errors) == 40 and len(script.requests) == 40 + 20 and budget.tokens == 0


class Huge(httpx.SyncByteStream):
    def __init__(self) -> None:
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(10_000):
            self.sent += 1024
            yield b"x" * 1024


def test_a_huge_error_body_is_read_no_further_than_64_kib_and_never_echoed() -> None:
    stream = Huge()
    script = Script(lambda r: httpx.Response(404, stream=stream))
    with pytest.raises(ApiError) as e:
        client(script, Sleeps()).get("/v1/x")
    assert stream.sent <= 66 * 1024
    assert e.value.code is None and "xxx" not in str(e.value)
    assert e.value.message == "Run, file, or image doesn’t exist or belongs to another org"


@pytest.mark.parametrize(
    ("answers", "error"),
    [
        ([reply(200, b"<html>")], UnexpectedResponse),
        ([reply(202, b"{}")], UnexpectedResponse),
        (
            [reply(202, task("queued")), reply(200, b'{"task_id":"t","status":"paused"}')],
            UnexpectedResponse,
        ),
        ([reply(202, task("queued")), reply(200, b"[" * 500)], UnexpectedResponse),
    ],
)
def test_hostile_successes_are_typed_errors(answers: list, error: type) -> None:  # type: ignore[type-arg]
    with pytest.raises(error) as e:
        client(Script(*answers), Sleeps()).post("/v1/x", json={})
    assert "<html>" not in str(e.value) and "paused" not in str(e.value)


def test_a_result_over_the_limit_is_refused() -> None:
    script = Script(reply(200, b'"' + b"x" * 2000 + b'"'))
    with pytest.raises(UnexpectedResponse):
        client(script, Sleeps(), max_result_bytes=1000).get("/v1/x")


def test_transport_failures_follow_the_rules() -> None:
    calls = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=request)
        if request.method == "OPTIONS" and len(calls) == 3:
            return httpx.Response(200)
        raise httpx.ReadTimeout("slow", request=request)

    sleeps = Sleeps()
    c = client(Script(refuse), sleeps)
    assert c.request("OPTIONS", "/v1/x") is None  # refused twice: retried, then 200
    assert len(calls) == 3 and len(sleeps.slept) == 2
    # A request of a method that is not idempotent, sent (a read timeout) and without a key
    # is not sent again.
    transport = RetryTransport(httpx.MockTransport(refuse), sleep=sleeps)
    with httpx.Client(transport=transport) as raw, pytest.raises(httpx.ReadTimeout):
        raw.request("LOCK", "http://api.test/v1/x", content=b"{}")
    assert calls.count("LOCK") == 1
    with pytest.raises(TransportError) as e:
        c.post("/v1/x", json={})  # keyed POST: retried until the attempts are spent
    assert calls.count("POST") == 5 and e.value.attempts == 5


def test_the_async_client_does_the_same() -> None:
    script = Script(
        reply(429, envelope("rate_limit_exceeded"), retry_after="2"),
        reply(408, envelope("sync_timeout_upgrade_async")),
        reply(202, task("queued")),
        reply(200, task("succeeded", result=[1, 2])),
    )
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def run() -> object:
        async with AsyncClient(
            "http://api.test", api_key=KEY_A, transport=httpx.MockTransport(script), sleep=sleep
        ) as c:
            return await c.post("/v1/excel", json={"prompt": "x"})

    assert asyncio.run(run()) == [1, 2]
    first, sync, resubmit, _poll = script.requests
    assert len({r.headers["idempotency-key"] for r in (first, sync, resubmit)}) == 1
    assert resubmit.extensions["overten.attempt"] == 3
    assert 2.0 <= slept[0] <= 3.0
