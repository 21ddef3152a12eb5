#!/usr/bin/env bash
# Here, after device calls: takes what came back from them (the folders the device tool copied $OUT into)
# and puts it where it belongs:
#   results-*.csv, detail-*.csv, converse-*.txt -> tests/gpu/results/; bench-*.log and dispatcher.log there
#       as .txt (the repository ignores *.log)
#   cuda-libs.tar.xz.part* + cuda-libs.sha256 -> joined and checked into
#       ${ZEROSPOT_CACHE:-~/.cache/zerospot}/gpu/cuda-libs/cuda-libs.tar.xz (for stage.sh --cuda-libs)
# then removes the staged loads (.gpu/) and rebuilds scaler/sim/data/gpu-sharing-h200-ollama.csv from tests/gpu/results/results-*.csv (small
# model first, then the 7B shape; one header).
#
# Usage: bash tests/gpu/collect.sh DIR...
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${ZEROSPOT_CACHE:-$HOME/.cache/zerospot}"
RESULTS=$HERE/results
CSV=$REPO/scaler/sim/data/gpu-sharing-h200-ollama.csv
HEADER=gpu,driver,date,model,weights_gb,sharing,processes,concurrency,tokens_per_s_each,tokens_per_s_total,ttft_p50_ms,ttft_p99_ms,gpu_mem_mib
log() { printf '[collect] %s\n' "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }

(($#)) || die "usage: collect.sh DIR... (the folders a device call's files came back to)"
mkdir -p "$RESULTS"
for dir in "$@"; do
    [[ -d $dir ]] || die "$dir is not a folder"
    for f in "$dir"/*; do
        [[ -f $f ]] || continue
        name=$(basename "$f")
        case $name in
        results-*.csv | detail-*.csv) # Unix line ends (Python's csv module writes \r\n by default)
            tr -d '\r' <"$f" >"$RESULTS/$name"; log "$name -> tests/gpu/results/" ;;
        bench-*.log | dispatcher.log) # kept as .txt: the repository ignores *.log
            cp "$f" "$RESULTS/${name%.log}.txt"; chmod u+w "$RESULTS/${name%.log}.txt"
            log "$name -> tests/gpu/results/${name%.log}.txt" ;;
        converse-*.txt)
            cp "$f" "$RESULTS/$name"; chmod u+w "$RESULTS/$name"; log "$name -> tests/gpu/results/" ;;
        cuda-libs.tar.xz.part* | cuda-libs.sha256) ;;
        *) log "left alone: $name" ;;
        esac
    done
    if [[ -f $dir/cuda-libs.sha256 ]]; then
        mkdir -p "$CACHE/gpu/cuda-libs"
        cat "$dir"/cuda-libs.tar.xz.part* >"$CACHE/gpu/cuda-libs/cuda-libs.tar.xz"
        want=$(cut -d' ' -f1 "$dir/cuda-libs.sha256")
        got=$(sha256sum "$CACHE/gpu/cuda-libs/cuda-libs.tar.xz" | cut -d' ' -f1)
        [[ $got == "$want" ]] || die "the joined CUDA backend has sha256 $got, expected $want"
        log "CUDA backend -> $CACHE/gpu/cuda-libs/cuda-libs.tar.xz (stage.sh --cuda-libs takes it)"
    fi
done

# The staged loads have travelled: they do not stay in the checkout (large files, even ignored ones).
rm -rf "$REPO/.gpu"

shopt -s nullglob
parts=()
for which in small 7b; do [[ -f $RESULTS/results-$which.csv ]] && parts+=("$RESULTS/results-$which.csv"); done
if ((${#parts[@]})); then
    for p in "${parts[@]}"; do
        [[ $(head -n 1 "$p") == "$HEADER" ]] || die "$p does not start with the expected header"
    done
    { echo "$HEADER"; for p in "${parts[@]}"; do tail -n +2 "$p"; done; } >"$CSV"
    log "$(($(wc -l <"$CSV") - 1)) rows -> scaler/sim/data/gpu-sharing-h200-ollama.csv"
fi
