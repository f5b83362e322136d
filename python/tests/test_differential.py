"""Differential test: seeded random responses read by this package and by
`overten-errors classify --json` (the Rust crates), with the same `--now`, `--random`,
`--attempt` and `--budget`; every field must agree, the exact wait included.

The binary is `$OVERTEN_ERRORS_BIN`, else `target/debug/overten-errors` of this checkout
(`cargo build -p overten-errors-cli`). Cases: `$OVERTEN_DIFF_CASES` (default 6000)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cases
import pytest

from overten_errors import RetryBudget, classify, decide, read_failed_task

ROOT = Path(__file__).resolve().parents[2]
CASES = int(os.environ.get("OVERTEN_DIFF_CASES", "6000"))
SEED = int(os.environ.get("OVERTEN_DIFF_SEED", "20261203"))
FIELDS = (
    "status",
    "code",
    "known",
    "message",
    "request_id",
    "run_id",
    "task_id",
    "body_is_envelope",
    "message_from_body",
    "status_mismatch",
    "header_problems",
    "step",
    "action",
)


def binary() -> str:
    path = os.environ.get("OVERTEN_ERRORS_BIN") or str(ROOT / "target" / "debug" / "overten-errors")
    if not os.path.exists(path):
        pytest.fail(
            f"{path} is missing: run `cargo build -p overten-errors-cli` "
            "(or set OVERTEN_ERRORS_BIN)"
        )
    return path


def ours(fixture: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any] | None:
    response = fixture["response"]
    if fixture["kind"] == "task_failure":
        received = read_failed_task(response["body"])
        if received is None:
            return None
    else:
        received = classify(response["status"], response["headers"], response["body"])
    budget = None if flags["budget"] is None else RetryBudget(tokens=flags["budget"])
    decision = decide(
        received, flags["attempt"], flags["now"] * 1000, lambda: flags["random"], budget=budget
    )
    return {
        "status": received.status,
        "code": received.code,
        "known": received.known,
        "message": received.message,
        "request_id": received.request_id,
        "run_id": received.run_id,
        "task_id": received.task_id,
        "body_is_envelope": received.body_is_envelope,
        "message_from_body": received.message_from_body,
        "status_mismatch": received.status_mismatch,
        "header_problems": list(received.header_problems),
        "step": decision.step,
        "action": decision.advice.to_json(),
    }


def classify_args(exe: str, flags: dict[str, Any]) -> list[str]:
    """`overten-errors classify --json` with a case's fixed now, draw, attempt and budget."""
    args = [exe, "classify", "--json", "--now", str(flags["now"]), "--random"]
    args += [str(flags["random"]), "--attempt", str(flags["attempt"])]
    if flags["budget"] is not None:
        args += ["--budget", str(flags["budget"])]
    return args


def theirs(exe: str, path: str, flags: dict[str, Any]) -> tuple[int, dict[str, Any] | None, str]:
    done = subprocess.run(
        [*classify_args(exe, flags), path], capture_output=True, timeout=30, check=False
    )
    if done.returncode != 0:
        return done.returncode, None, done.stderr.decode("utf-8", "replace")
    return 0, json.loads(done.stdout), ""


def test_the_package_reads_and_decides_as_the_crates_do() -> None:
    exe = binary()
    rng = random.Random(SEED)
    generated = [cases.case(rng) for _ in range(CASES)]
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, c in enumerate(generated):
            path = os.path.join(tmp, f"{i}.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(c["fixture"], f, ensure_ascii=False)
            paths.append(path)
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(
                pool.map(
                    lambda a: theirs(exe, a[0], a[1]),
                    [(p, c["flags"]) for p, c in zip(paths, generated, strict=False)],
                )
            )
    differ = []
    envelopes = tasks = refused = 0
    steps: set[str] = set()
    for i, (c, (rc, rust, err)) in enumerate(zip(generated, results, strict=False)):
        mine = ours(c["fixture"], c["flags"])
        if rust is None:
            # Only a body that is not a failed task may be refused (exit 2).
            if not (rc == 2 and c["fixture"]["kind"] == "task_failure" and mine is None):
                differ.append(f"case {i}: classify exited {rc}: {err.strip()[:200]}; ours: {mine}")
            refused += 1
            continue
        if mine is None:
            differ.append(f"case {i}: not a failed task here, read by classify")
            continue
        envelopes += rust["body_is_envelope"]
        steps.add(rust["step"])
        tasks += c["fixture"]["kind"] == "task_failure"
        for name in FIELDS:
            if mine[name] != rust[name]:
                differ.append(
                    f"case {i} {name}: ours {mine[name]!r}, classify {rust[name]!r}; "
                    f"flags {c['flags']}; fixture {json.dumps(c['fixture'])[:400]}"
                )
    assert not differ, f"{len(differ)} differences of {CASES}:\n" + "\n".join(differ[:15])
    # The cases reach both sides of every rule: envelopes and not, tasks read and refused.
    assert envelopes > CASES // 5 and CASES - envelopes > CASES // 5
    assert tasks > CASES // 80 and refused > CASES // 100
    assert steps == {
        "permanent",
        "attempts",
        "resubmit_async",
        "retry_after",
        "rate_limit_reset",
        "rate_limit_default",
        "wait_window",
        "backoff",
        "budget",
    }, steps


BAD_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x80"]


def raw_case(rng: random.Random) -> tuple[int, list[list[str]], bytes, dict[str, Any]]:
    now = rng.randint(0, 4_000_000_000)
    status = rng.choice(cases.STATUSES)
    # The raw reader trims each value (OWS), and a value holds no line break.
    headers = [[n, v.strip(" \t")] for n, v in cases.headers(rng, now)]
    body = cases.body(rng).encode("utf-8", errors="surrogatepass")
    r = rng.random()
    if r < 0.5 and body:
        at = rng.randrange(len(body) + 1)
        body = body[:at] + rng.choice(BAD_UTF8) + body[at:]
    elif r < 0.6:
        body = b"\xef\xbb\xbf" + body
    elif r < 0.7:
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
    flags = {
        "now": now,
        "random": rng.getrandbits(64),
        "attempt": rng.randint(1, 6),
        "budget": rng.choice([None, 0, 5, 9, 10, 20, 100]),
    }
    return status, headers, body, flags


def test_raw_bodies_of_any_bytes_are_read_alike() -> None:
    exe = binary()
    rng = random.Random(SEED + 1)
    differ = []
    for i in range(int(os.environ.get("OVERTEN_DIFF_RAW_CASES", "600"))):
        status, headers, body, flags = raw_case(rng)
        head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
        done = subprocess.run(
            classify_args(exe, flags),
            input=head.encode() + b"\r\n" + body,
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        rust = json.loads(done.stdout)
        fixture = {
            "kind": "http_response",
            "response": {"status": status, "headers": headers, "body": body},
        }
        mine = ours(fixture, flags)
        assert mine is not None
        differ += [
            f"case {i} {k}: ours {mine[k]!r}, classify {rust[k]!r}; body {body[:120]!r}"
            for k in FIELDS
            if mine[k] != rust[k]
        ]
    assert not differ, "\n".join(differ[:15])
