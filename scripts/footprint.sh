#!/usr/bin/env bash
# Footprint of the core crate: a clean release build of `overten-errors` beside a throwaway
# crate that uses serde + serde_json + strum + thiserror derives, built the same way
# (`cargo build --release --offline`, empty target dir, default jobs) in the same run,
# alternating, ROUNDS times each. Prints build seconds (best and all), crates compiled,
# and the ratio. Fails if `http` or an async runtime shows up in the core's tree.
#
# Usage: bash scripts/footprint.sh [ROUNDS]   (default 2)
set -euo pipefail
rounds=${1:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/peer/src"
cat > "$work/peer/Cargo.toml" <<'TOML'
[package]
name = "footprint-peer"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
serde = { version = "1", features = ["derive"] }
serde_json = "1"
strum = { version = "0.28", features = ["derive"] }
thiserror = "2"

[workspace]
TOML
cat > "$work/peer/src/lib.rs" <<'RUST'
//! The same kind of code as the core, written with the usual derives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize,
         strum::EnumString, strum::IntoStaticStr, strum::EnumIter, strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Code { InvalidApiKey, Forbidden, RateLimitExceeded, InternalError }

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Envelope { pub success: bool, pub error: Code, pub message: String }

#[derive(Debug, thiserror::Error)]
#[error("{code} ({status}): {message}")]
pub struct ApiError { pub code: Code, pub status: u16, pub message: String }

pub fn parse(bytes: &[u8]) -> Result<Envelope, serde_json::Error> { serde_json::from_slice(bytes) }
RUST

(cd "$root" && cargo fetch --quiet)
(cd "$work/peer" && cargo generate-lockfile --quiet && cargo fetch --quiet)

if (cd "$root" && cargo tree -p overten-errors -e normal --prefix none) \
    | grep -E '^(http|hyper|tokio|async-|futures|mio|reqwest|axum) ' ; then
  echo "FAIL: an http or async crate is in the core's normal dependency tree" >&2
  exit 1
fi

build() { # name dir args...
  local name=$1 dir=$2; shift 2
  local target="$work/target-$name-$RANDOM"
  local start end
  start=$(date +%s.%N)
  (cd "$dir" && CARGO_TARGET_DIR="$target" cargo build --release --offline "$@" 2> "$work/$name.log")
  end=$(date +%s.%N)
  rm -rf "$target"
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }'
}

core_times=(); peer_times=()
for _ in $(seq "$rounds"); do
  core_times+=("$(build core "$root" -p overten-errors)")
  peer_times+=("$(build peer "$work/peer")")
done
core_crates=$(grep -c '^ *Compiling ' "$work/core.log" || true)
peer_crates=$(grep -c '^ *Compiling ' "$work/peer.log" || true)
best() { printf '%s\n' "$@" | sort -n | head -1; }
core_best=$(best "${core_times[@]}"); peer_best=$(best "${peer_times[@]}")

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(rustc --version)"
printf '%-34s %10s %8s  %s\n' "build (clean, --release)" "best s" "crates" "all rounds (s)"
printf '%-34s %10.2f %8s  %s\n' "overten-errors (core)" "$core_best" "$core_crates" "${core_times[*]}"
printf '%-34s %10.2f %8s  %s\n' "serde+serde_json+strum+thiserror" "$peer_best" "$peer_crates" "${peer_times[*]}"
awk -v ct="$core_best" -v pt="$peer_best" -v cc="$core_crates" -v pc="$peer_crates" \
  'BEGIN { printf "ratio core/peer: time %.2fx, crates %.2fx\n", ct / pt, cc / pc }'
echo "core normal dependencies:"
(cd "$root" && cargo tree -p overten-errors -e normal --prefix none | sed 's/ (.*//' | sort -u | sed 's/^/  /')
