"""Pacing per API key and the `Retrier`: the decision with a clock, a random source, one
budget and one pacer per key, shared by every thread and asyncio task of a client."""

from __future__ import annotations

import hashlib
import math
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._catalog import LIMITS, PACING
from .decision import (
    Decision,
    Draw,
    RetryBudget,
    RetryTicket,
    decide,
    decide_transport,
    reserve,
)
from .policy import Policy, unit
from .reading import RateLimit, Received

_WINDOW_MS = LIMITS.rate_limit_window_ms

#: The most waits one request makes while pacing (its slot or hold, then re-checks).
MAX_WAITS = PACING.max_waits


class Pacer:
    """One API key's pacing (`docs/retry.md`, *Pacing*). By default in slot mode: once the
    key's window is spent, its requests take slots one `window / X-RateLimit-Limit` apart
    instead of leaving together at the reset: from within one interval of the reset when
    its own requests spent it, from a uniform point of the whole next window after a 429
    on a key seen shared. `Pacer(hold_only=True)` is the previous default:
    every held request leaves at the reset. Safe to share between threads."""

    __slots__ = (
        "_active",
        "_hold_only",
        "_interval_ms",
        "_lock",
        "_next_ms",
        "_sent",
        "_sent_window",
        "_shared",
        "_spent_until_ms",
        "_until_ms",
    )

    def __init__(
        self, until_ms: int = 0, *, shared: bool = False, hold_only: bool = PACING.mode == "hold"
    ) -> None:
        self._until_ms = until_ms
        self._lock = threading.Lock()
        self._hold_only = hold_only
        self._active = False
        self._next_ms = 0
        self._interval_ms = 0
        self._spent_until_ms = 0
        self._shared = shared and not hold_only
        self._sent_window = 0
        self._sent = 0

    @property
    def until_ms(self) -> int:
        """When the hold ends, in Unix ms (0: never held)."""
        return self._until_ms

    @property
    def hold_only(self) -> bool:
        """Whether this pacer is in hold mode (the previous default)."""
        return self._hold_only

    def holds_at(self, now_ms: int) -> bool:
        """Whether requests at `now_ms` may still be held (a hold, a spent window or a
        slot ahead): a pacer that may not is dropped first when `Pacers` makes room."""
        with self._lock:
            return (
                self._until_ms > now_ms
                or self._spent_until_ms > now_ms
                or (self._active and self._next_ms > now_ms)
            )

    def mark_shared(self) -> None:
        """Marks the key as shared by other processes (slot mode only)."""
        if not self._hold_only:
            with self._lock:
                self._shared = True

    @property
    def is_shared(self) -> bool:
        """Whether the key was seen shared (slot mode; never in hold mode): a response
        reported more of its window used than this process sent in it, or `mark_shared`
        said so. Sticky."""
        with self._lock:
            return self._shared

    def sent(self, now_ms: int) -> None:
        """Counts an attempt sent at `now_ms` with this key (slot mode)."""
        if self._hold_only:
            return
        window = now_ms // _WINDOW_MS
        with self._lock:
            if self._sent_window != window:
                self._sent_window = window
                self._sent = 0
            self._sent += 1

    def observe(
        self, rate_limit: RateLimit | None, now_ms: int, policy: Policy, draw: Draw
    ) -> None:
        """Hold mode's reading of a response's rate-limit headers (any response): with
        Remaining 0, the key is held until the reset, spread by one draw."""
        if rate_limit is None or rate_limit.remaining != 0:
            return
        wait = max(0, rate_limit.reset * 1000 - now_ms)
        if wait == 0 or wait > policy.max_wait_ms:
            return
        until = now_ms + policy.spread(wait, draw())
        with self._lock:
            self._until_ms = max(self._until_ms, until)

    def observe_response(
        self,
        rate_limit: RateLimit | None,
        status: int,
        now_ms: int,
        policy: Policy,
        draw: Draw,
    ) -> None:
        """Reads a response's rate-limit headers with its status: `observe` in hold mode,
        slot mode's rules otherwise (`docs/retry.md`, *Pacing*)."""
        if rate_limit is None:
            return
        if self._hold_only:
            self.observe(rate_limit, now_ms, policy, draw)
            return
        reset_ms = rate_limit.reset * 1000
        with self._lock:
            window = max(0, reset_ms - 1) // _WINDOW_MS
            own = self._sent if window == self._sent_window else 0
            if max(0, rate_limit.limit - rate_limit.remaining) > own:
                self._shared = True
            shared = self._shared
        with self._lock:
            if rate_limit.remaining != 0:
                if self._active and self._next_ms <= now_ms:
                    self._active = False
                return
            wait = max(0, reset_ms - now_ms)
            if wait == 0 or wait > policy.max_wait_ms:
                return
            interval = max(1, _WINDOW_MS // max(1, rate_limit.limit))
            phase = _WINDOW_MS if status == 429 and shared else interval
            self._spent_until_ms = max(self._spent_until_ms, reset_ms)
            if not self._active or self._next_ms < reset_ms:
                point = min(math.floor(phase * unit(draw())), phase - 1)
                self._next_ms = max(self._next_ms, reset_ms + point)
            self._active = True
            self._interval_ms = interval

    def hold_ms(self, now_ms: int, policy: Policy) -> int | None:
        """How long a request sent at `now_ms` waits for the hold alone; None when the key
        is not held or the hold is more than `max_wait_ms` away."""
        left = self._until_ms - now_ms
        return left if 0 < left <= policy.max_wait_ms else None

    def take(self, now_ms: int, policy: Policy) -> int | None:
        """How long a request about to be sent at `now_ms` waits, taking its slot in slot
        mode (a hold first); None: sent at once."""
        held = self.hold_ms(now_ms, policy)
        if held is not None:
            return held
        if self._hold_only:
            return None
        with self._lock:
            if not self._active and now_ms >= self._spent_until_ms:
                return None
            slot = max(self._next_ms, now_ms, self._spent_until_ms)
            left = slot - now_ms
            if left > policy.max_wait_ms:
                # No slot within max_wait: all of max_wait, no slot taken.
                return policy.max_wait_ms
            self._next_ms = slot + self._interval_ms
            return left if left > 0 else None

    def recheck(self, now_ms: int, policy: Policy) -> int | None:
        """For a request whose wait ended at `now_ms`: how long it waits again (its window
        seen spent meanwhile: a new slot; or a hold)."""
        with self._lock:
            spent = not self._hold_only and now_ms < self._spent_until_ms
        return self.take(now_ms, policy) if spent else self.hold_ms(now_ms, policy)

    def recheck_after(self, waits: int, now_ms: int, policy: Policy) -> int | None:
        """For a request whose `waits`-th pacing wait (its `take` is the first) ended at
        `now_ms`: how long it waits again. After each of the first `MAX_WAITS - 2` waits,
        `recheck`; after the next to last, the time to the reset of the latest window seen
        spent, taking no slot (or a hold's end, the later), so that the last wait never
        ends inside a window this process saw spent; after the last, None: it is sent."""
        if waits >= MAX_WAITS:
            return None
        if waits + 1 < MAX_WAITS:
            return self.recheck(now_ms, policy)
        with self._lock:
            to_reset = 0 if self._hold_only else max(0, self._spent_until_ms - now_ms)
        held = self.hold_ms(now_ms, policy) or 0
        wait = min(max(to_reset, held), policy.max_wait_ms)
        return wait if wait > 0 else None

    def wait_at(self, now_ms: int, policy: Policy) -> int | None:
        """How long in all a request about to be sent at `now_ms` waits: `take`, then
        `recheck_after` at the end of each wait, at most `MAX_WAITS` waits (the clock moved
        by the waits alone). None: sent at once."""
        wait = self.take(now_ms, policy)
        if wait is None:
            return None
        total = 0
        for waits in range(1, MAX_WAITS + 1):
            total += wait
            again = self.recheck_after(waits, now_ms + total, policy)
            if again is None:
                break
            wait = again
        return total


class Pacers:
    """One `Pacer` per API key (slot mode; `Pacers(hold_only=True)`: the previous default),
    keyed by a keyed BLAKE2b hash of the key (the key itself is never kept); requests
    without a key share one. At most `MAX_KEYS` keys are tracked: past
    that, keys that hold nothing are dropped, and if every one holds, a new key is not paced
    until there is room (the steps still decide its 429s)."""

    MAX_KEYS = 1024

    def __init__(self, *, hold_only: bool = PACING.mode == "hold") -> None:
        self._hold_only = hold_only
        self._secret = secrets.token_bytes(32)
        self._keys: dict[bytes, Pacer] = {}
        self._keyless = Pacer(hold_only=hold_only)
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
                self._keys = {k: p for k, p in self._keys.items() if p.holds_at(now_ms)}
                if len(self._keys) >= self.MAX_KEYS:
                    return Pacer(hold_only=self._hold_only)
            pacer = self._keys[ident] = Pacer(hold_only=self._hold_only)
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

    def observe(self, pacer: Pacer, rate_limit: RateLimit | None, status: int) -> None:
        """Pacing's reading of any response's `X-RateLimit-*`, with its status."""
        if rate_limit is not None:
            pacer.observe_response(rate_limit, status, self.clock(), self.policy, self.draw)

    def sent(self, pacer: Pacer) -> None:
        """Counts an attempt about to be sent with this pacer's key."""
        if not pacer.hold_only:
            pacer.sent(self.clock())

    def take_ms(self, pacer: Pacer) -> int | None:
        """How long a request of this pacer's key waits before it is sent (its slot)."""
        return pacer.take(self.clock(), self.policy)

    def recheck_ms(self, pacer: Pacer, waits: int) -> int | None:
        """After its `waits`-th wait: how long it waits again (its window seen spent
        meanwhile; `Pacer.recheck_after`)."""
        return pacer.recheck_after(waits, self.clock(), self.policy)
