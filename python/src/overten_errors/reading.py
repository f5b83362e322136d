"""Reading a response as `docs/retry.md` says (*Reading a response*): the envelope, the
headers, a failed task. Nothing here raises on bad input: what cannot be read is reported
(`Received.header_problems`, `body_is_envelope=False`), and the public message is never the
raw body."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ._catalog import CODES, LIMITS, STATUSES, UNKNOWN_TASK_CODE_STATUS
from ._types import Code

#: Every known code by its wire string.
CODES_BY_NAME: Mapping[str, Code] = {c.code: c for c in CODES}
_STATUS_MESSAGES: Mapping[int, str] = {s.status: s.scenario for s in STATUSES}

_DIGITS = frozenset("0123456789")
_OWS = " \t"
_U32 = 2**32 - 1
_U64 = 2**64 - 1
_BOM = b"\xef\xbb\xbf"
_ELLIPSIS = "\u2026"

#: A header value as an HTTP library hands it over: text, or bytes (read as Latin-1).
HeaderValue = str | bytes
#: Headers: `[(name, value), ...]` in the order received (repeats kept), a mapping, or an
#: `httpx.Headers` (its raw pairs are read).
HeadersLike = Iterable[tuple[HeaderValue, HeaderValue]] | Mapping[str, str] | Any


@dataclass(frozen=True, slots=True)
class RateLimit:
    """The three `X-RateLimit-*` headers, read together."""

    limit: int
    remaining: int
    reset: int  # Unix seconds


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """A valid `Retry-After`: `seconds`, or an HTTP-date `at` (Unix seconds)."""

    seconds: int | None = None
    at: int | None = None

    def wait_ms(self, now_ms: int) -> int:
        """How long it asks to wait from `now_ms` (a date in the past is 0)."""
        if self.seconds is not None:
            return self.seconds * 1000
        return max(0, (self.at or 0) * 1000 - now_ms)


@dataclass(frozen=True, slots=True)
class Received:
    """A response (or a failed task) as a client reads it: what the steps of
    `docs/retry.md` decide on, and what an error reports."""

    status: int
    code: str | None
    message: str
    body_is_envelope: bool
    message_from_body: bool
    request_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    retry_after: RetryAfter | None = None
    rate_limit: RateLimit | None = None
    header_problems: tuple[str, ...] = field(default=())

    @property
    def known(self) -> bool:
        """Whether `code` is one this version knows."""
        return self.code is not None and self.code in CODES_BY_NAME

    @property
    def status_mismatch(self) -> int | None:
        """The known code's own status, when it came with another one (as from a proxy)."""
        if self.code is None:
            return None
        known = CODES_BY_NAME.get(self.code)
        if known is None or known.status == self.status:
            return None
        return known.status


# ------------------------------------------------------------------------------ headers


def _pairs(headers: HeadersLike) -> list[tuple[str, str]]:
    raw = getattr(headers, "raw", None)
    if isinstance(raw, list):  # httpx.Headers: the bytes as received
        items: Iterable[Any] = raw
    elif isinstance(headers, Mapping):
        items = headers.items()
    else:
        items = headers
    out = []
    for name, value in items:
        n = name.decode("latin-1") if isinstance(name, bytes) else str(name)
        v = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        out.append((n.lower(), v))
    return out


_INVALID = object()
_WANTED = frozenset(
    {
        "retry-after",
        "x-request-id",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    }
)


def _found(pairs: list[tuple[str, str]]) -> dict[str, str | object]:
    """The headers a client reads, each once: its value, or `_INVALID` when it was sent
    twice with different values (byte for byte, untrimmed)."""
    out: dict[str, str | object] = {}
    for name, value in pairs:
        if name in _WANTED:
            seen = out.get(name)
            if seen is None:
                out[name] = value
            elif seen != value:
                out[name] = _INVALID
    return out


def _two(text: str) -> int | None:
    return int(text) if len(text) == 2 and text[0] in _DIGITS and text[1] in _DIGITS else None


def _four(text: str) -> int | None:
    return int(text) if len(text) == 4 and all(c in _DIGITS for c in text) else None


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _fields(s: str) -> tuple[int | None, ...] | None:
    """(year, month, day, hour, minute, second, weekday) of one of RFC 9110's three forms,
    laid out exactly (fixed widths), or None."""
    n = len(s)
    if n == 29 and s[25:] == " GMT" and s[16] == " " and s[19] == ":" and s[22] == ":":
        # IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
        wday = s[:5]
        mon = s[7:12]
        if wday[3:] == ", " and wday[:3] in _DAYS and mon[0] == " " and mon[4] == " ":
            if mon[1:4] in _MONTHS:
                return (
                    _four(s[12:16]),
                    _MONTHS.index(mon[1:4]) + 1,
                    _two(s[5:7]),
                    _two(s[17:19]),
                    _two(s[20:22]),
                    _two(s[23:25]),
                    _DAYS.index(wday[:3]),
                )
    if n >= 23:
        # RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
        for i, name in enumerate(_LONG_DAYS):
            prefix = name + ", "
            if s.startswith(prefix):
                rest = s[len(prefix) :]
                if len(rest) == 22 and rest[12] == ":" and rest[15] == ":" and rest[18:] == " GMT":
                    yy = _two(rest[7:9])
                    mon = rest[2:7]
                    if mon[0] == "-" and mon[4] == "-" and mon[1:4] in _MONTHS:
                        year = None if yy is None else (2000 + yy if yy < 70 else 1900 + yy)
                        return (
                            year,
                            _MONTHS.index(mon[1:4]) + 1,
                            _two(rest[0:2]),
                            _two(rest[10:12]),
                            _two(rest[13:15]),
                            _two(rest[16:18]),
                            i,
                        )
                return None
    if n == 24 and s[10] == " " and s[13] == ":" and s[16] == ":" and s[19] == " ":
        # asctime: Sun Nov  6 08:49:37 1994
        if s[3] == " " and s[:3] in _DAYS and s[7] == " " and s[4:7] in _MONTHS:
            d = s[8:10]
            day = (int(d[1]) if d[1] in _DIGITS else None) if d[0] == " " else _two(d)
            return (
                _four(s[20:24]),
                _MONTHS.index(s[4:7]) + 1,
                day,
                _two(s[11:13]),
                _two(s[14:16]),
                _two(s[17:19]),
                _DAYS.index(s[:3]),
            )
    return None


def _date(s: str) -> int | None:
    """Unix seconds of an HTTP-date whose fields are all valid, else None."""
    if not s.isascii():
        return None
    got = _fields(s.strip(" \t\n\x0b\x0c\r"))
    if got is None or any(x is None for x in got):
        return None
    year, month, day, hour, minute, second, weekday = (int(x or 0) for x in got)
    if not (second < 60 and minute < 60 and hour < 24 and 1970 <= year <= 9999):
        return None
    try:
        at = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except ValueError:
        return None
    if at.weekday() != weekday:
        return None
    return int(at.timestamp())


def parse_http_date(value: str) -> int | None:
    """An HTTP-date in any of RFC 9110's three forms, case-sensitive, GMT, as Unix seconds;
    `23:59:60` is one second after `23:59:59`. None when it is not one."""
    at = _date(value)
    if at is not None:
        return at
    leap = value.find("23:59:60")
    if leap < 0:
        return None
    at = _date(value[:leap] + "23:59:59" + value[leap + 8 :])
    return None if at is None else at + 1


def parse_retry_after(value: str) -> RetryAfter | None:
    """A `Retry-After` value: delta-seconds (saturating at 2^64 - 1) or an HTTP-date;
    None when invalid (empty, negative, anything else)."""
    v = value.strip(_OWS)
    if v == "":
        return None
    if v.isascii() and v.isdigit():
        return RetryAfter(seconds=min(int(v), _U64))
    at = parse_http_date(v)
    return None if at is None else RetryAfter(at=at)


def _number(value: str, limit: int) -> int | None:
    v = value.strip(" \t\n\x0c\r")
    if not (v.isascii() and v.isdigit()):
        return None
    n = int(v)
    return n if n <= limit else None


_RATE_NAMES = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


def _rate_limit(found: dict[str, str | object]) -> tuple[RateLimit | None, str | None]:
    """The three values, or None; and the header problem: the first invalid header, else
    the first missing one when some but not all were sent."""
    values: list[int | None] = []
    for name, limit in zip(_RATE_NAMES, (_U32, _U32, _U64), strict=False):
        raw = found.get(name)
        if raw is None:
            values.append(None)
            continue
        n = _number(raw, limit) if isinstance(raw, str) else None
        if n is None:
            return None, name
        values.append(n)
    limit_, remaining, reset = values
    if limit_ is not None and remaining is not None and reset is not None:
        return RateLimit(limit_, remaining, reset), None
    if limit_ is None and remaining is None and reset is None:
        return None, None
    return None, _RATE_NAMES[values.index(None)]


_VISIBLE = re.compile("[!-~]+")
_NOT_UTF8 = re.compile("[\udc80-\udcff]")


def valid_id(value: object) -> str | None:
    """An id (`X-Request-Id`, `run_id`, `task_id`): trimmed, then kept when it is 1 to 256
    bytes of visible ASCII."""
    if not isinstance(value, str):
        return None
    v = value.strip(_OWS)
    if len(v) > LIMITS.max_id_bytes or _VISIBLE.fullmatch(v) is None:
        return None
    return v


def rate_limit_of(headers: HeadersLike) -> RateLimit | None:
    """The `X-RateLimit-*` headers of any response, when all three are valid (pacing reads
    this)."""
    return _rate_limit(_found(_pairs(headers)))[0]


# ------------------------------------------------------------------------------ bodies


class _Object(dict[str, Any]):
    """A JSON object that remembers which member names it saw twice."""

    __slots__ = ("repeated",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__()
        self.repeated: set[str] = set()
        for k, v in pairs:
            if k in self:
                self.repeated.add(k)
            self[k] = v


def _objects(pairs: list[tuple[str, Any]]) -> _Object:
    return _Object(pairs)


class _NotJson(ValueError):
    pass


def _constant(name: str) -> Any:
    raise _NotJson(name)  # NaN, Infinity: not JSON


class _OutOfRange:
    """A JSON number past a double's range. The crates' parser refuses one where it reads
    a value (a member an envelope or a task has), and skips it anywhere else."""

    __slots__ = ()


OUT_OF_RANGE = _OutOfRange()


def _float(text: str) -> Any:
    x = float(text)
    return OUT_OF_RANGE if math.isinf(x) else x


def _int(text: str) -> Any:
    # A JSON integer past 64 bits is read as a double: past a double's range it is out of
    # range, as for the crates' parser.
    if len(text) > 400:
        return OUT_OF_RANGE
    n = int(text)
    if not -(2**63) <= n <= _U64:
        try:
            float(n)
        except OverflowError:
            return OUT_OF_RANGE
        return _Big(n, text.startswith("-"))
    return _Integer(n, text.startswith("-"))


class _Integer(int):
    """A JSON integer that remembers whether it was written with a sign (`-0`)."""

    negative: bool

    def __new__(cls, n: int, negative: bool) -> _Integer:
        obj = super().__new__(cls, n)
        obj.negative = negative
        return obj


class _Big(_Integer):
    """A JSON integer outside 64 bits (read as a double by the crates)."""


def _too_deep(text: str, limit: int) -> bool:
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


_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|.)", re.S)


def _lone_surrogate_escape(text: str) -> bool:
    """A `\\uD800`-`\\uDBFF` escape not followed at once by a `\\uDC00`-`\\uDFFF` one, or
    one of those not preceded by the first kind (read on valid JSON, whose backslashes are
    all escapes)."""
    pending_high, end = False, -1
    for m in _ESCAPE.finditer(text):
        unit = int(m.group(1), 16) if m.group(1) else None
        low = unit is not None and 0xDC00 <= unit <= 0xDFFF
        adjacent = m.start() == end
        if pending_high and not (low and adjacent):
            return True
        if low and not (pending_high and adjacent):
            return True
        pending_high = unit is not None and 0xD800 <= unit <= 0xDBFF
        end = m.end()
    return pending_high


def _invalid(text: str) -> bool:
    """Whether a string read from the body held bytes that are not UTF-8 (decoded as
    U+DC80-U+DCFF). The crates' parser refuses them where it reads a string (a member
    name of the top object, the value of a member an envelope or a task has), and skips
    them anywhere else."""
    return _NOT_UTF8.search(text) is not None


def _invalid_anywhere(value: Any) -> bool:
    if isinstance(value, str):
        return _invalid(value)
    if isinstance(value, dict):
        return any(_invalid(k) or _invalid_anywhere(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_invalid_anywhere(v) for v in value)
    return False


def parse_json_body(body: bytes, max_bytes: int) -> Any:
    """The whole-body rules an envelope, a failed task and a task share: at most `max_bytes`
    counting a byte order mark, one byte order mark skipped, nesting at most 128 levels, no
    lone surrogate escape, then strict JSON. Raises `ValueError` for any other body. Bytes
    that are not UTF-8 inside strings are kept as U+DC80-U+DCFF (see `_invalid`)."""
    return _parse_body(body, max_bytes)[0]


def _parse_body(body: bytes, max_bytes: int) -> tuple[Any, bool]:
    """The whole-body rules an envelope, a failed task and a task share: at most `max_bytes`
    counting a byte order mark, one byte order mark skipped, nesting at most 128 levels, no
    lone surrogate escape, then strict JSON. Raises `ValueError` for any other body. Bytes
    that are not UTF-8 inside strings are kept as U+DC80-U+DCFF (see `_invalid`)."""
    if len(body) > max_bytes:
        raise ValueError("the body is too large")
    if body.startswith(_BOM):
        body = body[3:]
    try:
        text, dirty = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, dirty = body.decode("utf-8", errors="surrogateescape"), True
    if len(text) > LIMITS.max_body_depth and text.count("[") + text.count("{") > (
        LIMITS.max_body_depth
    ):
        if _too_deep(text, LIMITS.max_body_depth):
            raise ValueError("the body nests too deep")
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_objects,
            parse_constant=_constant,
            parse_float=_float,
            parse_int=_int,
        )
    except (ValueError, RecursionError):
        raise ValueError("the body is not JSON") from None
    if "\\u" in text and _lone_surrogate_escape(text):
        raise ValueError("the body holds a lone surrogate")
    return doc, dirty


def _read_strings(doc: _Object, names: frozenset[str]) -> bool:
    """The member names of `doc` and the values of `names` (a string; the member names of
    an object, whose values are skipped) hold only UTF-8."""
    if any(_invalid(k) for k in doc):
        return False
    for n in names:
        value = doc.get(n)
        if isinstance(value, str) and _invalid(value):
            return False
        if isinstance(value, _Object) and any(_invalid(k) for k in value):
            return False
    return True


_ENVELOPE_MEMBERS = frozenset({"success", "error", "message", "run_id", "task_id"})


def _envelope(body: bytes) -> _Object | None:
    try:
        doc, dirty = _parse_body(body, LIMITS.max_body_bytes)
    except ValueError:
        return None
    if not isinstance(doc, _Object) or doc.repeated & _ENVELOPE_MEMBERS:
        return None
    if any(doc.get(name) is OUT_OF_RANGE for name in _ENVELOPE_MEMBERS):
        return None
    if dirty and not _read_strings(doc, _ENVELOPE_MEMBERS):
        return None
    code = doc.get("error")
    if doc.get("success") is not False or not isinstance(code, str) or code == "":
        return None
    return doc


def cut_message(message: str) -> str:
    """A message over 4096 bytes of UTF-8, cut at a character boundary and ended with `…`."""
    data = message.encode("utf-8", errors="surrogatepass")
    if len(data) <= LIMITS.max_message_bytes:
        return message
    room = LIMITS.max_message_bytes - len(_ELLIPSIS.encode("utf-8"))
    return data[:room].decode("utf-8", errors="ignore") + _ELLIPSIS


def status_message(status: int) -> str:
    """The status's scenario on the page, or `HTTP status N`."""
    return _STATUS_MESSAGES.get(status) or f"HTTP status {status}"


def classify(
    status: int, headers: HeadersLike = (), body: bytes | str = b"", *, now_ms: int = 0
) -> Received:
    """Reads a response as a client does (`docs/retry.md`, *Reading a response*): the body
    (at most 64 KiB, else no envelope), `Retry-After` (an HTTP-date is kept as a date;
    `now_ms` is not read here), `X-RateLimit-*`, `X-Request-Id`, and the problems found."""
    del now_ms  # a date is kept as one; the decision reads the clock
    data = body.encode("utf-8", errors="surrogatepass") if isinstance(body, str) else body
    pairs = _pairs(headers)
    problems: list[str] = []
    doc = _envelope(data)
    code: str | None = None
    run_id = task_id = None
    if doc is not None:
        code = doc["error"]
        msg = doc.get("message")
        from_body = isinstance(msg, str)
        if isinstance(msg, str):
            message = cut_message(msg)
        elif code in CODES_BY_NAME:
            message = CODES_BY_NAME[code].when
        else:
            message = status_message(status)
        run_id = valid_id(doc.get("run_id"))
        task_id = valid_id(doc.get("task_id"))
    else:
        from_body = False
        message = status_message(status)
    retry_after = None
    found = _found(pairs)
    raw = found.get("retry-after")
    if raw is not None:
        retry_after = parse_retry_after(raw) if isinstance(raw, str) else None
        if retry_after is None:
            problems.append("retry-after")
    rate_limit, problem = _rate_limit(found)
    if problem is not None:
        problems.append(problem)
    request_id = None
    rid = found.get("x-request-id")
    if rid is not None:
        if isinstance(rid, str):
            request_id = valid_id(rid)
            if request_id is None and rid.strip(" \t\n\x0c\r") != "":
                problems.append("x-request-id")
        else:
            problems.append("x-request-id")
    return Received(
        status=status,
        code=code,
        message=message,
        body_is_envelope=doc is not None,
        message_from_body=from_body,
        request_id=request_id,
        run_id=run_id,
        task_id=task_id,
        retry_after=retry_after,
        rate_limit=rate_limit,
        header_problems=tuple(problems),
    )


_TASK_MEMBERS = frozenset({"task_id", "status", "error", "credits_used", "duration_ms"})


def _count(value: Any) -> bool:
    return isinstance(value, _Integer) and not isinstance(value, _Big) and not value.negative


def read_failed_task(body: bytes | str, max_bytes: int | None = None) -> Received | None:
    """A failed task's body (`GET /tasks/{task_id}`, `status: "failed"`), read as
    `docs/retry.md` says; None when the body is not one. Its status is its code's, or 500
    for a code this version does not know (or none)."""
    data = body.encode("utf-8", errors="surrogatepass") if isinstance(body, str) else body
    try:
        doc = parse_json_body(data, LIMITS.max_body_bytes if max_bytes is None else max_bytes)
    except ValueError:
        return None
    return _failed_task(doc)


def _failed_task(doc: Any) -> Received | None:
    if not isinstance(doc, _Object) or doc.repeated & _TASK_MEMBERS:
        return None
    error = doc.get("error")
    if not _read_strings(doc, _TASK_MEMBERS) or (
        isinstance(error, _Object) and not _read_strings(error, frozenset({"code", "message"}))
    ):
        return None
    ok = (
        isinstance(doc.get("task_id"), str)
        and doc.get("status") == "failed"
        and isinstance(error, _Object)
        and not error.repeated & {"code", "message"}
        and isinstance(error.get("code"), str)
        and isinstance(error.get("message"), str)
        and _count(doc.get("credits_used"))
        and _count(doc.get("duration_ms"))
    )
    if not ok:
        return None
    assert isinstance(error, _Object)
    code = error["code"] or None
    known = CODES_BY_NAME.get(code) if code is not None else None
    return Received(
        status=known.status if known is not None else UNKNOWN_TASK_CODE_STATUS,
        code=code,
        message=cut_message(error["message"]),
        body_is_envelope=True,
        message_from_body=True,
        task_id=valid_id(doc["task_id"]),
    )


@dataclass(frozen=True, slots=True)
class TaskState:
    """A task as `GET /tasks/{task_id}` answers it: `status` is `queued`, `running`,
    `succeeded` (with `result`) or `failed` (with `failure`)."""

    task_id: str
    status: str
    result: Any = None
    credits_used: int = 0
    duration_ms: int = 0
    failure: Received | None = None


def read_task(body: bytes, max_bytes: int) -> TaskState | None:
    """A task body, read with the envelope's whole-body rules; None when it is not one of
    the four states' shapes."""
    try:
        doc = parse_json_body(body, max_bytes)
    except ValueError:
        return None
    if not isinstance(doc, _Object) or doc.repeated & {"task_id", "status"}:
        return None
    if not _read_strings(doc, frozenset({"task_id", "status"})):
        return None
    task_id, status = doc.get("task_id"), doc.get("status")
    if not isinstance(task_id, str) or not isinstance(status, str):
        return None
    if status in ("queued", "running"):
        return TaskState(task_id, status)
    if status == "succeeded":
        if doc.repeated & {"result", "credits_used", "duration_ms"}:
            return None
        counts = [doc.get(k, _Integer(0, False)) for k in ("credits_used", "duration_ms")]
        result = doc.get("result")
        if not all(_count(c) for c in counts) or _holds_out_of_range(result):
            return None
        if _invalid_anywhere(result):
            return None
        return TaskState(task_id, status, _plain(doc.get("result")), int(counts[0]), int(counts[1]))
    if status == "failed":
        failure = _failed_task(doc)
        return None if failure is None else TaskState(task_id, status, failure=failure)
    return None


def _holds_out_of_range(value: Any) -> bool:
    if value is OUT_OF_RANGE:
        return True
    if isinstance(value, dict):
        return any(_holds_out_of_range(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_out_of_range(v) for v in value)
    return False


def _plain(value: Any) -> Any:
    """A parsed value with plain `dict` and `int`."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, _Integer):
        return int(value)
    return value
