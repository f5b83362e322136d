"""Units of the decision's mechanics: the policy's range checks, the budget, the pacers."""

from __future__ import annotations

import threading

import pytest

from overten_errors import Pacer, Pacers, Policy, PolicyError, RetryBudget, bearer_key
from overten_errors.reading import RateLimit


def test_a_policy_out_of_range_is_refused() -> None:
    for bad in (
        {"max_attempts": 0},
        {"jitter": 1.5},
        {"multiplier": 0.5},
        {"initial_delay_ms": 40_000},
        {"min_wait_ms": 400_000},
        {"wait_spread": -0.1},
        {"max_wait_ms": 2**53},
        {"max_attempts": "5"},
        {"max_attempts": True},
    ):
        with pytest.raises(PolicyError):
            Policy(**bad)
    assert Policy(max_attempts=3).max_attempts == 3 and Policy().max_attempts == 5


def test_the_budget_neither_creates_nor_loses_a_token_under_threads() -> None:
    budget = RetryBudget()
    spent: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(200):
            if budget.try_spend(5):
                with lock:
                    spent.append(5)
            budget.on_success(2)  # a success after retries returns retry_cost

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # Every return is capped at capacity, so tokens never pass 100 nor go below 0.
    assert 0 <= budget.tokens <= 100
    assert RetryBudget(tokens=500).tokens == 100  # the excess is dropped


SPENT = RateLimit(limit=10, remaining=0, reset=1_020)


def test_pacers_keep_one_pacer_per_key_and_make_room_past_the_bound() -> None:
    pacers, policy = Pacers(), Policy()
    for i in range(Pacers.MAX_KEYS):
        pacers.for_key(f"k{i}", 1_000_000)
    assert len(pacers) == Pacers.MAX_KEYS
    # None of them holds: a new key drops them and is tracked (its hold is kept).
    new = pacers.for_key("new", 1_000_000)
    new.observe(SPENT, 1_000_000, policy, lambda: 0)
    assert pacers.for_key("new", 1_000_000) is new and len(pacers) == 1
    assert new.hold_ms(1_000_000, policy) == 20_000
    assert pacers.for_key("other", 1_000_000).hold_ms(1_000_000, policy) is None
    assert pacers.for_key(None, 1_000_000) is pacers.for_key(None, 1)


def test_when_every_key_holds_a_new_key_is_not_tracked() -> None:
    pacers, policy = Pacers(), Policy()
    for i in range(Pacers.MAX_KEYS):
        pacers.for_key(f"k{i}", 1_000_000).observe(SPENT, 1_000_000, policy, lambda: 0)
    extra = pacers.for_key("extra", 1_000_001)
    assert extra is not pacers.for_key("extra", 1_000_001)
    assert len(pacers) == Pacers.MAX_KEYS


def test_bearer_keys_are_read_as_the_gateway_reads_them() -> None:
    assert bearer_key(["Bearer sk_live_a"]) == "sk_live_a"
    assert bearer_key(["bearer   sk_live_a "]) == "sk_live_a"
    assert bearer_key(["Basic abc"]) is None
    assert bearer_key(["Bearer a b"]) is None
    assert bearer_key(["Bearer a", "Bearer a"]) is None
    assert bearer_key([]) is None and bearer_key(["Bearer "]) is None


def test_slot_mode_spaces_a_spent_keys_requests_by_its_limit() -> None:
    # Worked by hand from docs/retry.md, Pacing: 10 a minute is one slot per 6 s; its own
    # request spent the window ending at 1,020 s; the draw at its low end.
    policy = Policy()
    pacer = Pacer()
    pacer.sent(1_000_000)
    pacer.observe_response(SPENT, 200, 1_000_000, policy, lambda: 0)
    assert [pacer.take(1_000_000, policy) for _ in range(3)] == [20_000, 26_000, 32_000]
    # The previous default: one hold, every request together.
    hold = Pacer(hold_only=True)
    hold.sent(1_000_000)
    hold.observe_response(SPENT, 200, 1_000_000, policy, lambda: 0)
    assert [hold.take(1_000_000, policy) for _ in range(3)] == [20_000] * 3
    # A 429 on a key used alone: slots as after its own success (the reset plus half an
    # interval, then one interval apart); on a key seen shared, over the next window.
    alone = Pacer()
    for _ in range(10):
        alone.sent(1_000_000)
    alone.observe_response(SPENT, 429, 1_000_000, policy, lambda: 2**63)
    assert [alone.take(1_000_000, policy) for _ in range(2)] == [23_000, 29_000]
    assert not alone.is_shared
    # One attempt of its own and a 429 reporting ten used: others use the key.
    by_others = Pacer()
    by_others.sent(1_000_000)
    assert not by_others.is_shared
    by_others.observe_response(SPENT, 429, 1_000_000, policy, lambda: 2**63)
    assert by_others.is_shared
    assert by_others.take(1_000_000, policy) == 20_000 + 30_000
    marked = Pacer(hold_only=True)
    marked.mark_shared()
    assert not marked.is_shared
    shared = Pacer()
    shared.observe_response(
        RateLimit(limit=10, remaining=3, reset=1_020), 200, 999_000, policy, lambda: 0
    )
    shared.observe_response(SPENT, 429, 1_000_000, policy, lambda: 2**63)
    assert shared.take(1_000_000, policy) == 20_000 + 30_000
    assert shared.take(1_000_000, policy) == 20_000 + 36_000
    # No slot within max_wait: all of max_wait, no slot taken.
    minute = Policy(max_wait_ms=60_000)
    far = Pacer()
    far.sent(1_000_000)
    far.observe_response(SPENT, 200, 1_000_000, minute, lambda: 0)
    assert [far.take(1_000_000, minute) for _ in range(8)] == [
        20_000,
        26_000,
        32_000,
        38_000,
        44_000,
        50_000,
        56_000,
        60_000,
    ]


def test_a_request_chasing_spent_windows_ends_its_last_wait_at_a_reset() -> None:
    # As the Rust test of that name (worked by hand from docs/retry.md, Pacing): a shared
    # key, each 429's draw at the middle (the next slot 30 s past the reset); before each
    # wake, another request's 429 shows the window its slot is in spent.
    policy = Policy()
    pacer = Pacer(shared=True)
    half = 2**63
    t0 = 1_000_000_000

    def rl(reset_s: int) -> RateLimit:
        return RateLimit(limit=10, remaining=0, reset=t0 // 1000 + reset_s)

    pacer.observe_response(rl(20), 429, t0, policy, lambda: half)
    assert pacer.take(t0, policy) == 50_000
    steps = [
        (30_000, 80, 50_000, 60_000),
        (90_000, 140, 110_000, 60_000),
        (150_000, 200, 170_000, 60_000),
        (210_000, 260, 230_000, 30_000),  # the next to last: to the reset at 260 s
    ]
    for waits, (seen, reset, wakes, after) in enumerate(steps, start=1):
        pacer.observe_response(rl(reset), 429, t0 + seen, policy, lambda: half)
        assert pacer.recheck_after(waits, t0 + wakes, policy) == after, waits
    assert pacer.recheck_after(5, t0 + 260_000, policy) is None
    assert pacer.recheck(t0 + 230_000, policy) == 60_000  # the last wait took no slot
    # The last wait is the longer of the reset and a hold; hold mode has only its hold.
    assert Pacer().recheck_after(4, t0, policy) is None
    assert Pacer(t0 + 45_000).recheck_after(4, t0, policy) == 45_000
    hold = Pacer(hold_only=True)
    hold.observe(RateLimit(limit=10, remaining=0, reset=t0 // 1000 + 20), t0, policy, lambda: 0)
    assert hold.recheck_after(4, t0, policy) == 20_000


def test_threads_taking_slots_never_share_one() -> None:
    policy = Policy()
    pacer = Pacer()
    pacer.sent(1_000_000)
    pacer.observe_response(
        RateLimit(limit=600, remaining=0, reset=1_020), 200, 1_000_000, policy, lambda: 0
    )
    got: list[int | None] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(50):
            w = pacer.take(1_000_000, policy)
            with lock:
                got.append(w)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(w for w in got if w is not None) == [20_000 + 100 * i for i in range(200)]
