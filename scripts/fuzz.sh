#!/usr/bin/env bash
# Runs every cargo-fuzz target of the project for SECONDS each (default 5): the frame, token,
# broadcast-body and connect-query parsers, the policy grammar and object names.
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
# Usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH" RUSTC_BOOTSTRAP=1
secs=${1:-5}
case "$secs" in ''|*[!0-9]*) echo "fuzz: SECONDS must be a whole number, got '$secs'" >&2; exit 2;; esac
for dir in fuzz shard-policies/fuzz; do
  (
    cd "$dir"
    export CARGO_TARGET_DIR="$PWD/target"
    cargo fuzz build -O 2>&1 | grep -E '^(error|warning: unused)' || true
    for target in $(cargo fuzz list); do
      printf 'fuzz %-16s %3ss ... ' "$target" "$secs"
      log="target/fuzz-$target.log"
      mkdir -p target
      if cargo fuzz run -O "$target" -- -max_total_time="$secs" > "$log" 2>&1; then
        grep -oE 'Done [0-9]+ runs' "$log" | tail -1
      else
        echo "FAILED"; tail -30 "$log"; exit 1
      fi
    done
  )
done
