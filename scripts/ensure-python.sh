#!/usr/bin/env bash
# Makes sure python3 and urllib3 2.x are there: the Python package's checks
# (scripts/python-check.sh makes its own venv) and the conformance run of urllib3's Retry
# (scripts/conformance_urllib3.py, crates/overten-errors-cli/tests/conformance_urllib3.rs)
# need them. Installs what is missing (python3 from Debian as root, urllib3 from PyPI);
# else says the one line to run and fails.
set -euo pipefail
if ! command -v python3 >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing python3 (Debian's package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-pip >/dev/null
  else
    echo "python3 is missing; run: sudo apt-get install -y python3 python3-pip" >&2
    exit 1
  fi
fi
has_urllib3() {
  python3 -c 'import sys, urllib3; sys.exit(0 if urllib3.__version__.startswith("2.") else 1)' 2>/dev/null
}
if ! has_urllib3; then
  echo "== installing urllib3 2.x from PyPI (for the conformance run of urllib3's Retry)"
  python3 -m pip install --quiet 'urllib3>=2,<3' 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages 'urllib3>=2,<3' 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages 'urllib3>=2,<3' 2>/dev/null \
    || true
fi
if ! has_urllib3; then
  echo "urllib3 2.x is missing; run: python3 -m pip install 'urllib3>=2,<3'" >&2
  exit 1
fi
python3 -c 'import sys, urllib3; print("python", sys.version.split()[0], "urllib3", urllib3.__version__)'
