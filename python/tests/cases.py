"""Seeded random responses for the differential test: every field a client reads, valid,
near-valid and hostile (dates of every form and width, numbers at their bounds, repeated
headers, envelopes with every member wrong in turn, failed tasks of every shape)."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from typing import Any

from overten_errors._catalog import CODES

CODES_ = [c.code for c in CODES]
STATUSES = [
    200,
    201,
    202,
    302,
    400,
    401,
    403,
    404,
    408,
    409,
    410,
    413,
    418,
    422,
    429,
    500,
    501,
    502,
    503,
    504,
    599,
    100,
]
DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
LONG = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def _date(rng: random.Random, now: int) -> str:
    at = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(
        seconds=rng.choice(
            [now + rng.randint(-100, 400), rng.randint(0, 253402300799), now + rng.randint(0, 3)]
        )
    )
    wd = at.weekday() if rng.random() < 0.85 else rng.randrange(7)
    sec = at.second
    hh, mm = at.hour, at.minute
    if rng.random() < 0.05:
        hh, mm, sec = 23, 59, 60
    if rng.random() < 0.03:
        sec = rng.choice([61, 99])
    day = at.day if rng.random() < 0.95 else rng.choice([0, 30, 31, 32])
    form = rng.randrange(3)
    if form == 0:
        text = (
            f"{DAYS[wd]}, {day:02d} {MONTHS[at.month - 1]} {at.year:04d} "
            f"{hh:02d}:{mm:02d}:{sec:02d} GMT"
        )
    elif form == 1:
        text = (
            f"{LONG[wd]}, {day:02d}-{MONTHS[at.month - 1]}-{at.year % 100:02d} "
            f"{hh:02d}:{mm:02d}:{sec:02d} GMT"
        )
    else:
        d = f"{day:2d}" if rng.random() < 0.8 else f"{day:02d}"
        text = f"{DAYS[wd]} {MONTHS[at.month - 1]} {d} {hh:02d}:{mm:02d}:{sec:02d} {at.year:04d}"
    r = rng.random()
    if r < 0.05:
        text = text.replace("GMT", "UTC")
    elif r < 0.1:
        text = text.lower()
    elif r < 0.15:
        text = text.replace(" ", "  ", 1)
    elif r < 0.2:
        text = text.replace(" ", "", 1)
    elif r < 0.25:
        i = rng.randrange(len(text))
        text = text[:i] + rng.choice("x9 :-,") + text[i + 1 :]
    return text


def _retry_after(rng: random.Random, now: int) -> str:
    r = rng.random()
    if r < 0.3:
        return str(rng.choice([0, 1, 2, 30, 59, 300, 301, 86400, rng.randint(0, 10**6)]))
    if r < 0.35:
        return "9" * rng.randint(15, 40)
    if r < 0.4:
        return rng.choice(["-1", "-0", "", " ", "1.5", "+3", "1e3", "0x10", "٣", "12 ", " \t7\t"])
    return _date(rng, now)


def _number(rng: random.Random, big: int) -> str:
    r = rng.random()
    if r < 0.7:
        return str(rng.randint(0, 120))
    if r < 0.8:
        return str(rng.choice([big, big + 1, 2**64 - 1, 2**64, 10**25]))
    if r < 0.9:
        return rng.choice([" 5", "5\t", "-1", "", "x", "1.0", "٣", " 0 "])
    return "0"


def _request_id(rng: random.Random) -> str:
    return rng.choice(
        [
            "req_1",
            " req_2\t",
            "",
            "   ",
            "a" * 256,
            "a" * 257,
            "r é",
            "r id",
            "req_" + str(rng.randrange(10**6)),
            "~!",
            "\tx",
        ]
    )


def headers(rng: random.Random, now: int) -> list[list[str]]:
    out: list[list[str]] = []
    if rng.random() < 0.5:
        out.append(["Retry-After", _retry_after(rng, now)])
    if rng.random() < 0.6:
        reset = str(now + rng.randint(-5, 400)) if rng.random() < 0.8 else _number(rng, 2**64 - 1)
        trio = [
            ["X-RateLimit-Limit", _number(rng, 2**32 - 1)],
            ["X-RateLimit-Remaining", "0" if rng.random() < 0.5 else _number(rng, 2**32 - 1)],
            ["X-RateLimit-Reset", reset],
        ]
        for h in trio:
            if rng.random() < 0.9:
                out.append(h)
    if rng.random() < 0.5:
        out.append(["X-Request-Id", _request_id(rng)])
    if out and rng.random() < 0.15:
        name, value = rng.choice(out)
        out.append([name, value if rng.random() < 0.5 else value + " "])
    if rng.random() < 0.2:
        out = [[n.lower() if rng.random() < 0.5 else n.upper(), v] for n, v in out]
    out.append(["content-type", "application/json"])
    rng.shuffle(out)
    return out


def _id(rng: random.Random) -> Any:
    return rng.choice(
        [
            "run_1",
            " run_2 ",
            "",
            "a" * 256,
            "b" * 257,
            "é",
            7,
            None,
            ["x"],
            "task_" + str(rng.randrange(10**9)),
        ]
    )


def _message(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.6:
        return rng.choice(["Slow down", "Rate limited", "", " x ", "ünïcödé ✓", "a\nb"])
    if r < 0.75:
        unit = rng.choice(["a", "é", "€", "😀"])
        return unit * (4096 // len(unit.encode()) + rng.randint(-3, 3))
    return rng.choice([None, 5, True, {"text": "x"}, ["m"]])


def envelope_text(rng: random.Random) -> str:
    members: list[tuple[str, Any]] = []
    r = rng.random()
    success: Any = False if r < 0.85 else rng.choice([True, "false", None, 0])
    if rng.random() < 0.97:
        members.append(("success", success))
    code: Any = (
        rng.choice(CODES_)
        if rng.random() < 0.7
        else rng.choice(["quota_frozen", "", " ", "NOT_FOUND", 404, None])
    )
    if rng.random() < 0.97:
        members.append(("error", code))
    if rng.random() < 0.85:
        members.append(("message", _message(rng)))
    for name in ("run_id", "task_id"):
        if rng.random() < 0.4:
            members.append((name, _id(rng)))
    if rng.random() < 0.3:
        members.append(("details", {"error": 1, "nested": [1, {"a": None}]}))
    if rng.random() < 0.08:
        name = rng.choice(["success", "error", "message", "run_id", "task_id", "extra", "extra"])
        members.append((name, rng.choice([False, "x", "gone"])))
        members.append((name, rng.choice([False, "x", "gone"])))
    rng.shuffle(members)
    text = (
        "{"
        + ",".join(
            json.dumps(k) + ":" + json.dumps(v, ensure_ascii=rng.random() < 0.5) for k, v in members
        )
        + "}"
    )
    return text


def _mangle(rng: random.Random, text: str) -> str:
    r = rng.random()
    if r < 0.55:
        return text
    if r < 0.6:
        return "\ufeff" + text
    if r < 0.62:
        return "\ufeff\ufeff" + text
    if r < 0.65:
        return " \n" + text + "\r\n"
    if r < 0.68:
        return text[: rng.randrange(len(text) + 1)]
    if r < 0.7:
        return text + "x"
    if r < 0.74:
        depth = rng.choice([126, 127, 128, 129])
        return text[:-1] + ',"deep":' + "[" * depth + "]" * depth + "}"
    if r < 0.78:
        esc = rng.choice(
            [
                "\\ud800",
                "\\udc00",
                "\\ud83d\\ude00",
                "\\ud800\\u0041",
                "\\uDBFF\\uDFFF",
                "\\u00e9",
                "\\ud800\\",
                "\\uzzzz",
            ]
        )
        return text[:-1] + ',"s' + rng.choice(["", esc]) + '":"' + esc + '"}'
    if r < 0.82:
        return (
            text[:-1]
            + ',"n":'
            + rng.choice(
                [
                    "1e400",
                    "-1e400",
                    "1e-400",
                    "-0",
                    "1.5",
                    "NaN",
                    "Infinity",
                    "1" * 330,
                    "01",
                    "1.",
                    "-",
                ]
            )
            + "}"
        )
    if r < 0.83:
        name = rng.choice(["message", "run_id", "task_id", "success", "error"])
        if f'"{name}"' not in text:
            number = rng.choice(["1e400", "-1e999", "1" * 330, "5", "1e308"])
            return text[:-1] + f',"{name}":{number}}}'
        return text
    if r < 0.84:
        return text + " " * (65536 - len(text.encode()) + rng.randint(-4, 4))
    if r < 0.88:
        return rng.choice(
            [
                "",
                "<html>502 Bad Gateway</html>",
                "null",
                "[]",
                '"x"',
                "{",
                '{"success":false,"error":"gone"',
                "true",
            ]
        )
    if r < 0.9:
        return text.replace(":", " : ")
    if r < 0.94:
        return text[:-1] + ',"c":"\x01"}' if rng.random() < 0.5 else text[:-1] + ',"c":"\x7f"}'
    return text


def body(rng: random.Random) -> str:
    return _mangle(rng, envelope_text(rng))


def _count(rng: random.Random) -> str:
    return rng.choice(
        [
            "0",
            "5",
            "812",
            str(2**64 - 1),
            str(2**64),
            "-0",
            "-1",
            "1.0",
            "1e2",
            '"1"',
            "null",
            str(rng.randrange(10**6)),
        ]
        + ["7"] * 10
    )


def task_body(rng: random.Random) -> str:
    code = rng.choice([*CODES_, "quota_frozen", "", "gone"])
    members: list[tuple[str, str]] = [
        (
            "task_id",
            json.dumps(rng.choice(["task_1", " task_2 ", "", "é", "a" * 257]))
            if rng.random() < 0.95
            else "7",
        ),
        (
            "status",
            json.dumps("failed")
            if rng.random() < 0.92
            else json.dumps(rng.choice(["running", "FAILED", ""])),
        ),
        (
            "error",
            "{"
            + ",".join(
                p
                for p in [
                    '"code":' + (json.dumps(code) if rng.random() < 0.95 else "null"),
                    '"message":' + (json.dumps(_message(rng)) if rng.random() < 0.9 else '"m"'),
                    '"code":"gone"' if rng.random() < 0.04 else "",
                    '"hint":1' if rng.random() < 0.2 else "",
                ]
                if p
            )
            + "}"
            if rng.random() < 0.95
            else '"upstream_error"',
        ),
        ("credits_used", _count(rng)),
        ("duration_ms", _count(rng)),
    ]
    members = [m for m in members if rng.random() < 0.97]
    if rng.random() < 0.05:
        members.append(rng.choice(members) if members else ("x", "1"))
    if rng.random() < 0.2:
        members.append(("result", '{"file":"q3.xlsx","error":{"code":1}}'))
    rng.shuffle(members)
    text = "{" + ",".join(json.dumps(k) + ":" + v for k, v in members) + "}"
    return _mangle(rng, text)


def case(rng: random.Random) -> dict[str, Any]:
    """One fixture (no `expect`) and the flags it is classified with."""
    now = rng.choice([rng.randint(0, 4_000_000_000), 784111777, 1_700_000_000])
    task = rng.random() < 0.15
    fixture: dict[str, Any] = {
        "kind": "task_failure" if task else "http_response",
        "request": {"attempt": 1, "now_unix": now},
        "response": {
            "status": 200 if task else rng.choice([*STATUSES, rng.randint(100, 599)]),
            "headers": [] if task else headers(rng, now),
            "body": task_body(rng) if task else body(rng),
        },
    }
    flags = {
        "now": now,
        "random": rng.getrandbits(64),
        "attempt": rng.choice([0, 1, 1, 2, 3, 4, 5, 6]),
        "budget": rng.choice([None, 0, 4, 5, 9, 10, 19, 20, 24, 25, 100, 150]),
    }
    return {"fixture": fixture, "flags": flags}
