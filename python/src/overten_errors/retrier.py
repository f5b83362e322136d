"""Pacing per API key and the `Retrier`: the decision with a clock, a random source, one
budget and one pacer per key, shared by every thread and asyncio task of a client."""

from __future__ import annotations

import hashlib
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .decision import (
    Decision,
    Draw,
    RetryBudget,
    RetryTicket,
    decide,
    decide_transport,
    reserve,
)
from .policy import Policy
from .reading import RateLimit, Received


class Pacer:
    """One API key's pacing (`docs/retry.md`, *Pacing*): after a response with
    `X-RateLimit-Remaining: 0`, the key's next requests wait until the reset, spread by one
    draw. A later hold never shortens an earlier one."""

    __slots__ = ("_lock", "_until_ms")

    def __init__(self, until_ms: int = 0) -> None:
        self._until_ms = until_ms
        self._lock = threading.Lock()

    @property
    def until_ms(self) -> int:
        """When the hold ends, in Unix ms (0: never held)."""
        return self._until_ms

    def observe(
        self, rate_limit: RateLimit | None, now_ms: int, policy: Policy, draw: Draw
    ) -> None:
        """Reads one response's rate-limit headers (any response, success or not)."""
        if rate_limit is None or rate_limit.remaining != 0:
            return
        wait = max(0, rate_limit.reset * 1000 - now_ms)
        if wait == 0 or wait > policy.max_wait_ms:
            return
        until = now_ms + policy.spread(wait, draw())
        with self._lock:
            self._until_ms = max(self._until_ms, until)

    def hold_ms(self, now_ms: int, policy: Policy) -> int | None:
        """How long a request sent at `now_ms` waits first; None when the key is not held or
        the hold is more than `max_wait_ms` away."""
        left = self._until_ms - now_ms
        return left if 0 < left <= policy.max_wait_ms else None


class Pacers:
    """One `Pacer` per API key, keyed by a keyed BLAKE2b hash of the key (the key itself is
    never kept); requests without a key share one. At most `MAX_KEYS` keys are tracked: past
    that, keys that hold nothing are dropped, and if every one holds, a new key is not paced
    until there is room (the steps still decide its 429s)."""

    MAX_KEYS = 1024

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)
        self._keys: dict[bytes, Pacer] = {}
        self._keyless = Pacer()
        self._lock = threading.Lock()

    def _id(self, key: str) -> bytes:
        data = key.encode("utf-8", errors="surrogatepass")
        return hashlib.blake2b(data, key=self._secret, digest_size=16).digest()

    def for_key(self, key: str | None, now_ms: int) -> Pacer:
        """The pacer of `key` (None: the keyless one)."""
        if key is None:
            return self._keyless
        ident = self._id(key)
        with self._lock:
            pacer = self._keys.get(ident)
            if pacer is not None:
                return pacer
            if len(self._keys) >= self.MAX_KEYS:
                self._keys = {k: p for k, p in self._keys.items() if p.until_ms > now_ms}
                if len(self._keys) >= self.MAX_KEYS:
                    return Pacer()
            pacer = self._keys[ident] = Pacer()
            return pacer

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)


def bearer_key(authorization: list[str]) -> str | None:
    """The key of `Authorization: Bearer <key>` (scheme in any case, then spaces), as the
    gateway reads it; None for none, or for more than one `Authorization` header."""
    if len(authorization) != 1:
        return None
    value = authorization[0].strip(" \t")
    scheme, sep, rest = value.partition(" ")
    if not sep or scheme.lower() != "bearer":
        return None
    key = rest.lstrip(" ")
    return key if key and " " not in key else None


def _system_draw() -> Callable[[], int]:
    rng = random.Random(secrets.randbits(64))
    lock = threading.Lock()

    def draw() -> int:
        with lock:
            return rng.getrandbits(64)

    return draw


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a request ended in a client: the decision on its last failure (None after a
    success), the attempts it took, and the response as read (None for a transport
    failure or a success)."""

    decision: Decision | None
    attempts: int
    received: Received | None


class Retrier:
    """The policy, one retry budget, one pacer per API key, a clock and a random source:
    what every request of a client shares (`docs/retry.md`). Safe to share between threads
    and asyncio tasks; `clock` returns Unix milliseconds, `draw` uniform 64-bit integers
    (both injectable for tests)."""

    def __init__(
        self,
        policy: Policy | None = None,
        budget: RetryBudget | None = None,
        *,
        pacers: Pacers | None = None,
        clock: Callable[[], int] | None = None,
        draw: Draw | None = None,
        keep_budget: bool = True,
    ) -> None:
        self.policy = policy if policy is not None else Policy()
        if budget is None and keep_budget:
            budget = RetryBudget()
        self.budget = budget
        self.pacers = pacers if pacers is not None else Pacers()
        self.clock = clock if clock is not None else _now_ms
        self.draw = draw if draw is not None else _system_draw()

    def decide(self, received: Received, attempt: int) -> Decision:
        """The steps for a response (spends the budget on a retry)."""
        return decide(received, attempt, self.clock(), self.draw, self.policy, self.budget)

    def decide_transport(self, sent: bool, replay_safe: bool, attempt: int) -> Decision:
        """The steps for a transport failure."""
        return decide_transport(sent, replay_safe, attempt, self.draw, self.policy, self.budget)

    def decide_reserving(
        self, received: Received, attempt: int
    ) -> tuple[Decision, RetryTicket | None]:
        """The steps for a response, a retry paid with a `RetryTicket` (newest first)."""
        d = decide(received, attempt, self.clock(), self.draw, self.policy, None)
        return reserve(d, self.budget, self.draw, self.policy)

    def decide_transport_reserving(
        self, sent: bool, replay_safe: bool, attempt: int
    ) -> tuple[Decision, RetryTicket | None]:
        """The steps for a transport failure, a retry paid with a `RetryTicket`."""
        d = decide_transport(sent, replay_safe, attempt, self.draw, self.policy, None)
        return reserve(d, self.budget, self.draw, self.policy)

    def on_success(self, attempt: int) -> None:
        """Returns tokens to the budget after a success to `attempt`."""
        if self.budget is not None:
            self.budget.on_success(attempt)

    def pacer(self, key: str | None) -> Pacer:
        """The pacer of an API key (None: requests without one)."""
        return self.pacers.for_key(key, self.clock())

    def observe(self, pacer: Pacer, rate_limit: RateLimit | None) -> None:
        """Pacing's reading of any response's `X-RateLimit-*`."""
        if rate_limit is not None and rate_limit.remaining == 0:
            pacer.observe(rate_limit, self.clock(), self.policy, self.draw)

    def hold_ms(self, pacer: Pacer) -> int | None:
        """How long a request of this pacer's key waits before it is sent."""
        return pacer.hold_ms(self.clock(), self.policy)
