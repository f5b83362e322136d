#!/usr/bin/env python3
"""Replays docs/fixtures/*.json with a client written from docs/retry.md and docs/README.md
alone (standard library only), as an SDK author in another language would.

It is a test of the docs: if the docs leave out something a client needs, a fixture fails
here. Usage: python3 scripts/replay_fixtures.py [docs-dir]. Prints one line per failure and
a closing 'N passed, N failed' line; exits 1 on any failure.
"""

import json
import math
import os
import sys
from datetime import datetime, timedelta, timezone

MAX_SAFE = 2**53 - 1
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
LONG_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


class Catalog:
    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            c = json.load(f)
        self.codes = {e["code"]: e for e in c["codes"]}
        self.statuses = {s["status"]: s for s in c["statuses"]}
        self.fallback = c["fallback"]
        self.policy = c["backoff"]
        self.limits = c["limits"]
        self.body_limits = c["limits"]


# ---------------------------------------------------------------- reading a response


def header_values(headers, name):
    return [v for (k, v) in headers if k.lower() == name]


def single(headers, name):
    """The header's one value; None when absent; 'invalid' when sent twice, differently."""
    values = header_values(headers, name)
    if not values:
        return None
    if any(v != values[0] for v in values):
        return "invalid"
    return values[0]


def parse_time(text):
    parts = text.split(":")
    if len(parts) != 3 or not all(len(p) == 2 and p.isdigit() for p in parts):
        return None
    h, m, s = (int(p) for p in parts)
    if h > 23 or m > 59 or s > 60:
        return None
    if s == 60 and (h, m) != (23, 59):
        return None
    return h, m, s


def to_unix(year, month, day, hms, weekday):
    """Unix seconds; None for an impossible date, a year outside 1970..9999, or a weekday
    that is not the date's (retry.md, Reading a response)."""
    h, m, s = hms
    if not 1970 <= year <= 9999:
        return None
    try:
        base = datetime(year, month, day, h, m, min(s, 59), tzinfo=timezone.utc)
    except ValueError:
        return None
    if base.weekday() != weekday:
        return None
    return int(base.timestamp()) + (1 if s == 60 else 0)


def parse_http_date(v):
    """RFC 9110's three forms, case-sensitive, GMT; 23:59:60 is one second after 23:59:59."""
    p = v.split(" ")
    # IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
    if len(p) == 6 and p[0][:-1] in DAYS and p[0].endswith(",") and p[5] == "GMT":
        if len(p[1]) == 2 and p[1].isdigit() and p[2] in MONTHS and len(p[3]) == 4 and p[3].isdigit():
            t = parse_time(p[4])
            if t:
                return to_unix(int(p[3]), MONTHS.index(p[2]) + 1, int(p[1]), t, DAYS.index(p[0][:-1]))
    # RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
    if len(p) == 4 and p[0].endswith(",") and p[0][:-1] in LONG_DAYS and p[3] == "GMT":
        d = p[1].split("-")
        if len(d) == 3 and len(d[0]) == 2 and d[0].isdigit() and d[1] in MONTHS and len(d[2]) == 2 and d[2].isdigit():
            t = parse_time(p[2])
            yy = int(d[2])
            year = 2000 + yy if yy < 70 else 1900 + yy
            if t:
                return to_unix(year, MONTHS.index(d[1]) + 1, int(d[0]), t, LONG_DAYS.index(p[0][:-1]))
    # asctime: Sun Nov  6 08:49:37 1994
    q = [x for x in v.split(" ") if x != ""]
    if len(q) == 5 and q[0] in DAYS and q[1] in MONTHS and q[2].isdigit() and len(q[4]) == 4 and q[4].isdigit():
        t = parse_time(q[3])
        if t:
            return to_unix(int(q[4]), MONTHS.index(q[1]) + 1, int(q[2]), t, DAYS.index(q[0]))
    return None


def retry_after(headers, now_ms):
    """The wait in ms named by a valid Retry-After, else None; and whether it was malformed."""
    v = single(headers, "retry-after")
    if v is None:
        return None, False
    if v == "invalid":
        return None, True
    v = v.strip(" \t")
    if v != "" and all(c in "0123456789" for c in v):
        secs = min(int(v), 2**64 - 1)
        return secs * 1000, False
    date = parse_http_date(v)
    if date is None:
        return None, True
    return max(0, date * 1000 - now_ms), False


def number(v, limit):
    if v is None:
        return None, False
    if v == "invalid":
        return None, True
    v = v.strip(" \t")
    if v == "" or not all(c in "0123456789" for c in v) or int(v) > limit:
        return None, True
    return int(v), False


def rate_limit(headers):
    """The three values, or None; and the header problem: the first invalid header, else
    the first missing one when some but not all were sent (retry.md, Header problems)."""
    names = ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"]
    limits = [2**32 - 1, 2**32 - 1, 2**64 - 1]
    values, invalid = [], []
    for name, lim in zip(names, limits):
        n, b = number(single(headers, name), lim)
        values.append(n)
        if b:
            invalid.append(name)
    if invalid:
        return None, invalid[0]
    if all(v is None for v in values):
        return None, None
    if any(v is None for v in values):
        return None, names[values.index(None)]
    return {"limit": values[0], "remaining": values[1], "reset": values[2]}, None


def valid_id(v, max_bytes):
    if not isinstance(v, str):
        return None
    v = v.strip(" \t")
    if v == "" or len(v.encode()) > max_bytes or not all("!" <= c <= "~" for c in v):
        return None
    return v


class NotEnvelope(Exception):
    pass


def no_duplicates(pairs):
    seen = {}
    for k, v in pairs:
        if k in ("success", "error", "message", "run_id", "task_id") and k in seen:
            raise NotEnvelope("duplicate " + k)
        seen[k] = v
    return seen


def too_deep(text, limit):
    """Arrays and objects nested deeper than `limit` levels, brackets in strings aside."""
    depth, in_string, escaped = 0, False, False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > limit:
                return True
        elif c in "]}":
            depth = max(0, depth - 1)
    return False


def has_lone_surrogate(value):
    """Any string in the parsed document, member names included, holding a lone surrogate
    (json.loads lets '\\ud800' through as one)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_lone_surrogate(v) for v in value)
    return False


def whole_body(body, limits, refuse, **loads):
    """The whole-body rules an envelope and a failed task share (retry.md, Reading a
    response): the bound counting every byte received, a byte order mark included, one
    byte order mark skipped, the depth, lone surrogates. Raises `refuse(reason)`."""
    if len(body.encode("utf-8")) > limits["max_body_bytes"]:
        raise refuse("too large")
    if body.startswith("\ufeff"):
        body = body[1:]
    if too_deep(body, limits["max_body_depth"]):
        raise refuse("too deep")
    try:
        doc = json.loads(body, **loads)
    except (ValueError, RecursionError):
        raise refuse("not JSON")
    if has_lone_surrogate(doc):
        raise refuse("lone surrogate")
    return doc


def read_body(body, limits):
    doc = whole_body(body, limits, NotEnvelope, object_pairs_hook=no_duplicates)
    if not isinstance(doc, dict):
        raise NotEnvelope("not an object")
    if doc.get("success") is not False:
        raise NotEnvelope("success is not false")
    code = doc.get("error")
    if not isinstance(code, str) or code == "":
        raise NotEnvelope("no code")
    return doc


class NotTask(Exception):
    pass


def read_task(body, limits):
    """A failed task's body, read with the envelope's whole-body rules (retry.md, A failed
    task): the bound counting a byte order mark, one skipped, the depth, lone surrogates;
    then the shape, with credits_used and duration_ms integers of digits only."""
    # A number with a sign, a fraction or an exponent is not an integer here.
    task = whole_body(body, limits, NotTask, parse_float=lambda t: None,
                      parse_int=lambda t: None if t.startswith("-") else int(t))
    ok = (isinstance(task, dict) and isinstance(task.get("task_id"), str)
          and task.get("status") == "failed" and isinstance(task.get("error"), dict)
          and isinstance(task["error"].get("code"), str)
          and isinstance(task["error"].get("message"), str)
          and all(type(task.get(k)) is int and 0 <= task[k] <= 2**64 - 1
                  for k in ("credits_used", "duration_ms")))
    if not ok:
        raise NotTask("not the shape of a failed task")
    return task


def cut(message, max_bytes):
    """A message over the bound, cut at a character boundary and ended with '…'."""
    data = message.encode("utf-8")
    if len(data) <= max_bytes:
        return message
    room = max_bytes - len("…".encode("utf-8"))
    return data[:room].decode("utf-8", errors="ignore") + "…"


def status_message(cat, status):
    s = cat.statuses.get(status)
    return s["scenario"] if s else "HTTP status %d" % status


class Received:
    pass


def read(cat, fixture):
    r = Received()
    resp = fixture["response"]
    now_ms = fixture["request"]["now_unix"] * 1000
    r.problems = []
    r.retry_after = None
    r.rate_limit = None
    r.request_id = None
    r.run_id = None
    if fixture["kind"] == "task_failure":
        task = read_task(resp["body"], cat.body_limits)
        r.code = task["error"]["code"] or None  # retry.md: "" is no code
        known = cat.codes.get(r.code)
        r.status = known["status"] if known else 500  # retry.md: unknown task codes
        r.message = cut(task["error"]["message"], cat.limits["max_message_bytes"])
        r.task_id = valid_id(task.get("task_id"), cat.limits["max_id_bytes"])
        r.envelope = True
        r.message_from_body = True
        return r
    headers = resp["headers"]
    r.status = resp["status"]
    r.task_id = None
    try:
        doc = read_body(resp["body"], cat.body_limits)
        r.envelope = True
        r.code = doc["error"]
        msg = doc.get("message")
        r.message_from_body = isinstance(msg, str)
        if isinstance(msg, str):
            r.message = cut(msg, cat.limits["max_message_bytes"])
        elif r.code in cat.codes:
            r.message = cat.codes[r.code]["when"]
        else:
            r.message = status_message(cat, r.status)
        r.task_id = valid_id(doc.get("task_id"), cat.limits["max_id_bytes"])
        r.run_id = valid_id(doc.get("run_id"), cat.limits["max_id_bytes"])
    except NotEnvelope:
        r.envelope = False
        r.message_from_body = False
        r.code = None
        r.message = status_message(cat, r.status)
    r.retry_after, bad = retry_after(headers, now_ms)
    if bad:
        r.problems.append("retry-after")
    r.rate_limit, problem = rate_limit(headers)
    if problem:
        r.problems.append(problem)
    rid = single(headers, "x-request-id")
    if rid is not None:
        r.request_id = valid_id(rid, cat.limits["max_id_bytes"]) if rid != "invalid" else None
        if r.request_id is None and rid.strip(" \t") != "":
            r.problems.append("x-request-id")
    return r


# ---------------------------------------------------------------- the steps of retry.md


def status_rule(cat, status):
    for row in cat.fallback["rules"]:
        if row["from"] <= status <= row["to"]:
            return row["retry"], row["why"]
    return cat.fallback["otherwise"], "the status is not an error status: nothing to retry"


def decide(cat, r, attempt, now_ms, u, budget):
    p = cat.policy
    # Step 1
    known = cat.codes.get(r.code) if r.code is not None else None
    if known is not None and known["status"] == r.status:
        rule, why = known["retry"], known["fix"]
    else:
        rule, why = status_rule(cat, r.status)
    action = rule["action"]

    def bound(w, basis, step):
        if w > p["max_wait_ms"]:
            return {"action": "stop", "reason": "wait_too_long",
                    "requested_ms": min(w, MAX_SAFE), "max_ms": p["max_wait_ms"]}, step
        # retry.md, bound(): spread the named wait upward, never past max_wait.
        base = max(w, p["min_wait_ms"])
        spread = min(math.floor(float(base) * float(p["wait_spread"])), p["wait_spread_max_ms"])
        extra = min(math.floor((spread + 1) * u), spread) if spread > 0 else 0
        return {"action": "retry", "after_ms": min(base + extra, p["max_wait_ms"]), "basis": basis}, step

    def pay(decision):
        advice, step = decision
        # Step 10
        if advice["action"] == "retry" and budget is not None:
            # A retry in a wait window (step 8) costs window_cost, any other retry_cost.
            cost = budget["window_cost"] if advice.get("basis") == "wait_window" else budget["retry_cost"]
            if budget["tokens"] >= cost:
                budget["tokens"] -= cost
            else:
                return {"action": "stop", "reason": "budget_exhausted"}, "budget"
        return advice, step

    # Step 2
    if action == "never":
        return {"action": "stop", "reason": "permanent", "fix": why}, "permanent"
    # Step 3
    attempt = max(attempt, 1)
    if attempt >= p["max_attempts"]:
        return {"action": "stop", "reason": "attempts_exhausted", "attempts": attempt}, "attempts"
    # Step 4
    if action == "resubmit_async":
        return {"action": "resubmit_async"}, "resubmit_async"
    # Step 5
    if r.retry_after is not None:
        return pay(bound(r.retry_after, "retry_after", "retry_after"))
    if action == "retry_after":
        rl = r.rate_limit
        # Step 6
        if rl is not None and rl["remaining"] == 0:
            return pay(bound(max(0, rl["reset"] * 1000 - now_ms), "rate_limit_reset", "rate_limit_reset"))
        # Step 7
        return pay(bound(p["rate_limit_default_wait_ms"], "rate_limit_default", "rate_limit_default"))
    # Step 8
    if action == "wait":
        lo, hi = min(rule["min_ms"], rule["max_ms"]), max(rule["min_ms"], rule["max_ms"])
        if lo > p["max_wait_ms"]:
            return pay(({"action": "stop", "reason": "wait_too_long",
                         "requested_ms": lo, "max_ms": p["max_wait_ms"]}, "wait_window"))
        hi = min(hi, p["max_wait_ms"])
        span = hi - lo
        after = lo + min(math.floor((span + 1) * u), span)
        return pay(({"action": "retry", "after_ms": after, "basis": "wait_window"}, "wait_window"))
    # Step 9
    n = min(attempt - 1, 1024)
    try:
        grown = float(p["initial_delay_ms"]) * float(p["multiplier"]) ** n
    except OverflowError:
        grown = math.inf
    base = p["max_delay_ms"] if grown >= p["max_delay_ms"] else math.floor(grown)
    after = math.floor(base * (1 - p["jitter"] * u))
    return pay(({"action": "retry", "after_ms": after, "basis": "backoff"}, "backoff"))


def unit(r):
    return (r >> 11) / 2.0**53


# ---------------------------------------------------------------- the replay


def decide_transport(cat, failure, attempt, u, budget):
    """retry.md, When no response came back."""
    p = cat.policy
    if failure["sent"] and not failure["replay_safe"]:
        return {"action": "stop", "reason": "permanent", "fix": cat.not_replay_safe}, "permanent"
    attempt = max(attempt, 1)
    if attempt >= p["max_attempts"]:
        return {"action": "stop", "reason": "attempts_exhausted", "attempts": attempt}, "attempts"
    r = Received()
    r.code, r.status, r.retry_after, r.rate_limit = None, 500, None, None
    return decide(cat, r, attempt, 0, u, budget)


def same_action(errors, advice, want):
    if "min_ms" in want:
        ok = (advice["action"] == want["action"] and advice.get("basis") == want["basis"]
              and want["min_ms"] <= advice.get("after_ms", -1) <= want["max_ms"])
        if not ok:
            errors.append("action: got %r, want %r" % (advice, want))
    elif advice != want:
        errors.append("action: got %r, want %r" % (advice, want))


def pacing_hold(cat, fixture, u):
    """retry.md, Pacing: the response read at now for its X-RateLimit-* (all three valid),
    then how long the key's next request, sent at now, waits; None when it is sent at once."""
    p = cat.policy
    req = fixture["request"]
    now_ms = req["now_unix"] * 1000
    hold = req.get("held_until_unix_ms", 0)
    rl, _ = rate_limit(fixture["response"]["headers"])
    if rl is not None and rl["remaining"] == 0:
        w = max(0, rl["reset"] * 1000 - now_ms)
        # A reset already passed (w = 0) or further ahead than max_wait holds nothing.
        if 0 < w <= p["max_wait_ms"]:
            s = min(math.floor(float(w) * float(p["wait_spread"])), p["wait_spread_max_ms"])
            extra = min(math.floor((s + 1) * u), s) if s > 0 else 0
            # A later hold never shortens an earlier one.
            hold = max(hold, now_ms + min(w + extra, p["max_wait_ms"]))
    left = hold - now_ms
    # A hold more than max_wait away is not waited.
    return left if 0 < left <= p["max_wait_ms"] else None


def control_in_headers(fixture):
    """docs/README.md: a header value holds no control character but the horizontal tab."""
    for _, value in fixture.get("response", {}).get("headers", []):
        if any(c != "\t" and (ord(c) < 0x20 or ord(c) == 0x7F) for c in value):
            return True
    return False


def check(cat, fixture):
    errors = []
    e = fixture["expect"]
    if control_in_headers(fixture):
        return ["a header value holds a control character: not a fixture"]
    if "budget" in fixture.get("request", {}):
        # retry.md, step 10: tokens above capacity hold capacity.
        b = fixture["request"]["budget"]
        b["tokens"] = min(b["tokens"], b["capacity"])
    if fixture["kind"] == "pacing":
        want = e["hold_ms"]
        for bits in (0, 2**64 - 1, 2**63, 12345678901234567):
            got = pacing_hold(cat, fixture, unit(bits))
            if isinstance(want, dict):
                if got is None or not want["min_ms"] <= got <= want["max_ms"]:
                    errors.append("hold_ms: got %r, want %r" % (got, want))
                # The ends of the range are the draws r = 0 and r = 2^64 - 1 (docs/README.md).
                if bits == 0 and got != want["min_ms"]:
                    errors.append("hold_ms at r = 0: got %r, want %r" % (got, want["min_ms"]))
                if bits == 2**64 - 1 and got != want["max_ms"]:
                    errors.append("hold_ms at r = 2^64 - 1: got %r, want %r" % (got, want["max_ms"]))
            elif got != want:
                errors.append("hold_ms: got %r, want %r" % (got, want))
        return errors
    if fixture["kind"] == "success":
        # retry.md, step 10: a first attempt returns success_refill, a later one retry_cost.
        b = fixture["request"]["budget"]
        back = b["success_refill"] if fixture["request"]["attempt"] <= 1 else b["retry_cost"]
        got = min(b["capacity"], b["tokens"] + back)
        if got != e["budget_tokens"]:
            errors.append("budget_tokens: got %r, want %r" % (got, e["budget_tokens"]))
        return errors
    if fixture["kind"] == "transport_failure":
        req = fixture["request"]
        for bits in (0, 2**64 - 1, 2**63):
            advice, step = decide_transport(cat, fixture["failure"], req["attempt"], unit(bits), dict(req["budget"]))
            if step != e["step"]:
                errors.append("step: got %r, want %r" % (step, e["step"]))
            same_action(errors, advice, e["action"])
        return errors
    r = read(cat, fixture)

    def same(what, got, want):
        if got != want:
            errors.append("%s: got %r, want %r" % (what, got, want))

    same("code", r.code, e["code"])
    same("known", r.code in cat.codes, e["known"])
    same("status", r.status, e["status"])
    same("message", r.message, e["message"])
    same("request_id", r.request_id, e["request_id"])
    same("run_id", r.run_id, e["run_id"])
    same("task_id", r.task_id, e["task_id"])
    same("body_is_envelope", r.envelope, e["body_is_envelope"])
    same("message_from_body", r.message_from_body, e["message_from_body"])
    mismatch = cat.codes[r.code]["status"] if r.code in cat.codes and cat.codes[r.code]["status"] != r.status else None
    same("status_mismatch", mismatch, e["status_mismatch"])
    same("header_problems", r.problems, e["header_problems"])
    req = fixture["request"]
    want = e["action"]
    for bits in (0, 2**64 - 1, 2**63, 12345678901234567):
        budget = dict(req["budget"])
        advice, step = decide(cat, r, req["attempt"], req["now_unix"] * 1000, unit(bits), budget)
        same("step", step, e["step"])
        if "min_ms" in want:
            ok = (advice["action"] == want["action"] and advice.get("basis") == want["basis"]
                  and want["min_ms"] <= advice.get("after_ms", -1) <= want["max_ms"])
            if not ok:
                errors.append("action: got %r, want %r" % (advice, want))
            # The ends of a range are the draws r = 0 and r = 2^64 - 1 (docs/README.md):
            # a backoff is longest at u = 0, every other wait shortest.
            low_first = want["basis"] != "backoff"
            if bits == 0:
                same("delay at r = 0", advice["after_ms"], want["min_ms"] if low_first else want["max_ms"])
            if bits == 2**64 - 1:
                same("delay at r = 2^64 - 1", advice["after_ms"], want["max_ms"] if low_first else want["min_ms"])
        else:
            same("action", advice, want)
    return errors


def not_replay_safe_fix(docs):
    """The stop's fix for a request that is not replay-safe, as retry.md states it."""
    with open(os.path.join(docs, "retry.md"), encoding="utf-8") as f:
        text = f.read()
    marker = "`fix` = `"
    at = text.index(marker, text.index("## When no response came back")) + len(marker)
    return text[at:text.index("`", at)]


def main():
    docs = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "docs")
    cat = Catalog(os.path.join(docs, "catalog.json"))
    cat.not_replay_safe = not_replay_safe_fix(docs)
    folder = os.path.join(docs, "fixtures")
    passed = failed = 0
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            fixture = json.load(f)
        errors = check(cat, fixture)
        if errors:
            failed += 1
            for err in errors:
                print("FAIL %s: %s" % (name, err))
        else:
            passed += 1
    print("replay: %d passed, %d failed" % (passed, failed))
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
