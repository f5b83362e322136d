#!/usr/bin/env bash
# The README's test command: every test of the workspace, feature-gated code included.
# The Redis tests start their own `redis-server` on a free loopback port and stop it by
# PID; scripts/ensure-redis.sh makes sure it is installed, scripts/ensure-python.sh that
# python3 and urllib3 2.x are, scripts/ensure-promtool.sh that promtool is (the mock's
# /metrics is checked with it); each says the one line to run when it cannot. Then the
# Python package's checks (scripts/python-check.sh: a venv with pinned PyPI packages).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-redis.sh
bash scripts/ensure-promtool.sh
bash scripts/ensure-python.sh
cargo test --workspace --all-features "$@"
bash scripts/python-check.sh
