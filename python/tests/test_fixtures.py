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
