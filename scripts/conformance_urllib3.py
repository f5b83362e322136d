#!/usr/bin/env python3
"""A client test program for `overten-errors conformance`: urllib3's own `Retry`, switched on
the way its documentation shows, and nothing written for the Overten API (no async
resubmission, no Idempotency-Key). It shows what a widely used client does by itself.

    overten-errors conformance -- python3 scripts/conformance_urllib3.py

Reads OVERTEN_CONFORMANCE_PLAN (the scenarios), runs every scenario at once (each scenario's
`clients` requests in threads of their own) and exits when all have ended. Needs urllib3 2.x
(`python3 -m pip install 'urllib3>=2,<3'`).
"""

import json
import os
import sys
import threading

import urllib3
from urllib3.util.retry import Retry


def main():
    http = urllib3.PoolManager(maxsize=16)
    plan = json.loads(http.request("GET", os.environ["OVERTEN_CONFORMANCE_PLAN"]).data)
    key = os.environ.get("OVERTEN_API_KEY", "")
    # Retries on, as urllib3's docs show them: 4 retries (5 attempts), exponential backoff,
    # the usual transient statuses; Retry-After is honoured (urllib3's default) for 413, 429
    # and 503. POST stays out of `allowed_methods` (urllib3's default).
    retry = Retry(
        total=4,
        backoff_factor=0.5,
        status_forcelist=[429, 500, 502, 503, 504],
        raise_on_status=False,
    )
    results = {}

    def one(scenario, n):
        body = scenario.get("body")
        headers = {"Authorization": "Bearer " + scenario.get("api_key", key)}
        if body is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(body)
        try:
            r = http.request(scenario["method"], scenario["url"], body=body, headers=headers,
                             retries=retry, timeout=90)
            results[(scenario["name"], n)] = r.status
        except urllib3.exceptions.HTTPError as e:  # MaxRetryError and friends
            results[(scenario["name"], n)] = type(e).__name__

    threads = [threading.Thread(target=one, args=(s, n))
               for s in plan["scenarios"] for n in range(s["clients"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=200)
    for (name, n), status in sorted(results.items()):
        print("%s #%d: %s" % (name, n, status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
