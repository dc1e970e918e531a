#!/usr/bin/env bash
# Makes sure `promtool` is on PATH: installs Debian's `prometheus` package (which ships
# promtool) when it is missing. Idempotent and quiet when promtool is already there; prints
# the version either way. Needs root (or sudo) only when it has to install.
set -euo pipefail

if ! command -v promtool >/dev/null 2>&1; then
  echo "ensure-promtool: installing Debian's prometheus package (ships promtool)" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  # The package list may be stale or absent on a fresh machine: update once, then install.
  # --no-install-recommends keeps it to prometheus itself; the service is never started by us.
  $sudo apt-get update -qq >/dev/null
  $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if ! command -v promtool >/dev/null 2>&1; then
    echo "ensure-promtool: the prometheus package installed but promtool is not on PATH" >&2
    exit 1
  fi
fi

promtool --version 2>&1 | head -n 1
