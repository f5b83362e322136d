#!/usr/bin/env bash
# Packages every published crate, then tests each one from its `.crate` alone, the way
# crates.io users get it: unpacked outside the workspace, with no file of the repository
# beside it. Crates that depend on `overten-errors` use the *packaged* core (its unpacked
# `.crate`, patched in for crates.io), since it is not published yet.
#
# Usage: bash scripts/package-check.sh   (CI runs it; nothing is uploaded)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# A dry run verifies each package against the others through a temporary local registry.
# Cargo treats registry sources as immutable: what it unpacked and compiled from there is
# kept under $CARGO_HOME/registry and target/package, keyed by name and version only, so a
# later run would verify against stale builds of this workspace's own crates. Remove them
# (and only them) first.
# The dry run gets a target directory of its own, emptied first (the workspace's would hold
# compiled copies of those registry packages from earlier runs).
export CARGO_TARGET_DIR="$root/target/publish-check"
rm -rf "$CARGO_TARGET_DIR"
cargo_home=${CARGO_HOME:-$HOME/.cargo}
# Every crate of the workspace (overten-errors, overten-errors-http, overten-gateway, …):
# a pattern per prefix missed overten-gateway once, and its stale copy failed the CLI's check.
rm -rf "$cargo_home"/registry/src/*/overten-*-[0-9]* "$cargo_home"/registry/cache/*/overten-*-[0-9]*.crate

echo "== cargo publish --workspace --exclude xtask --dry-run (nothing is uploaded)"
cargo publish --workspace --exclude xtask --dry-run

# The .crate files themselves (the dry run above already built and verified them).
cargo package --workspace --exclude xtask --no-verify --quiet

version=$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="overten-errors"))')
packages="$CARGO_TARGET_DIR/package"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Emptied too: unpacked files keep the .crate's timestamps, so cargo would not see that an
# earlier build of the same name and version is stale.
export CARGO_TARGET_DIR="$root/target/package-tests"
rm -rf "$CARGO_TARGET_DIR"
core="$work/overten-errors-$version"
http="$work/overten-errors-http-$version"
schema="$work/overten-errors-schema-$version"
gateway="$work/overten-gateway-$version"
crates="overten-errors overten-errors-http overten-errors-schema overten-gateway overten-errors-cli"
for crate in $crates; do
  tar -xzf "$packages/$crate-$version.crate" -C "$work"
done
for crate in $crates; do
  dir="$work/$crate-$version"
  echo "== $crate $version: cargo test from the unpacked .crate"
  (cd "$dir" && cargo test --all-features \
      --config "patch.crates-io.overten-errors.path=\"$core\"" \
      --config "patch.crates-io.overten-errors-http.path=\"$http\"" \
      --config "patch.crates-io.overten-errors-schema.path=\"$schema\"" \
      --config "patch.crates-io.overten-gateway.path=\"$gateway\"")
done
