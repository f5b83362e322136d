#!/usr/bin/env bash
# The README's test command: every test of the workspace, feature-gated code included.
# The Redis tests start their own `redis-server` on a free loopback port and stop it by
# PID; scripts/ensure-redis.sh makes sure it is installed (or says the one line to run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-redis.sh
cargo test --workspace --all-features "$@"
