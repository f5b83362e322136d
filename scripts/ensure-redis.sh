#!/usr/bin/env bash
# Makes sure Debian's `redis-server` is installed (the Redis tests start their own servers
# on free loopback ports): as root with apt-get it installs it without starting the
# package's own service; else it says the one line to run and fails.
set -euo pipefail
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing redis-server (Debian's package) for the Redis tests"
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is missing; run: sudo apt-get install -y redis-server" >&2
    exit 1
  fi
fi
redis-server --version
