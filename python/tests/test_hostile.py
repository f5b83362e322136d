"""Hostile servers on a real loopback socket: whatever they send, the client answers with a
typed error or a result, never an unexpected exception, never a raw body in a message, and
never reads more than its bounds. Sleeps are recorded, not slept."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from overten_errors import (
    ApiError,
    Client,
    OvertenError,
    TransportError,
    UnexpectedResponse,
)

Handler = Callable[[socket.socket], None]


@contextmanager
def server(handler: Handler) -> Iterator[tuple[str, list[int]]]:
    """A loopback server that runs `handler` on every connection (bounded: 50 at most)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(10)
    served = [0]

    def loop() -> None:
        while served[0] < 50:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            served[0] += 1
            with conn:
                conn.settimeout(10)
                try:
                    request = conn.recv(65536)
                    if request:
                        handler(conn)
                except OSError:
                    pass

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", served
    finally:
        listener.close()


def sends(data: bytes) -> Handler:
    return lambda conn: conn.sendall(data)


class Sleeps:
    def __init__(self) -> None:
        self.slept: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


def client(url: str, sleeps: Sleeps | None = None) -> Client:
    return Client(url, api_key="sk_live_h", sleep=sleeps or Sleeps(), timeout=5)


def test_a_body_cut_short_is_a_transport_error() -> None:
    cut = b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"ok":'
    with server(sends(cut)) as (url, _), pytest.raises(TransportError) as e:
        client(url).get("/v1/x")
    assert "ok" not in str(e.value)


def test_a_garbage_status_line_is_a_transport_error_retried_for_a_get() -> None:
    sleeps = Sleeps()
    with server(sends(b"SMTP ready\r\n\r\n")) as (url, served), pytest.raises(TransportError):
        client(url, sleeps).get("/v1/x")
    # Sent and failed: a GET is replay-safe, so it is retried until the attempts are spent.
    assert served[0] == 5 and len(sleeps.slept) == 4


def test_a_refused_connection_is_retried_then_typed() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    sleeps = Sleeps()
    with pytest.raises(TransportError) as e:
        client(f"http://127.0.0.1:{port}", sleeps).post("/v1/x", json={"a": 1})
    assert e.value.attempts == 5 and len(sleeps.slept) == 4


def test_a_huge_streamed_error_body_is_not_read_past_the_bound() -> None:
    sent = [0]

    def flood(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"4000\r\n" + b"<" * 0x4000 + b"\r\n"
        try:
            for _ in range(2000):  # 32 MiB if it were all read
                conn.sendall(chunk)
                sent[0] += 0x4000
        except OSError:
            pass

    with server(flood) as (url, _), pytest.raises(ApiError) as e:
        client(url).request("LOCK", "/v1/x")  # not replay-safe: one attempt
    assert e.value.code is None and "<<<" not in str(e.value)
    # The client stopped reading after 64 KiB; the socket buffers hold the rest it never read.
    assert sent[0] < 16 * 1024 * 1024


def test_a_success_larger_than_the_result_bound_is_refused() -> None:
    body = b'"' + b"x" * 5000 + b'"'
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    with server(sends(answer)) as (url, _):
        c = Client(url, api_key="sk_live_h", max_result_bytes=1000, timeout=5)
        with pytest.raises(UnexpectedResponse):
            c.get("/v1/x")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 429 Slow\r\nRetry-After: 99999999999999999999999\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 503 X\r\nRetry-After: Sat, 06 Nov 2094 08:49:37 GMT\r\n"
        b"Content-Length: 0\r\n\r\n",
        b"HTTP/1.1 404 X\r\nContent-Length: 5\r\n\r\n\xff\xfe\x00\x01{",
        b"HTTP/1.1 400 X\r\nX-Request-Id: \xff\xff\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 409 X\r\nContent-Length: 45\r\n\r\n"
        b'{"success":false,"error":"conflict","x":1e999}',
    ],
)
def test_odd_error_answers_are_typed_and_never_hang(answer: bytes) -> None:
    with server(sends(answer)) as (url, served), pytest.raises(OvertenError) as e:
        client(url).get("/v1/x")
    assert served[0] == 1  # a wait too long, or a permanent error: no retry
    assert isinstance(e.value, ApiError) and e.value.message
