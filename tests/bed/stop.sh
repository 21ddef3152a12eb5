#!/usr/bin/env bash
# Stops the test bed started by tests/bed/start.sh: SIGTERM to its PID, which stops every server it
# started (by PID) and removes its folder.
set -euo pipefail

CACHE="${ZEROSPOT_CACHE:-$HOME/.cache/zerospot}"
pidfile="$CACHE/run/bed.pid"
if [[ ! -f $pidfile ]]; then
    echo "no test bed is running (no $pidfile)"
    exit 0
fi
pid="$(cat "$pidfile")"
if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "pid $pid still running after 10 s; sending SIGKILL (its watchdog then stops the servers)"
        kill -KILL "$pid"
    fi
fi
rm -f "$pidfile"
echo "test bed (pid $pid) stopped"
