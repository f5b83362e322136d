"""The retry budget paid newest first (`docs/retry.md`, step 10): the same rules as the
Rust crate's tests (cancellation order, conservation of tokens, one budget for every
thread), the early wake-up of a cancelled wait (threads and asyncio), and a transport
flow whose waiting retry a newer failure takes."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from typing import Any

import httpx
import pytest

from overten_errors import RETRY_CANCELLED, Retrier, RetryBudget, RetryTicket
from overten_errors.transport import Read, Send, Sleep, attempts


def reserve(budget: RetryBudget, cost: int = 5) -> RetryTicket:
    ticket = budget.reserve(cost)
    assert ticket is not None
    return ticket


def state(budget: RetryBudget) -> tuple[int, int, int]:
    return budget.tokens, budget.reserved, budget.waiting


def test_the_oldest_waiting_retries_are_cancelled_first_and_only_as_many_as_needed() -> None:
    budget = RetryBudget()  # 100 tokens, 5 a retry, 20 in a wait window
    tickets = [reserve(budget) for _ in range(20)]
    assert state(budget) == (0, 100, 20)
    newest = reserve(budget, 20)
    assert [t.cancelled for t in tickets] == [True] * 4 + [False] * 16
    assert state(budget) == (0, 100, 17)
    reserve(budget)
    assert tickets[4].cancelled and not tickets[5].cancelled and not newest.cancelled
    assert not tickets[0].send()
    for t in tickets[5:]:
        assert t.send()
    assert state(budget) == (0, 25, 2)


def test_nothing_is_cancelled_when_even_every_waiting_retry_could_not_pay() -> None:
    budget = RetryBudget(30, 5, 40, 1)
    a, b = reserve(budget), reserve(budget)
    assert budget.reserve(40) is None
    assert not a.cancelled and not b.cancelled
    assert state(budget) == (20, 10, 2)
    reserve(budget)
    assert not a.cancelled, "free tokens are spent first"
    # Exactly enough: 5 free and 25 waiting pay 30.
    exact = RetryBudget(30, 5, 30, 1)
    waiting = [reserve(exact) for _ in range(5)]
    assert reserve(exact, 30).cost == 30
    assert all(t.cancelled for t in waiting)


def test_an_abandoned_retry_returns_its_tokens_and_a_sent_one_never_does() -> None:
    budget = RetryBudget(10, 5, 5, 1)
    a, b = reserve(budget), reserve(budget)
    a.release()
    assert state(budget) == (5, 5, 1)
    assert b.send()
    b.release()
    assert state(budget) == (5, 0, 0)
    # A retry paid at once (no ticket) takes a waiting one's tokens too.
    c = reserve(budget)
    assert budget.try_spend(5) and state(budget) == (0, 0, 0) and c.cancelled
    assert not budget.try_spend(5)


def test_successes_refill_up_to_the_capacity_counting_waiting_retries() -> None:
    budget = RetryBudget(20, 5, 5, 1)
    a = reserve(budget)
    budget.on_success(2)
    budget.on_success(1)
    assert state(budget) == (15, 5, 1)
    assert a.send()
    budget.on_success(1)
    assert budget.tokens == 16


def test_the_budget_follows_its_model() -> None:
    """Random operations against a model written from the rules: the same tickets are
    cancelled and the same tokens free, reserved and waiting after every one."""
    rng = random.Random(27)
    for _ in range(300):
        budget = RetryBudget(50, 5, 20, 1)
        free, next_id = 50, 0
        queue: list[tuple[int, int]] = []
        held: list[tuple[int, RetryTicket]] = []
        cancelled: set[int] = set()
        for _ in range(rng.randrange(1, 120)):
            op = rng.choice(["reserve", "reserve", "spend", "send", "release", "ok", "retried"])
            if op in ("reserve", "spend"):
                cost = rng.choice([5, 20])
                pays = free + sum(c for _, c in queue) >= cost
                if pays:
                    while free < cost:
                        tid, c = queue.pop(0)
                        free += c
                        cancelled.add(tid)
                    free -= cost
                if op == "spend":
                    assert budget.try_spend(cost) == pays
                else:
                    t = budget.reserve(cost)
                    assert (t is not None) == pays
                    if t is not None:
                        queue.append((next_id, cost))
                        held.append((next_id, t))
                        next_id += 1
            elif op in ("send", "release") and held:
                tid, t = held.pop(rng.randrange(len(held)))
                waiting = [q for q in queue if q[0] == tid]
                assert t.cancelled == (not waiting)
                if waiting:
                    queue.remove(waiting[0])
                    if op == "release":
                        free += waiting[0][1]
                if op == "send":
                    assert t.send() == bool(waiting)
                else:
                    t.release()
            elif op in ("ok", "retried"):
                back = 1 if op == "ok" else 5
                free = max(free, min(50 - sum(c for _, c in queue), free + back))
                budget.on_success(1 if op == "ok" else 2)
            assert state(budget) == (free, sum(c for _, c in queue), len(queue))
            assert free + budget.reserved <= 50
            assert all(t.cancelled == (tid in cancelled) for tid, t in held)


def test_every_thread_sees_one_budget() -> None:
    budget = RetryBudget(1000, 5, 5, 1)
    sent = [0] * 8

    def work(n: int) -> None:
        held: list[RetryTicket] = []
        for i in range(200):
            t = budget.reserve(5)
            if t is not None:
                held.append(t)
            if i % 3 == n % 3 and held:
                sent[n] += held.pop().send()
            if i % 7 == 0 and held:
                held.pop(0).release()
        for t in held:
            t.release()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(sent) > 0
    assert state(budget) == (1000 - 5 * sum(sent), 0, 0)


def test_a_blocked_wait_ends_when_its_retry_is_cancelled() -> None:
    budget = RetryBudget(5, 5, 5, 1)
    old = reserve(budget)
    took: list[float] = []

    def wait() -> None:
        start = time.monotonic()
        assert old.wait_sync(30)
        took.append(time.monotonic() - start)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.05)
    reserve(budget)
    waiter.join(10)
    assert took and took[0] < 10, took
    assert not old.send()


def test_an_asyncio_wait_ends_when_its_retry_is_cancelled() -> None:
    async def main() -> tuple[bool, float, bool]:
        budget = RetryBudget(5, 5, 5, 1)
        old = reserve(budget)
        start = time.monotonic()
        waiting = asyncio.ensure_future(old.wait_async(30, asyncio.sleep))
        await asyncio.sleep(0.05)
        reserve(budget)
        cancelled = await asyncio.wait_for(waiting, 10)
        # A wait that is not cancelled sleeps its time and reports so.
        fresh = reserve(RetryBudget(5, 5, 5, 1))
        slept = await fresh.wait_async(0.01, asyncio.sleep)
        return cancelled, time.monotonic() - start, slept

    cancelled, took, slept = asyncio.run(main())
    assert cancelled and took < 10 and not slept


def _failing(code: str) -> httpx.Response:
    body = json.dumps({"success": False, "error": code, "message": "m"}).encode()
    return httpx.Response(500, content=body)


def _to_the_wait(flow: Any, code: str) -> Sleep:
    step = next(flow)
    assert isinstance(step, Send)
    step = flow.send(_failing(code))
    assert isinstance(step, Read)
    step = flow.send(step.response.read())
    assert isinstance(step, Sleep) and step.ticket is not None
    return step


def test_a_flow_whose_retry_a_newer_failure_took_answers_its_last_error() -> None:
    retrier = Retrier(budget=RetryBudget(5, 5, 5, 1), draw=lambda: 0)
    a = attempts(retrier, httpx.Request("GET", "http://api.test/a"))
    b = attempts(retrier, httpx.Request("GET", "http://api.test/b"))
    a_wait = _to_the_wait(a, "internal_error")
    assert retrier.budget is not None and retrier.budget.reserved == 5
    _to_the_wait(b, "upstream_error")
    assert a_wait.ticket is not None and a_wait.ticket.cancelled
    with pytest.raises(StopIteration) as done:
        a.send(None)
    answer: httpx.Response = done.value.value
    outcome = answer.extensions["overten.outcome"]
    assert answer.status_code == 500 and outcome.decision == RETRY_CANCELLED
    assert outcome.attempts == 1 and outcome.received.code == "internal_error"
    # b, closed while it waits (its caller gave up), returns its tokens.
    b.close()
    assert state(retrier.budget) == (5, 0, 0)


def test_a_transport_failure_whose_retry_a_newer_one_took_raises_with_the_cancellation() -> None:
    retrier = Retrier(budget=RetryBudget(5, 5, 5, 1), draw=lambda: 0)
    request = httpx.Request("GET", "http://api.test/a")
    flows = [attempts(retrier, request), attempts(retrier, httpx.Request("GET", "http://x/b"))]
    waits = []
    for flow in flows:
        assert isinstance(next(flow), Send)
        step = flow.throw(httpx.ConnectError("refused", request=request))
        assert isinstance(step, Sleep) and step.ticket is not None
        waits.append(step)
    assert waits[0].ticket is not None and waits[0].ticket.cancelled
    with pytest.raises(httpx.ConnectError) as raised:
        flows[0].send(None)
    outcome = raised.value.overten_outcome  # type: ignore[attr-defined]
    assert outcome.decision == RETRY_CANCELLED and outcome.attempts == 1
    # The newer one goes when its wait ends.
    assert isinstance(flows[1].send(None), Send)


def test_free_retries_are_never_queued_or_cancelled() -> None:
    budget = RetryBudget(5, 0, 0, 1)
    free = [reserve(budget, 0) for _ in range(1000)]
    assert state(budget) == (5, 0, 0)
    assert all(t.send() for t in free)
