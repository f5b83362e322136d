"""The generated tables against the reference page itself (the published text, copied into
the crates' test data), never against the tables: a row the page does not hold fails."""

from __future__ import annotations

import json
import re
from pathlib import Path

from overten_errors import BUDGET, CODES, LIMITS, STATUSES, TIERS, VERSION, Policy, PollSchedule

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "crates" / "overten-errors" / "tests" / "data" / "error-reference.txt").read_text(
    encoding="utf-8"
)
LINES = set(PAGE.splitlines())
RETRY_MD = (ROOT / "docs" / "retry.md").read_text(encoding="utf-8")


def test_every_code_is_a_row_of_the_page() -> None:
    assert len(CODES) == 16
    for c in CODES:
        assert c.code + c.when + c.fix in LINES, c.code
    assert all(re.fullmatch(r"[a-z_]+", c.code) for c in CODES)
    # Every row of the page's code tables is a code here: a row "code + when + fix".
    rows = [line for line in LINES if re.match(r"^[a-z]+_?[a-z_]*[A-Z]", line)]
    assert len(rows) == len(CODES), rows


def test_every_status_is_a_row_of_the_page() -> None:
    for s in STATUSES:
        assert f"{s.status}{s.category}{s.scenario}" in LINES, s.status
    assert len(STATUSES) == len([line for line in LINES if re.match(r"^[1-5]\d\d[A-Z]", line)])


def test_tiers_are_the_pages() -> None:
    for t in TIERS:
        assert f"{t.tier}{t.requests_per_minute}{t.concurrent_runs}" in LINES, t.tier
    assert [t.tier for t in TIERS] == ["free", "pro", "enterprise"]


def test_codes_status_agree_with_the_page_statuses() -> None:
    # Each code's status has a row in the page's status table.
    statuses = {s.status for s in STATUSES}
    assert all(c.status in statuses for c in CODES)
    assert LIMITS.sync_timeout_ms == 300_000 and "300-second ceiling" in PAGE


def test_policy_defaults_are_retry_md_table() -> None:
    # docs/retry.md, Policy defaults: `| setting | default | meaning |`.
    rows = dict(re.findall(r"^\| `(\w+)` \| ([\d.]+) \|", RETRY_MD, re.M))
    p = Policy()
    for name in (
        "initial_delay_ms",
        "max_delay_ms",
        "max_attempts",
        "min_wait_ms",
        "max_wait_ms",
        "rate_limit_default_wait_ms",
        "wait_spread_max_ms",
    ):
        assert getattr(p, name) == int(rows[name]), name
    for name in ("multiplier", "jitter", "wait_spread"):
        assert getattr(p, name) == float(rows[name]), name
    budget = dict(re.findall(r"^\| budget `(\w+)` \| (\d+) \|", RETRY_MD, re.M))
    assert BUDGET.capacity == int(budget["capacity"])
    assert BUDGET.retry_cost == int(budget["retry_cost"])
    assert BUDGET.window_cost == int(budget["window_cost"])
    assert BUDGET.success_refill == int(budget["success_refill"])


def test_poll_schedule_is_retry_md() -> None:
    waits = re.search(r"Without jitter the waits are ([\d, ]+), …", RETRY_MD)
    assert waits is not None
    want = [int(w) for w in waits.group(1).split(", ")]
    assert [PollSchedule().delay_ms(n, 0) for n in range(1, len(want) + 1)] == want
    # The most jitter takes off: a quarter.
    assert PollSchedule().delay_ms(1, 2**64 - 1) == 750


def test_catalog_json_holds_the_same_rules() -> None:
    catalog = json.loads((ROOT / "docs" / "catalog.json").read_text(encoding="utf-8"))
    ours = {c.code: (c.status, c.retry.action, c.retry.min_ms, c.retry.max_ms) for c in CODES}
    theirs = {
        c["code"]: (
            c["status"],
            c["retry"]["action"],
            c["retry"].get("min_ms", 0),
            c["retry"].get("max_ms", 0),
        )
        for c in catalog["codes"]
    }
    assert ours == theirs


def test_the_package_version_is_the_crates() -> None:
    pyproject = (ROOT / "python" / "pyproject.toml").read_text(encoding="utf-8")
    version = re.search(r'^version = "([^"]+)"', pyproject, re.M)
    assert version is not None and version.group(1) == VERSION
