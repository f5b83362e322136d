#!/usr/bin/env bash
# Makes sure `promtool` (Debian's `prometheus` package) is installed: the metrics test
# validates the mock's /metrics with it. As root with apt-get it installs the package
# without starting its service; else it says the one line to run and fails.
set -euo pipefail
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing promtool (Debian's prometheus package) for the metrics test"
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "promtool is missing; run: sudo apt-get install -y --no-install-recommends prometheus" >&2
    exit 1
  fi
fi
promtool --version | head -1
