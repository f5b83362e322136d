"""Benchmarks of the Python package, each against its baseline in the same run.

    python bench/bench.py [--quick]

1. classify + decide a 429 (`classify`, then `Retrier.decide`) vs parsing the same body with
   `json.loads` and reading `Retry-After` and the three `X-RateLimit-*` headers by hand.
2. The httpx `Client` on a 200 over loopback vs bare `httpx.Client` (one keep-alive
   connection each, to a local HTTP/1.1 server), rounds interleaved so that the machine's
   noise falls on both alike; the ratio of medians is reported (target: at most 1.05).

Prints one line per benchmark: times per call and the ratio. No thresholds are asserted:
timings on shared machines are reported, not tested."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from overten_errors import Client, Retrier, RetryBudget, classify

BODY = json.dumps(
    {"success": False, "error": "rate_limit_exceeded", "message": "Slow down", "run_id": "run_1"}
).encode()
HEADERS = [
    ("content-type", "application/json"),
    ("retry-after", "7"),
    ("x-ratelimit-limit", "60"),
    ("x-ratelimit-remaining", "0"),
    ("x-ratelimit-reset", "1764763200"),
    ("x-request-id", "req_123"),
]


def by_hand() -> object:
    doc = json.loads(BODY)
    code = doc.get("error") if isinstance(doc, dict) else None
    h = {k: v for k, v in HEADERS}
    wait = int(h["retry-after"]) * 1000 if h.get("retry-after", "").isdigit() else None
    remaining = int(h["x-ratelimit-remaining"])
    return code, wait, remaining, int(h["x-ratelimit-reset"]), h.get("x-request-id")


def ours(retrier: Retrier) -> object:
    received = classify(429, HEADERS, BODY)
    return retrier.decide(received, 1)


def bench_classify(n: int) -> None:
    retrier = Retrier(budget=RetryBudget(capacity=10**9, tokens=10**9))
    base = min(timeit.repeat(by_hand, number=n, repeat=5)) / n
    mine = min(timeit.repeat(lambda: ours(retrier), number=n, repeat=5)) / n
    print(
        f"classify+decide a 429: {mine * 1e6:.1f} us; json.loads + headers by hand: "
        f"{base * 1e6:.1f} us; ratio {mine / base:.2f}"
    )


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-RateLimit-Limit", "600")
        self.send_header("X-RateLimit-Remaining", "599")
        self.send_header("X-RateLimit-Reset", "1764763200")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve(port: multiprocessing.connection.Connection) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port.send(server.server_address[1])
    server.serve_forever()


def bench_loopback(n: int, rounds: int) -> None:
    # The server in a process of its own (a thread a connection: each client keeps one
    # alive), so that its work does not share the client's interpreter lock.
    there, here = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_serve, args=(there,), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{here.recv()}"
    # The same request on the wire: the bare client sends the API key too.
    auth = {"Authorization": "Bearer sk_live_bench"}
    bare = httpx.Client(base_url=url, headers=auth, limits=httpx.Limits(max_connections=1))
    client = Client(url, api_key="sk_live_bench")
    bare_times: list[float] = []
    our_times: list[float] = []

    def timed(call: Callable[[], object]) -> float:
        start = time.perf_counter()
        for _ in range(n):
            call()
        return (time.perf_counter() - start) / n

    try:
        for i in range(rounds):
            # ABBA order: drift in the machine's speed falls on both alike.
            pair = [
                ("bare", lambda: bare.get("/v1/x").json()),
                ("ours", lambda: client.get("/v1/x")),
            ]
            for name, call in pair if i % 2 == 0 else reversed(pair):
                (bare_times if name == "bare" else our_times).append(timed(call))
    finally:
        bare.close()
        client.close()
        server.terminate()
    b, o = statistics.median(bare_times), statistics.median(our_times)
    ratios = sorted(x / y for x, y in zip(our_times, bare_times, strict=True))
    q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
    print(
        f"a 200 over loopback: Client {o * 1e6:.0f} us, bare httpx {b * 1e6:.0f} us; "
        f"ratio of medians {o / b:.3f} (rounds' quartiles {q1:.3f}-{q3:.3f}, target <= 1.05)"
    )


def bench_in_process(n: int) -> None:
    """The layers alone: the same 200 from an in-memory transport (no sockets)."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b'{"ok":true}', headers={"X-RateLimit-Remaining": "9"})

    auth = {"Authorization": "Bearer sk_live_bench"}
    bare = httpx.Client(
        base_url="http://api.test", headers=auth, transport=httpx.MockTransport(answer)
    )
    client = Client(
        "http://api.test", api_key="sk_live_bench", transport=httpx.MockTransport(answer)
    )
    b = min(timeit.repeat(lambda: bare.get("/v1/x").json(), number=n, repeat=5)) / n
    o = min(timeit.repeat(lambda: client.get("/v1/x"), number=n, repeat=5)) / n
    print(
        f"a 200 in process (no sockets): Client {o * 1e6:.1f} us, bare httpx {b * 1e6:.1f} us; "
        f"+{(o - b) * 1e6:.1f} us a request"
    )


def main() -> int:
    quick = "--quick" in sys.argv
    bench_classify(2_000 if quick else 50_000)
    bench_in_process(200 if quick else 5_000)
    bench_loopback(50 if quick else 200, 4 if quick else 40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
