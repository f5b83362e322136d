"""The retry policy and the poll schedule, with the crates' defaults (`docs/retry.md`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ._catalog import POLICY, POLL

#: The largest integer a JSON number holds exactly, 2^53 - 1.
MAX_SAFE_INTEGER = 2**53 - 1


class PolicyError(ValueError):
    """A policy setting out of range (`docs/retry.md`, *Policy defaults*)."""


def unit(r: int) -> float:
    """`u = floor(r / 2^11) / 2^53`: a double in [0, 1) from a 64-bit draw `r`."""
    return ((r & 0xFFFF_FFFF_FFFF_FFFF) >> 11) / 9007199254740992.0


@dataclass(frozen=True, slots=True)
class Policy:
    """The retry policy (`docs/retry.md`, *Policy defaults*). `Policy()` is the default;
    `Policy(max_attempts=3)` changes one setting. A policy out of range raises
    `PolicyError` when it is made, as the Rust builder refuses it."""

    initial_delay_ms: int = POLICY.initial_delay_ms
    multiplier: float = POLICY.multiplier
    max_delay_ms: int = POLICY.max_delay_ms
    jitter: float = POLICY.jitter
    max_attempts: int = POLICY.max_attempts
    min_wait_ms: int = POLICY.min_wait_ms
    max_wait_ms: int = POLICY.max_wait_ms
    rate_limit_default_wait_ms: int = POLICY.rate_limit_default_wait_ms
    wait_spread: float = POLICY.wait_spread
    wait_spread_max_ms: int = POLICY.wait_spread_max_ms

    def __post_init__(self) -> None:
        problems: list[str] = []
        floats = ("multiplier", "jitter", "wait_spread")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                problems.append(f"{f.name} must be a number")
            elif f.name in floats:
                if not isinstance(value, (int, float)):
                    problems.append(f"{f.name} must be a number")
            elif not isinstance(value, int) or value < 0:
                problems.append(f"{f.name} must be a non-negative integer")
        if problems:
            raise PolicyError("; ".join(problems))
        if self.max_attempts < 1:
            problems.append("max_attempts must be at least 1")
        for name in ("initial_delay_ms", "max_delay_ms", "min_wait_ms", "max_wait_ms"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if not (math.isfinite(self.multiplier) and self.multiplier >= 1):
            problems.append("multiplier must be finite and at least 1")
        if not 0 <= self.jitter <= 1:
            problems.append("jitter must lie in [0, 1]")
        if not self.initial_delay_ms <= self.max_delay_ms <= self.max_wait_ms:
            problems.append("initial_delay_ms <= max_delay_ms <= max_wait_ms must hold")
        if self.min_wait_ms > self.max_wait_ms:
            problems.append("min_wait_ms must not exceed max_wait_ms")
        if self.max_wait_ms > MAX_SAFE_INTEGER:
            problems.append("max_wait_ms must be at most 2^53 - 1")
        if not 0 <= self.wait_spread <= 1:
            problems.append("wait_spread must lie in [0, 1]")
        if problems:
            raise PolicyError("; ".join(problems))

    def spread(self, wait_ms: int, r: int) -> int:
        """`bound()`'s lengthening of a named wait (`docs/retry.md`): `wait_ms` plus up to
        `min(floor(wait_ms * wait_spread), wait_spread_max_ms)`, never past `max_wait_ms`.
        `r` is read only when there is something to spread."""
        spread = min(math.floor(float(wait_ms) * float(self.wait_spread)), self.wait_spread_max_ms)
        extra = min(math.floor((spread + 1) * unit(r)), spread) if spread > 0 else 0
        return min(wait_ms + extra, self.max_wait_ms)


@dataclass(frozen=True, slots=True)
class PollSchedule:
    """How a client paces its polls of `GET /tasks/{task_id}` (`docs/retry.md`, *Polling a
    task*): poll `n` (the first is 1) waits `base = min(first_ms * multiplier^(n-1), max_ms)`
    ms, less a random share of up to `jitter` of it; polling stops after
    `give_up_after_ms`."""

    first_ms: int = POLL.first_ms
    multiplier: float = POLL.multiplier
    max_ms: int = POLL.max_ms
    jitter: float = POLL.jitter
    give_up_after_ms: int = POLL.give_up_after_ms

    def delay_ms(self, poll: int, r: int) -> int:
        """The wait before poll `poll` (0 reads as 1), with the 64-bit draw `r`."""
        n = max(poll, 1) - 1
        multiplier = self.multiplier if self.multiplier >= 1 else 1.0
        try:
            grown = float(self.first_ms) * float(multiplier) ** min(n, 2**31 - 1)
        except OverflowError:
            grown = math.inf
        max_ms = max(self.max_ms, self.first_ms)
        base = max_ms if math.isnan(grown) or grown >= max_ms else math.floor(grown)
        jitter = min(self.jitter, 1.0) if self.jitter > 0 else 0.0
        return math.floor(base * (1.0 - jitter * unit(r)))
