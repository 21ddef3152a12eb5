#!/usr/bin/env bash
# On the GPU machine (the device tool's `run`, in the repository root): receives what stage.sh packed, builds
# or unpacks Ollama's CUDA backend, makes the 7B-shaped model, runs the sharing benchmark and the converse
# demo. Everything lives under ZS_DIR (/tmp/zs), which lasts while the machine stays warm (30 s after a
# call), so the steps are calls made back to back; background work (the CUDA build, the 7B model) is
# started with setsid and outlives the call that started it.
#
#   device.sh receive              move the carried chunks (.gpu/load*) into ZS/in, join what is complete,
#                                  unpack it, start what can start (CUDA build, 7B GGUF), print the state
#   device.sh bench small|7b ARGS  wait for the backend and the model, create the Ollama models, run
#                                  bench.py (ARGS go to it); results, detail and log into $OUT (with
#                                  ZS_BRING_LIBS=1, the packed CUDA backend too, as `libs` does)
#   device.sh libs                 the packed CUDA backend, in parts of 15 MiB, into $OUT (to carry back)
#   device.sh converse ARGS        two model names over Gemma 3 270M, one ollama process each under one MPS
#                                  daemon, moto's SQS, `zerospot dispatcher --no-cluster`, then
#                                  `zerospot converse --turns 10` (ARGS go to converse); transcript into $OUT
#   device.sh status               what is there and what is running
set -euo pipefail

ZS=${ZS_DIR:-/tmp/zs}
REPO=$(pwd)
HERE=$REPO/tests/gpu
OUT=${OUT:-$ZS/out}
log() { printf '[device %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }
mkdir -p "$ZS"/{in,bin,log,models-src,mps} "$OUT"

GEMMA_SHA256=$(sed -n 's/^MODEL_SHA256=\([0-9a-f]*\).*/\1/p' "$REPO/tests/bed/setup-ollama.sh")
OLLAMA=$ZS/ollama/bin/ollama
GEMMA=$ZS/models-src/gemma3-270m-q4_k_m.gguf
LLAMA7B=$ZS/models-src/llama-7b-shape-random-q8_0.gguf
MODELS_DIR=$ZS/ollama-models
# The big model's shape: Llama 2 7B's (ZS_7B_ARGS changes it, e.g. a tiny one for a dry run on a CPU).
LLAMA7B_ARGS=${ZS_7B_ARGS:---layers 32 --hidden 4096 --ffn 11008 --heads 32 --kv-heads 32 --vocab 32000 --type q8_0}

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
unxz_to() { # FILE.xz DEST
    if command -v xz >/dev/null; then xz -dc "$1" >"$2"; else python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"; fi
}

# Scripts run from a copy: the next call re-copies the working tree while a background job may still run.
cp "$HERE"/bench.py "$HERE"/carry.py "$HERE"/make_gguf.py "$HERE"/models.py "$HERE"/gemma3.template "$ZS/bin/"

prepare() {
    python3 "$ZS/bin/carry.py" receive --loads "$REPO/.gpu" --store "$ZS/in"
    # Ollama (the CPU build from the Go module proxy; its GPU backends load from ../lib/ollama).
    if [[ -f $ZS/in/ollama.xz && ! -x $OLLAMA ]]; then
        mkdir -p "$ZS/ollama/bin"
        unxz_to "$ZS/in/ollama.xz" "$OLLAMA.tmp" && chmod +x "$OLLAMA.tmp" && mv "$OLLAMA.tmp" "$OLLAMA"
        log "ollama: $("$OLLAMA" --version 2>&1 | tail -n 1)"
    fi
    # The CUDA backend: carried back from an earlier call, or built now in the background (3 min).
    if [[ ! -f $ZS/cuda.done ]] && ! running "$ZS/build.pid"; then
        if [[ -f $ZS/in/cuda-libs.tar.xz ]]; then
            bash "$HERE/build-cuda.sh" "$ZS" reuse >"$ZS/log/build.log" 2>&1 || { cat "$ZS/log/build.log"; die "unpacking the CUDA backend failed"; }
            log "CUDA backend unpacked from the carried build"
        elif [[ -f $ZS/in/ggml-src.tar.gz ]]; then
            cp "$HERE/build-cuda.sh" "$ZS/bin/build-cuda.$$.sh"
            setsid nohup bash "$ZS/bin/build-cuda.$$.sh" "$ZS" build >"$ZS/log/build.log" 2>&1 </dev/null &
            echo $! >"$ZS/build.pid"
            log "CUDA backend build started in the background (log $ZS/log/build.log)"
        fi
    fi
    # PyPI gguf (pure Python; numpy, PyYAML, tqdm and requests are on the machine).
    if compgen -G "$ZS/in/gguf-*.whl" >/dev/null && [[ ! -d $ZS/site/gguf ]]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$ZS/site" "$ZS"/in/gguf-*.whl
    fi
    # The 7B-shaped random model (Llama 2 7B's shape, Q8_0, about 7.2 GB), in the background.
    if [[ -d $ZS/site/gguf && ! -f $LLAMA7B ]] && ! running "$ZS/gguf.pid"; then
        setsid nohup bash -c "PYTHONPATH='$ZS/site' python3 '$ZS/bin/make_gguf.py' '$LLAMA7B.tmp' $LLAMA7B_ARGS --name llama-7b-shape-random && mv '$LLAMA7B.tmp' '$LLAMA7B'" \
            >"$ZS/log/gguf.log" 2>&1 </dev/null &
        echo $! >"$ZS/gguf.pid"
        log "7B-shaped GGUF being written in the background (log $ZS/log/gguf.log)"
    fi
    # Gemma 3 270M, the real model (gzip-compressed for the trip), checked against setup-ollama.sh's digest.
    if [[ -f $ZS/in/gemma3-270m-q4_k_m.gguf.gz && ! -f $GEMMA ]]; then
        gzip -dc "$ZS/in/gemma3-270m-q4_k_m.gguf.gz" >"$GEMMA.tmp"
        got=$(sha256sum "$GEMMA.tmp" | cut -d' ' -f1)
        [[ $got == "$GEMMA_SHA256" ]] || die "Gemma 3 270M unpacked to sha256 $got, expected $GEMMA_SHA256"
        mv "$GEMMA.tmp" "$GEMMA"
        rm -f "$ZS/in/gemma3-270m-q4_k_m.gguf.gz"
        log "Gemma 3 270M in place (sha256 checked)"
    fi
    # moto[server] for SQS (wheels), and the zerospot binary.
    if [[ -f $ZS/in/moto-wheels.tar && ! -d $ZS/moto-site/moto ]]; then
        mkdir -p "$ZS/moto-wheels" && tar -xf "$ZS/in/moto-wheels.tar" -C "$ZS/moto-wheels"
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$ZS/moto-site" "$ZS"/moto-wheels/*.whl
        PYTHONPATH=$ZS/moto-site python3 -c 'import moto, moto.server, boto3, flask; print("moto", moto.__version__)'
    fi
    if [[ -f $ZS/in/zerospot.xz && ! -x $ZS/bin/zerospot ]]; then
        unxz_to "$ZS/in/zerospot.xz" "$ZS/bin/zerospot.tmp" && chmod +x "$ZS/bin/zerospot.tmp" && mv "$ZS/bin/zerospot.tmp" "$ZS/bin/zerospot"
        log "zerospot: $("$ZS/bin/zerospot" --version)"
    fi
}

status() {
    log "state of $ZS:"
    [[ -x $OLLAMA ]] && echo "  ollama: ready" || echo "  ollama: not yet"
    if [[ -f $ZS/cuda.done ]]; then echo "  CUDA backend: ready"
    elif running "$ZS/build.pid"; then echo "  CUDA backend: building ($(grep -c '^\[' "$ZS/cmake-build.log" 2>/dev/null || echo 0) build steps done)"
    elif [[ -f $ZS/log/build.log ]]; then echo "  CUDA backend: FAILED"; tail -n 30 "$ZS/log/build.log"
    else echo "  CUDA backend: not started"; fi
    if [[ -f $LLAMA7B ]]; then echo "  7B GGUF: $(du -h "$LLAMA7B" | cut -f1)"
    elif running "$ZS/gguf.pid"; then echo "  7B GGUF: being written"
    elif [[ -f $ZS/log/gguf.log ]]; then echo "  7B GGUF: FAILED"; tail -n 20 "$ZS/log/gguf.log"
    else echo "  7B GGUF: not started"; fi
    [[ -f $GEMMA ]] && echo "  Gemma 3 270M: ready" || echo "  Gemma 3 270M: not yet"
    [[ -d $ZS/moto-site/moto ]] && echo "  moto: ready" || echo "  moto: not yet"
    [[ -x $ZS/bin/zerospot ]] && echo "  zerospot: ready" || echo "  zerospot: not yet"
    nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/  GPU: /' || true
    echo "  tools: $(for t in nvcc cmake ninja xz nvidia-cuda-mps-control; do command -v $t >/dev/null && printf '%s ' $t || printf '(no %s) ' $t; done)"
}

wait_for() { # what file seconds
    local what=$1 file=$2 limit=$3 t=$SECONDS
    while [[ ! -f $file ]]; do
        (( SECONDS - t < limit )) || { status; die "$what not ready after $limit s"; }
        case $what in
        "the CUDA backend") running "$ZS/build.pid" || { cat "$ZS/log/build.log" 2>/dev/null; die "the CUDA build stopped"; } ;;
        "the 7B GGUF") running "$ZS/gguf.pid" || { cat "$ZS/log/gguf.log" 2>/dev/null; die "writing the 7B GGUF stopped"; } ;;
        esac
        sleep 2
    done
    (( SECONDS - t < 3 )) || log "waited $((SECONDS - t)) s for $what"
}

# One throwaway `ollama serve` creates the models in the shared store (no GPU work).
create_models() { # JSON specs...
    local port=11499 pid
    mkdir -p "$MODELS_DIR" "$ZS/home-create"
    HOME=$ZS/home-create OLLAMA_HOST=127.0.0.1:$port OLLAMA_MODELS=$MODELS_DIR setsid "$OLLAMA" serve >"$ZS/log/create.log" 2>&1 </dev/null &
    pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/api/version" >/dev/null 2>&1 && break; sleep 0.2; done
    python3 "$ZS/bin/models.py" --host 127.0.0.1:$port --models-dir "$MODELS_DIR" "$@" || { kill -TERM -"$pid"; tail -n 20 "$ZS/log/create.log"; exit 1; }
    kill -TERM -"$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
}

gemma_spec() { # name [system]
    if [[ -n ${2:-} ]]; then
        python3 -c 'import json,sys; print(json.dumps({"name": sys.argv[1], "gguf": sys.argv[2], "template": sys.argv[3], "stop": ["<end_of_turn>"], "system": sys.argv[4]}))' "$1" "$GEMMA" "$ZS/bin/gemma3.template" "$2"
    else
        python3 -c 'import json,sys; print(json.dumps({"name": sys.argv[1], "gguf": sys.argv[2], "template": sys.argv[3], "stop": ["<end_of_turn>"]}))' "$1" "$GEMMA" "$ZS/bin/gemma3.template"
    fi
}

bench() {
    local which=${1:?bench small|7b}; shift
    wait_for "the CUDA backend" "$ZS/cuda.done" 420
    [[ ${ZS_BRING_LIBS:-0} == 1 ]] && libs
    [[ -x $OLLAMA ]] || die "ollama has not arrived"
    local model
    case $which in
    small)
        [[ -f $GEMMA ]] || die "Gemma 3 270M has not arrived"
        create_models "$(gemma_spec gemma3-270m)"
        model="gemma3-270m:gemma3-270m-q4_k_m:$(python3 -c "import os; print(os.path.getsize('$GEMMA') / 1e9)")"
        ;;
    7b)
        wait_for "the 7B GGUF" "$LLAMA7B" 300
        create_models "{\"name\": \"llama7b-random\", \"gguf\": \"$LLAMA7B\"}"
        model="llama7b-random:llama-7b-shape-random-q8_0:$(python3 -c "import os; print(os.path.getsize('$LLAMA7B') / 1e9)")"
        ;;
    *) die "bench small or bench 7b, not $which" ;;
    esac
    # Start no new group past the call's limit (ZS_CALL_LIMIT_S, default 540 s: a device call may run 600 s).
    local left=$(( ${ZS_CALL_LIMIT_S:-540} - SECONDS ))
    set -o pipefail
    python3 -u "$ZS/bin/bench.py" --ollama "$OLLAMA" --models-dir "$MODELS_DIR" --model "$model" \
        --mps-pipe "$ZS/mps/pipe" --mps-log "$ZS/mps/log" --workdir "$ZS/bench-$which" --deadline-s "$left" \
        --out "$OUT/results-$which.csv" --detail "$OUT/detail-$which.csv" "$@" 2>&1 | tee "$OUT/bench-$which.log"
}

libs() {
    wait_for "the CUDA backend" "$ZS/cuda.done" 420
    [[ -f $ZS/cuda-libs.tar.xz ]] || die "no packed backend (it was unpacked from a carried one?)"
    local size
    size=$(stat -c %s "$ZS/cuda-libs.tar.xz")
    (( size <= 75 * 1024 * 1024 )) || { log "the packed backend is $size bytes: more than 5 parts of 15 MiB, not brought back"; return 0; }
    split -b 15M -d "$ZS/cuda-libs.tar.xz" "$OUT/cuda-libs.tar.xz.part"
    sha256sum "$ZS/cuda-libs.tar.xz" | tee "$OUT/cuda-libs.sha256"
}

converse() {
    [[ -x $ZS/bin/zerospot ]] || die "the zerospot binary has not arrived"
    [[ -d $ZS/moto-site/moto ]] || die "moto has not arrived"
    [[ -f $GEMMA ]] || die "Gemma 3 270M has not arrived"
    wait_for "the CUDA backend" "$ZS/cuda.done" 420
    bash "$HERE/converse.sh" "$ZS" "$OUT" "$@"
}

case ${1:-} in
receive) prepare; status ;;
status) status ;;
bench) shift; prepare >/dev/null; bench "$@" ;;
libs) libs ;;
converse) shift; prepare >/dev/null; converse "$@" ;;
*) die "usage: device.sh receive|status|bench small|7b [ARGS]|libs|converse [ARGS]" ;;
esac
