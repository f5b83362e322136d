"""Replays the golden fixtures of `docs/fixtures/` through this package: every kind
(`http_response`, `task_failure`, `transport_failure`, `success`, `pacing`), each at the
draws that reach both ends of a range (`docs/README.md`).

    python -m overten_errors.fixtures docs

prints one line per failure and `replay: N passed, N failed`; exits 1 on any failure or
when no fixture was found.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .decision import Advice, Draw, RetryBudget, decide, decide_transport
from .policy import Policy
from .reading import CODES_BY_NAME, classify, rate_limit_of, read_failed_task
from .retrier import Pacer

#: The draws every range is checked at: its two ends (r = 0 and r = 2^64 - 1) and two more.
DRAWS = (0, 2**64 - 1, 2**63, 12345678901234567)


def _fixed(bits: int) -> Draw:
    return lambda: bits


def _budget(spec: dict[str, Any]) -> RetryBudget:
    return RetryBudget(
        capacity=spec["capacity"],
        retry_cost=spec["retry_cost"],
        window_cost=spec["window_cost"],
        success_refill=spec["success_refill"],
        tokens=spec["tokens"],
        storm_wait_ms=(spec["storm_wait_min_ms"], spec["storm_wait_max_ms"]),
    )


def _control_in_headers(fixture: dict[str, Any]) -> bool:
    for _, value in fixture.get("response", {}).get("headers", []):
        if any(c != "\t" and (ord(c) < 0x20 or ord(c) == 0x7F) for c in value):
            return True
    return False


def _storm(budget: dict[str, Any]) -> bool:
    """Whether paying a backoff retry from this budget leaves less than a retry's cost (a
    storm's backoff, `docs/retry.md` step 10)."""
    held: int = min(budget["tokens"], budget["capacity"])
    cost: int = budget["retry_cost"]
    return held >= cost and held - cost < cost


def _same_action(
    errors: list[str], advice: Advice, want: dict[str, Any], bits: int, storm: bool = False
) -> None:
    got = advice.to_json()
    if "min_ms" not in want:
        if got != want:
            errors.append(f"action: got {got!r}, want {want!r}")
        return
    after = advice.after_ms if advice.after_ms is not None else -1
    if not (
        advice.action == want["action"]
        and advice.basis == want["basis"]
        and want["min_ms"] <= after <= want["max_ms"]
    ):
        errors.append(f"action: got {got!r}, want {want!r}")
        return
    # The ends of a range are the draws r = 0 and r = 2^64 - 1: a backoff is longest at
    # u = 0, every other wait (a storm's stretched backoff too) shortest.
    low_first = want["basis"] != "backoff" or storm
    if bits == 0 and after != (want["min_ms"] if low_first else want["max_ms"]):
        errors.append(f"delay at r = 0: got {after}")
    if bits == 2**64 - 1 and after != (want["max_ms"] if low_first else want["min_ms"]):
        errors.append(f"delay at r = 2^64 - 1: got {after}")


def check(fixture: dict[str, Any], policy: Policy | None = None) -> list[str]:
    """The ways this package differs from one fixture's `expect` (empty: it conforms)."""
    p = policy if policy is not None else Policy()
    errors: list[str] = []
    expect = fixture["expect"]
    kind = fixture["kind"]
    request = fixture.get("request", {})
    if _control_in_headers(fixture):
        return ["a header value holds a control character: not a fixture"]
    if kind == "pacing":
        now_ms = request["now_unix"] * 1000
        wants = expect.get("waits_ms", [expect["hold_ms"]])
        if wants[0] != expect["hold_ms"]:
            errors.append("hold_ms is not the first of waits_ms")
        rate_limit = rate_limit_of(fixture["response"]["headers"])
        sent = request.get("sent_in_window", 0)
        shared = request.get("seen_shared", False)
        if not isinstance(sent, int) or isinstance(sent, bool) or not 0 <= sent < 2**32:
            return ["request.sent_in_window: not an integer from 0 to 2^32 - 1"]
        if not isinstance(shared, bool):
            return ["request.seen_shared: not a boolean"]
        for bits in DRAWS:
            pacer = Pacer(request.get("held_until_unix_ms", 0), shared=shared)
            # Past any limit the count changes nothing: a huge one is not looped over.
            for _ in range(min(sent, 2**16 - 1)):
                pacer.sent(now_ms)
            pacer.observe_response(
                rate_limit, fixture["response"]["status"], now_ms, p, _fixed(bits)
            )
            for i, want in enumerate(wants):
                got = pacer.wait_at(now_ms, p)
                what = f"waits_ms[{i}]"
                if isinstance(want, dict):
                    if got is None or not want["min_ms"] <= got <= want["max_ms"]:
                        errors.append(f"{what}: got {got!r}, want {want!r}")
                    if bits == 0 and got != want["min_ms"]:
                        errors.append(f"{what} at r = 0: got {got!r}")
                    if bits == 2**64 - 1 and got != want["max_ms"]:
                        errors.append(f"{what} at r = 2^64 - 1: got {got!r}")
                elif got != want:
                    errors.append(f"{what}: got {got!r}, want {want!r}")
        return errors
    if kind == "success":
        budget = _budget(request["budget"])
        budget.on_success(request["attempt"])
        if budget.tokens != expect["budget_tokens"]:
            errors.append(f"budget_tokens: got {budget.tokens}, want {expect['budget_tokens']}")
        return errors
    if kind == "transport_failure":
        failure = fixture["failure"]
        for bits in DRAWS:
            d = decide_transport(
                failure["sent"],
                failure["replay_safe"],
                request["attempt"],
                _fixed(bits),
                p,
                _budget(request["budget"]),
            )
            if d.step != expect["step"]:
                errors.append(f"step: got {d.step!r}, want {expect['step']!r}")
            storm = _storm(request["budget"])
            _same_action(errors, d.advice, expect["action"], bits, storm)
        return errors
    response = fixture["response"]
    if kind == "task_failure":
        received = read_failed_task(response["body"])
        if received is None:
            return ["not read as a failed task"]
    else:
        received = classify(response["status"], response["headers"], response["body"])

    def same(what: str, got: object, want: object) -> None:
        if got != want:
            errors.append(f"{what}: got {got!r}, want {want!r}")

    same("code", received.code, expect["code"])
    same("known", received.code in CODES_BY_NAME, expect["known"])
    same("status", received.status, expect["status"])
    same("message", received.message, expect["message"])
    same("request_id", received.request_id, expect["request_id"])
    same("run_id", received.run_id, expect["run_id"])
    same("task_id", received.task_id, expect["task_id"])
    same("body_is_envelope", received.body_is_envelope, expect["body_is_envelope"])
    same("message_from_body", received.message_from_body, expect["message_from_body"])
    same("status_mismatch", received.status_mismatch, expect["status_mismatch"])
    same("header_problems", list(received.header_problems), expect["header_problems"])
    for bits in DRAWS:
        d = decide(
            received,
            request["attempt"],
            request["now_unix"] * 1000,
            _fixed(bits),
            p,
            _budget(request["budget"]),
        )
        same("step", d.step, expect["step"])
        _same_action(errors, d.advice, expect["action"], bits, _storm(request["budget"]))
    return errors


def replay(docs: str) -> tuple[int, list[str]]:
    """Replays every fixture under `docs/fixtures`: (fixtures checked, failure lines)."""
    folder = os.path.join(docs, "fixtures")
    checked = 0
    failures: list[str] = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            fixture = json.load(f)
        checked += 1
        failures.extend(f"FAIL {name}: {e}" for e in check(fixture))
    return checked, failures


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m overten_errors.fixtures [DOCS]`."""
    args = list(sys.argv[1:] if argv is None else argv)
    docs = args[0] if args else "docs"
    checked, failures = replay(docs)
    for line in failures:
        print(line)
    failed = len({line.split(":")[0] for line in failures})
    print(f"replay: {checked - failed} passed, {failed} failed")
    return 1 if failures or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
