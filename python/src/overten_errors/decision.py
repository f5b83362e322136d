"""The retry decision: the steps of `docs/retry.md`, in order, and the retry budget."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from ._catalog import BUDGET, NOT_AN_ERROR, NOT_REPLAY_SAFE, OTHER_STATUSES, STATUS_RULES
from ._types import Rule
from .policy import MAX_SAFE_INTEGER, Policy, unit
from .reading import CODES_BY_NAME, Received

#: A source of uniform 64-bit draws (`random.getrandbits(64)`, or a fixed value in tests).
Draw = Callable[[], int]

Step = Literal[
    "permanent",
    "attempts",
    "resubmit_async",
    "retry_after",
    "rate_limit_reset",
    "rate_limit_default",
    "wait_window",
    "backoff",
    "budget",
]


@dataclass(frozen=True, slots=True)
class Advice:
    """What to do after a failure: `action` is `retry` (after `after_ms`, on `basis`),
    `resubmit_async`, or `stop` (for `reason`: `permanent` with a `fix`,
    `attempts_exhausted` after `attempts`, `wait_too_long` with `requested_ms` over `max_ms`,
    or `budget_exhausted`)."""

    action: Literal["retry", "resubmit_async", "stop"]
    after_ms: int | None = None
    basis: str | None = None
    reason: str | None = None
    fix: str | None = None
    attempts: int | None = None
    requested_ms: int | None = None
    max_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The advice as `overten-errors classify --json` and the fixtures write it."""
        out: dict[str, Any] = {"action": self.action}
        for name in ("after_ms", "basis", "reason", "fix", "attempts", "requested_ms", "max_ms"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass(frozen=True, slots=True)
class Decision:
    """The advice and the step of `docs/retry.md` that gave it."""

    advice: Advice
    step: Step


class RetryTicket:
    """A retry paid from a `RetryBudget` and waiting to be sent (`docs/retry.md`, step 10,
    *newest first*). `send()` when its wait ends (False: a newer retry took its tokens, the
    request ends with its last error); `release()` when it is abandoned unsent (its tokens
    go back). Wait on it with `wait_sync` / `wait_async`, which end early on cancellation."""

    __slots__ = ("_budget", "_callbacks", "_event", "cost", "state")

    def __init__(self, budget: RetryBudget, cost: int) -> None:
        self._budget = budget
        self.cost = cost
        #: "waiting", "sent", "cancelled" or "returned".
        self.state = "waiting"
        self._event = threading.Event()
        self._callbacks: list[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        """Whether a newer retry took this one's tokens."""
        return self.state == "cancelled"

    def send(self) -> bool:
        """The retry is being sent: its tokens are spent; False when it was cancelled."""
        return self._budget._settle(self, "sent")

    def release(self) -> None:
        """The retry will not be sent: a waiting one's tokens go back to the bucket."""
        self._budget._settle(self, "returned")

    def _cancel(self) -> list[Callable[[], None]]:
        # Under the budget's lock: the callbacks run after it is released.
        self.state = "cancelled"
        self._event.set()
        callbacks, self._callbacks = self._callbacks, []
        return callbacks

    def wait_sync(self, seconds: float) -> bool:
        """Blocks up to `seconds`; True when cancelled meanwhile."""
        return self._event.wait(max(seconds, 0.0))

    async def wait_async(self, seconds: float, sleep: Callable[[float], Awaitable[None]]) -> bool:
        """Awaits `sleep(seconds)`; ends early, True, when cancelled meanwhile (from any
        thread or task)."""
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        with self._budget._lock:
            if self.state == "cancelled":
                return True

            def wake() -> None:
                # A loop closed meanwhile has nobody left to wake.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(woken.set)

            self._callbacks.append(wake)
        slept = asyncio.ensure_future(sleep(seconds))
        cancel = asyncio.ensure_future(woken.wait())
        try:
            await asyncio.wait({slept, cancel}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (slept, cancel):
                if not task.done():
                    task.cancel()
        return self.cancelled

    def __repr__(self) -> str:
        return f"RetryTicket(cost={self.cost}, state={self.state!r})"


class RetryBudget:
    """The retry budget (`docs/retry.md`, step 10): a token bucket shared by every request
    of a client, across threads and asyncio tasks alike (one lock, held for a few
    instructions, never across a wait), paid newest first: a retry that waits holds a
    `RetryTicket`, and when the bucket cannot pay for a newer retry the oldest waiting
    tickets are cancelled and their tokens pay for it."""

    __slots__ = (
        "_lock",
        "_reserved",
        "_tokens",
        "_waiting",
        "capacity",
        "retry_cost",
        "storm_wait_ms",
        "success_refill",
        "window_cost",
    )

    def __init__(
        self,
        capacity: int = BUDGET.capacity,
        retry_cost: int = BUDGET.retry_cost,
        window_cost: int = BUDGET.window_cost,
        success_refill: int = BUDGET.success_refill,
        tokens: int | None = None,
        storm_wait_ms: tuple[int, int] = (BUDGET.storm_wait_min_ms, BUDGET.storm_wait_max_ms),
    ) -> None:
        for name, value in (
            ("capacity", capacity),
            ("retry_cost", retry_cost),
            ("window_cost", window_cost),
            ("success_refill", success_refill),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer")
        self.capacity = capacity
        self.retry_cost = retry_cost
        self.window_cost = window_cost
        self.success_refill = success_refill
        lo, hi = storm_wait_ms
        for value in (lo, hi):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError("storm_wait_ms must be two non-negative integers")
        #: A storm's backoff waits at least a uniform point of this window (ms, ordered).
        self.storm_wait_ms = (min(lo, hi), max(lo, hi))
        start = capacity if tokens is None else tokens
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError("tokens must be a non-negative integer")
        # Tokens above capacity hold capacity: the excess is dropped.
        self._tokens = min(start, capacity)
        self._reserved = 0
        self._waiting: deque[RetryTicket] = deque()
        self._lock = threading.Lock()

    @property
    def tokens(self) -> int:
        """Free tokens now."""
        with self._lock:
            return self._tokens

    @property
    def reserved(self) -> int:
        """Tokens held by retries paid and still waiting to be sent."""
        with self._lock:
            return self._reserved

    @property
    def waiting(self) -> int:
        """Retries holding tokens and still waiting to be sent (a free one is not counted)."""
        with self._lock:
            return len(self._waiting)

    def cost(self, advice: Advice) -> int:
        """What a retry on this advice's basis costs."""
        return self.window_cost if advice.basis == "wait_window" else self.retry_cost

    def _pay(self, cost: int) -> tuple[bool, list[Callable[[], None]]]:
        # Under the lock: free tokens first, then the oldest waiting tickets, none
        # cancelled when even all of them could not pay.
        wake: list[Callable[[], None]] = []
        if self._tokens < cost:
            if self._tokens + self._reserved < cost:
                return False, wake
            while self._tokens < cost and self._waiting:
                oldest = self._waiting.popleft()
                self._reserved -= oldest.cost
                self._tokens += oldest.cost
                wake += oldest._cancel()
        self._tokens -= cost
        return True, wake

    def try_spend(self, cost: int) -> bool:
        """Spends `cost` for a retry sent at once (no ticket), cancelling the oldest waiting
        tickets when the free tokens alone cannot; False when even they could not."""
        return self.spend_left(cost) is not None

    def spend_left(self, cost: int) -> int | None:
        """`try_spend`, with the free tokens left after paying (None: not paid)."""
        with self._lock:
            paid, wake = self._pay(cost)
            left = self._tokens
        for callback in wake:
            callback()
        return left if paid else None

    def reserve(self, cost: int) -> RetryTicket | None:
        """Pays `cost` for a retry that waits before it is sent: its ticket, or None when
        the bucket, with every waiting ticket cancelled, cannot pay."""
        return self.reserve_left(cost)[0]

    def reserve_left(self, cost: int) -> tuple[RetryTicket | None, int]:
        """`reserve`, with the free tokens left after paying."""
        with self._lock:
            paid, wake = self._pay(cost)
            ticket = None
            if paid:
                ticket = RetryTicket(self, cost)
                self._reserved += cost
                # A free retry holds nothing a newer one could take: not queued.
                if cost > 0:
                    self._waiting.append(ticket)
            left = self._tokens
        for callback in wake:
            callback()
        return ticket, left

    def _settle(self, ticket: RetryTicket, to: str) -> bool:
        with self._lock:
            if ticket.state != "waiting":
                return False
            ticket.state = to
            if ticket.cost > 0:
                self._waiting.remove(ticket)
            self._reserved -= ticket.cost
            if to == "returned":
                self._tokens += ticket.cost
            return True

    def on_success(self, attempt: int) -> None:
        """A success to `attempt` (the first is 1): `success_refill` back after a first
        attempt, `retry_cost` after retries, never past `capacity` (reserved tokens
        counted)."""
        back = self.success_refill if attempt <= 1 else self.retry_cost
        with self._lock:
            room = self.capacity - self._reserved
            self._tokens = max(self._tokens, min(room, self._tokens + back))

    def __repr__(self) -> str:
        return f"RetryBudget(tokens={self.tokens}, capacity={self.capacity})"


def status_rule(status: int) -> tuple[Rule, str]:
    """The status rule's row for `status`: its rule and why."""
    for row in STATUS_RULES:
        if row.first <= status <= row.last:
            return row.retry, row.why
    return OTHER_STATUSES, NOT_AN_ERROR


def rule_of(received: Received) -> tuple[Rule, str]:
    """Step 1: the known code's rule when it came with its own status, else the status
    rule; with the fix (or why) a permanent stop reports."""
    known = CODES_BY_NAME.get(received.code) if received.code is not None else None
    if known is not None and known.status == received.status:
        return known.retry, known.fix
    return status_rule(received.status)


def _stop_too_long(requested: int, policy: Policy) -> Advice:
    return Advice(
        "stop",
        reason="wait_too_long",
        requested_ms=min(requested, MAX_SAFE_INTEGER),
        max_ms=policy.max_wait_ms,
    )


def _bound(wait_ms: int, basis: str, policy: Policy, draw: Draw) -> Advice:
    if wait_ms > policy.max_wait_ms:
        return _stop_too_long(wait_ms, policy)
    base = max(wait_ms, policy.min_wait_ms)
    spread = min(math.floor(float(base) * float(policy.wait_spread)), policy.wait_spread_max_ms)
    extra = min(math.floor((spread + 1) * unit(draw())), spread) if spread > 0 else 0
    return Advice("retry", after_ms=min(base + extra, policy.max_wait_ms), basis=basis)


def _storm(
    decision: Decision, left: int, budget: RetryBudget, policy: Policy, draw: Draw
) -> Decision:
    """Step 10's storm: a backoff retry that left the bucket with less than one retry's cost
    waits at least a uniform point of the budget's storm window (capped at `max_wait`)."""
    advice = decision.advice
    if advice.basis != "backoff" or left >= budget.retry_cost:
        return decision
    lo = min(budget.storm_wait_ms[0], policy.max_wait_ms)
    span = min(budget.storm_wait_ms[1], policy.max_wait_ms) - lo
    extra = min(math.floor((span + 1) * unit(draw())), span)
    after = max(advice.after_ms or 0, lo + extra)
    return Decision(Advice("retry", after_ms=after, basis="backoff"), decision.step)


def _pay(
    advice: Advice, step: Step, budget: RetryBudget | None, policy: Policy, draw: Draw
) -> Decision:
    if advice.action == "retry" and budget is not None:
        left = budget.spend_left(budget.cost(advice))
        if left is None:
            return Decision(Advice("stop", reason="budget_exhausted"), "budget")
        return _storm(Decision(advice, step), left, budget, policy, draw)
    return Decision(advice, step)


def _backoff(attempt: int, policy: Policy, draw: Draw) -> Advice:
    n = min(attempt - 1, 1024)
    try:
        grown = float(policy.initial_delay_ms) * float(policy.multiplier) ** n
    except OverflowError:
        grown = math.inf
    base = policy.max_delay_ms if grown >= policy.max_delay_ms else math.floor(grown)
    after = math.floor(base * (1.0 - policy.jitter * unit(draw())))
    return Advice("retry", after_ms=after, basis="backoff")


def decide(
    received: Received,
    attempt: int,
    now_ms: int,
    draw: Draw,
    policy: Policy | None = None,
    budget: RetryBudget | None = None,
) -> Decision:
    """The steps of `docs/retry.md` for a response read by `classify` (or a failed task):
    `attempt` is the attempt that just failed (the first is 1; 0 reads as 1), `now_ms` the
    time in Unix milliseconds, `draw` a source of uniform 64-bit integers (read at most
    once), `budget` the client's retry budget, if it keeps one (spent here on a retry)."""
    p = policy if policy is not None else DEFAULT_POLICY
    rule, why = rule_of(received)
    # Step 2
    if rule.action == "never":
        return Decision(Advice("stop", reason="permanent", fix=why), "permanent")
    # Step 3
    attempt = max(attempt, 1)
    if attempt >= p.max_attempts:
        return Decision(Advice("stop", reason="attempts_exhausted", attempts=attempt), "attempts")
    # Step 4
    if rule.action == "resubmit_async":
        return Decision(Advice("resubmit_async"), "resubmit_async")
    # Step 5
    if received.retry_after is not None:
        wait = received.retry_after.wait_ms(now_ms)
        return _pay(_bound(wait, "retry_after", p, draw), "retry_after", budget, p, draw)
    if rule.action == "retry_after":
        rl = received.rate_limit
        # Step 6
        if rl is not None and rl.remaining == 0:
            wait = max(0, rl.reset * 1000 - now_ms)
            advice = _bound(wait, "rate_limit_reset", p, draw)
            return _pay(advice, "rate_limit_reset", budget, p, draw)
        # Step 7
        advice = _bound(p.rate_limit_default_wait_ms, "rate_limit_default", p, draw)
        return _pay(advice, "rate_limit_default", budget, p, draw)
    # Step 8
    if rule.action == "wait":
        lo, hi = min(rule.min_ms, rule.max_ms), max(rule.min_ms, rule.max_ms)
        if lo > p.max_wait_ms:
            return _pay(_stop_too_long(lo, p), "wait_window", budget, p, draw)
        hi = min(hi, p.max_wait_ms)
        span = hi - lo
        after = lo + min(math.floor((span + 1) * unit(draw())), span)
        advice = Advice("retry", after_ms=after, basis="wait_window")
        return _pay(advice, "wait_window", budget, p, draw)
    # Step 9
    return _pay(_backoff(attempt, p, draw), "backoff", budget, p, draw)


_TRANSPORT = Received(
    status=500, code=None, message="", body_is_envelope=False, message_from_body=False
)


def decide_transport(
    sent: bool,
    replay_safe: bool,
    attempt: int,
    draw: Draw,
    policy: Policy | None = None,
    budget: RetryBudget | None = None,
) -> Decision:
    """`docs/retry.md`, *When no response came back*: `sent` whether the request may have
    reached the server, `replay_safe` whether sending it twice is harmless."""
    p = policy if policy is not None else DEFAULT_POLICY
    if sent and not replay_safe:
        return Decision(Advice("stop", reason="permanent", fix=NOT_REPLAY_SAFE), "permanent")
    return decide(_TRANSPORT, attempt, 0, draw, p, budget)


def reserve(
    decision: Decision,
    budget: RetryBudget | None,
    draw: Draw,
    policy: Policy | None = None,
) -> tuple[Decision, RetryTicket | None]:
    """Step 10 for a retry that waits: pays an advised retry (of a decision taken without a
    budget) with a ticket, a storm's backoff stretched, or stops it (`budget_exhausted`)."""
    if decision.advice.action != "retry" or budget is None:
        return decision, None
    ticket, left = budget.reserve_left(budget.cost(decision.advice))
    if ticket is None:
        return Decision(Advice("stop", reason="budget_exhausted"), "budget"), None
    p = policy if policy is not None else DEFAULT_POLICY
    return _storm(decision, left, budget, p, draw), ticket


#: The decision that ends a request whose waiting retry a newer one took the tokens of.
RETRY_CANCELLED = Decision(Advice("stop", reason="budget_exhausted"), "budget")

#: The default policy.
DEFAULT_POLICY = Policy()
