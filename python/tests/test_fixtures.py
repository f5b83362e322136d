"""Every fixture of docs/fixtures/, replayed through the package (all kinds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from overten_errors.fixtures import check, main

DOCS = Path(__file__).resolve().parents[2] / "docs"
FIXTURES = sorted((DOCS / "fixtures").glob("*.json"))


def test_there_are_fixtures_of_every_kind() -> None:
    kinds = {json.loads(p.read_text(encoding="utf-8"))["kind"] for p in FIXTURES}
    assert kinds == {"http_response", "task_failure", "transport_failure", "success", "pacing"}


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture(path: Path) -> None:
    assert check(json.loads(path.read_text(encoding="utf-8"))) == []


def test_a_changed_expectation_fails(tmp_path: Path) -> None:
    fixture = json.loads((DOCS / "fixtures" / "html-503.json").read_text(encoding="utf-8"))
    fixture["expect"]["action"]["min_ms"] = 30001
    assert check(fixture) != []
    fixture = json.loads((DOCS / "fixtures" / "html-503.json").read_text(encoding="utf-8"))
    fixture["expect"]["message"] = "Service Temporarily Unavailable"
    assert check(fixture) != []


def test_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(DOCS)]) == 0
    assert f"replay: {len(FIXTURES)} passed, 0 failed" in capsys.readouterr().out


def test_a_pacing_fixtures_state_is_read_strictly_and_its_waits_judged() -> None:
    base = json.loads((DOCS / "fixtures" / "pacing-window-spent.json").read_text(encoding="utf-8"))
    assert check(base) == []
    # The previous default's waits (all at the reset) do not conform.
    held = json.loads(json.dumps(base))
    held["expect"]["waits_ms"] = [{"min_ms": 18000, "max_ms": 27000}] * 3
    held["expect"]["hold_ms"] = held["expect"]["waits_ms"][0]
    assert check(held) != []
    # A huge count is refused or bounded, never looped over; a wrong type is refused.
    for field, bad in (
        ("sent_in_window", 2**40),
        ("sent_in_window", -1),
        ("sent_in_window", "60"),
        ("sent_in_window", True),
        ("seen_shared", "yes"),
    ):
        f = json.loads(json.dumps(base))
        f["request"][field] = bad
        errors = check(f)
        assert errors and field in errors[0], (field, bad, errors)
    big = json.loads(json.dumps(base))
    big["request"]["sent_in_window"] = 2**32 - 1
    assert check(big) == []
