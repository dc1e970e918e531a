#!/usr/bin/env bash
# Runs a command in its own process group and kills the whole group (wrangler and the workerd
# it spawns) when the test process that started it exits, however it exits.
# Usage: watchdog.sh PARENT_PID command args...
set -u
parent=$1; shift
setsid "$@" &
child=$!
stop() { kill -TERM -- -"$child" 2>/dev/null; sleep 1; kill -KILL -- -"$child" 2>/dev/null; exit 0; }
trap stop TERM INT HUP
while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.5; done
stop
