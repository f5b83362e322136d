#!/usr/bin/env bash
# The Python package's checks (python/): a venv with the pinned packages of
# python/requirements-dev.txt, then ruff, mypy --strict, pytest (the fixture replay, the
# differential test against `overten-errors classify --json`, the client, the conformance
# grader), the wheel and sdist built and each installed into a fresh venv that replays the
# fixtures, and the benchmark's quick run. Installs what is missing (python3-venv from
# Debian as root, packages from PyPI); else says the one line to run and fails.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv="$root/target/python-venv"
bash scripts/ensure-python.sh >/dev/null
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing python3-venv (Debian's package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  else
    echo "python3's venv module is missing; run: sudo apt-get install -y python3-venv" >&2
    exit 1
  fi
fi
want=$(sha256sum python/requirements-dev.txt | cut -c1-16)
if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$want" ]; then
  echo "== creating $venv with python/requirements-dev.txt (PyPI, pinned)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      -r python/requirements-dev.txt; then
    echo "the pinned Python packages could not be installed; run: $venv/bin/python -m pip install -r python/requirements-dev.txt" >&2
    exit 1
  fi
  echo "$want" > "$venv/.requirements"
fi
py="$venv/bin/python"
echo "== cargo build -p overten-errors-cli (the differential test and the grader run it)"
cargo build --quiet -p overten-errors-cli
export OVERTEN_ERRORS_BIN="$root/target/debug/overten-errors"
cd python
echo "== ruff check / ruff format --check"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
echo "== mypy --strict"
"$venv/bin/mypy"
echo "== pytest"
PYTHONPATH=src "$py" -m pytest -q -p no:cacheprovider
echo "== python -m build (wheel and sdist), each installed into a fresh venv"
dist="$root/target/python-dist"
rm -rf "$dist"
"$py" -m build --no-isolation --outdir "$dist" . >/dev/null
for artefact in "$dist"/*.whl "$dist"/*.tar.gz; do
  fresh="$root/target/python-fresh"
  rm -rf "$fresh"
  python3 -m venv "$fresh"
  # httpx from PyPI, at the pinned version; the package from the artefact alone.
  "$fresh/bin/python" -m pip install --quiet --disable-pip-version-check \
    "$(grep '^httpx==' requirements-dev.txt)" "$artefact"
  (cd "$root" && "$fresh/bin/python" -m overten_errors.fixtures docs) | tail -1 \
    | sed "s|^|$(basename "$artefact"): |"
  rm -rf "$fresh"
done
echo "== python bench/bench.py --quick (reported, not asserted)"
PYTHONPATH=src "$py" bench/bench.py --quick
