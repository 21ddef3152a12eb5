#!/usr/bin/env bash
# Starts a test bed in the background (moto, etcd, kube-apiserver, kube-scheduler, kube-controller-manager,
# kwok, Knative CRDs) on free 127.0.0.1 ports, prints the exports to reach it, and returns.
# `eval "$(bash tests/bed/start.sh)"` sets KUBECONFIG, AWS_ENDPOINT_URL, ... and ZEROSPOT_TESTBED, with
# which `cargo test -p zerospot-testbed` attaches to this bed instead of starting one per test binary.
# Stop it with tests/bed/stop.sh. Needs `bash tests/bed/setup.sh` first.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE="${ZEROSPOT_CACHE:-$HOME/.cache/zerospot}"
RUN="$CACHE/run"
mkdir -p "$RUN"

if [[ -f $RUN/bed.pid ]] && kill -0 "$(cat "$RUN/bed.pid")" 2>/dev/null; then
    echo "# a test bed is already running (pid $(cat "$RUN/bed.pid")); tests/bed/stop.sh stops it" >&2
    grep -E '^(export|#)' "$RUN/bed.out"
    exit 0
fi

(cd "$ROOT" && cargo build --quiet -p zerospot-testbed --bin zerospot-testbed) >&2
bin="${CARGO_TARGET_DIR:-$ROOT/target}/debug/zerospot-testbed"
nohup "$bin" >"$RUN/bed.out" 2>"$RUN/bed.err" </dev/null &
pid=$!
echo "$pid" >"$RUN/bed.pid"

for _ in $(seq 1 1200); do
    if grep -q '^export ZEROSPOT_TESTBED=' "$RUN/bed.out" 2>/dev/null; then
        grep -E '^(export|#)' "$RUN/bed.out"
        echo "# stop with: bash tests/bed/stop.sh (pid $pid)"
        exit 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$RUN/bed.pid"
        echo "the test bed failed to start:" >&2
        tail -n 40 "$RUN/bed.err" >&2
        exit 1
    fi
    sleep 0.1
done
echo "the test bed did not come up within 120 s; see $RUN/bed.err" >&2
kill "$pid" 2>/dev/null || true
rm -f "$RUN/bed.pid"
exit 1
