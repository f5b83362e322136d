"""`overten-errors conformance -- python conformance/conformance.py`: the package's client,
set up as the README shows, passes every rule of the grader (a full run takes 35-65 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_differential import binary

HERE = Path(__file__).resolve().parents[1]


def test_the_client_passes_every_rule_of_the_grader(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=str(HERE / "src"))
    done = subprocess.run(
        [
            binary(),
            "conformance",
            "--json",
            str(report),
            "--",
            sys.executable,
            str(HERE / "conformance" / "conformance.py"),
        ],
        capture_output=True,
        timeout=300,
        env=env,
        check=False,
    )
    out = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 0, out[-3000:] + done.stderr.decode("utf-8", "replace")[-2000:]
    graded = json.loads(report.read_text(encoding="utf-8"))
    assert graded["passed"] is True and graded["rules_failed"] == 0, graded["problems"]
    assert graded["rules_passed"] >= 29
    assert "BUG" not in out
