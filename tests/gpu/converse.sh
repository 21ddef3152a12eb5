#!/usr/bin/env bash
# On the GPU machine, called by device.sh: the converse demo. Two model names over the real Gemma 3 270M
# (different SYSTEM prompts), one `ollama serve` each, both clients of one CUDA MPS control daemon; SQS from
# moto; `zerospot dispatcher --no-cluster` sending each model's requests to its server's fixed endpoint;
# `zerospot converse --turns 10` (ZS_TURNS, ZS_CONVERSE_OPTIONS change the turns and the model options).
# Writes into OUT: converse-transcript.txt (stdout of converse),
# converse-timings.txt (its stderr: per-turn queued / first token / total), converse-phases.txt (how long
# each step of the set-up took, the GPU and MPS state while they talked), dispatcher.log.
#
#   converse.sh ZS OUT [converse ARGS...]
set -euo pipefail

ZS=${1:?usage: converse.sh ZS OUT [ARGS]}
OUT=${2:?usage: converse.sh ZS OUT [ARGS]}
shift 2
OLLAMA=$ZS/ollama/bin/ollama
ZEROSPOT=$ZS/bin/zerospot
MODELS_DIR=$ZS/ollama-models
GEMMA=$ZS/models-src/gemma3-270m-q4_k_m.gguf
RUN=$ZS/converse
MODELS=(sailor teacher)
PORTS=(11600 11601)
SYSTEMS=(
    "You are Sailor, an old sea captain who loves stories about the ocean. Answer in two or three sentences."
    "You are Teacher, a patient physics teacher who explains things simply. Answer in two or three sentences."
)
TURNS=${ZS_TURNS:-10}
OPTIONS=${ZS_CONVERSE_OPTIONS:-'{"num_predict":96,"temperature":0.7,"seed":42}'}
MOTO_PORT=11700
DISPATCHER_LISTEN=127.0.0.1:11791
PHASES=$OUT/converse-phases.txt
export AWS_ENDPOINT_URL=http://127.0.0.1:$MOTO_PORT AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
export CUDA_MPS_PIPE_DIRECTORY=$ZS/mps/converse-pipe CUDA_MPS_LOG_DIRECTORY=$ZS/mps/converse-log

log() { printf '[converse %(%H:%M:%S)T] %s\n' -1 "$*"; }
now() { date +%s.%N; }
phase() { # name start
    local s
    s=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$2" "$(now)")
    printf '%-44s %8s s\n' "$1" "$s" | tee -a "$PHASES"
}
get() { python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2).read()' "$1" >/dev/null 2>&1; }
wait_http() { # url seconds what
    local t=$SECONDS
    until get "$1"; do
        (( SECONDS - t < $2 )) || { log "ERROR: $3 did not answer at $1 within $2 s"; return 1; }
        sleep 0.1
    done
}

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM -"$pid" 2>/dev/null || true; done
    sleep 2
    for pid in "${PIDS[@]}"; do kill -KILL -"$pid" 2>/dev/null || true; done
    echo quit | nvidia-cuda-mps-control 2>/dev/null || true
}
trap cleanup EXIT

rm -rf "$RUN"; mkdir -p "$RUN" "$OUT" "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
{
    echo "converse demo on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader), $(date -u +%FT%TZ)"
    echo "ollama $("$OLLAMA" --version 2>&1 | tail -n 1 | awk '{print $NF}'), $("$ZEROSPOT" --version)"
    echo
} >"$PHASES"

# 1. The two model names, in the shared store.
t=$(now)
specs=()
for i in 0 1; do
    specs+=("$(python3 -c 'import json,sys; print(json.dumps({"name": sys.argv[1], "gguf": sys.argv[2], "template": sys.argv[3], "stop": ["<end_of_turn>"], "system": sys.argv[4]}))' \
        "${MODELS[$i]}" "$GEMMA" "$ZS/bin/gemma3.template" "${SYSTEMS[$i]}")")
done
mkdir -p "$MODELS_DIR" "$RUN/home-create"
HOME=$RUN/home-create OLLAMA_HOST=127.0.0.1:11599 OLLAMA_MODELS=$MODELS_DIR setsid "$OLLAMA" serve >"$RUN/create.log" 2>&1 </dev/null &
PIDS+=($!)
wait_http http://127.0.0.1:11599/api/version 30 "ollama (create)"
python3 "$ZS/bin/models.py" --host 127.0.0.1:11599 --models-dir "$MODELS_DIR" "${specs[@]}"
kill -TERM -"${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true; PIDS=()
phase "create the two model names" "$t"

# 2. One MPS control daemon (own pipe and log folders; compute mode, clocks and MIG left alone).
t=$(now)
nvidia-cuda-mps-control -d
phase "start the MPS control daemon" "$t"

# 3. One ollama process per model name, both MPS clients; load each model on the GPU.
t=$(now)
for i in 0 1; do
    mkdir -p "$RUN/home$i"
    HOME=$RUN/home$i OLLAMA_HOST=127.0.0.1:${PORTS[$i]} OLLAMA_MODELS=$MODELS_DIR OLLAMA_NUM_PARALLEL=2 \
        OLLAMA_CONTEXT_LENGTH=4096 OLLAMA_KEEP_ALIVE=-1 OLLAMA_MAX_LOADED_MODELS=1 \
        setsid "$OLLAMA" serve >"$RUN/serve-${MODELS[$i]}.log" 2>&1 </dev/null &
    PIDS+=($!)
done
for i in 0 1; do wait_http "http://127.0.0.1:${PORTS[$i]}/api/version" 60 "ollama ${MODELS[$i]}"; done
phase "start two ollama servers" "$t"
t=$(now)
loads=()
for i in 0 1; do
    python3 -c 'import json, sys, urllib.request
r = urllib.request.Request(sys.argv[1], data=json.dumps({"model": sys.argv[2], "keep_alive": -1}).encode(), headers={"Content-Type": "application/json"})
urllib.request.urlopen(r, timeout=300).read()' "http://127.0.0.1:${PORTS[$i]}/api/generate" "${MODELS[$i]}" &
    loads+=($!)
done
for pid in "${loads[@]}"; do wait "$pid" || { log "ERROR: loading a model failed"; tail -n 20 "$RUN"/serve-*.log; exit 1; }; done
phase "load both models onto the GPU" "$t"

# 4. SQS from moto: a request queue per model, the reply queue, a dead-letter queue.
t=$(now)
PYTHONPATH=$ZS/moto-site setsid python3 -m moto.server -H 127.0.0.1 -p $MOTO_PORT >"$RUN/moto.log" 2>&1 </dev/null &
PIDS+=($!)
wait_http "http://127.0.0.1:$MOTO_PORT/moto-api/" 60 "moto"
phase "start moto (SQS)" "$t"
eval "$(PYTHONPATH=$ZS/moto-site python3 - <<'EOF'
import boto3
sqs = boto3.client("sqs")
for name in ("sailor-requests", "teacher-requests", "replies", "dead-letters"):
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    print(f"Q_{name.replace('-', '_').upper()}='{url}'")
EOF
)"

# 5. The dispatcher without Kubernetes: each model's endpoint is its ollama process, 2 slots each.
cat >"$RUN/zerospot.yaml" <<EOF
pools:
  - {name: h200, asg_name: single-gpu-box, sharing: {mode: mps, replicas: 2}}
models:
  - {name: sailor, pool: h200, namespace: local, service: sailor, queue_url: "$Q_SAILOR_REQUESTS", endpoint: "http://127.0.0.1:${PORTS[0]}", concurrency: 2}
  - {name: teacher, pool: h200, namespace: local, service: teacher, queue_url: "$Q_TEACHER_REQUESTS", endpoint: "http://127.0.0.1:${PORTS[1]}", concurrency: 2}
dispatcher:
  reply_queues: ["$Q_REPLIES"]
  dead_letter_queue: "$Q_DEAD_LETTERS"
EOF
"$ZEROSPOT" config check "$RUN/zerospot.yaml" >"$RUN/config-effective.yaml" \
    || { log "ERROR: the configuration is refused"; cat "$RUN/zerospot.yaml"; exit 1; }
t=$(now)
setsid "$ZEROSPOT" dispatcher --no-cluster --config "$RUN/zerospot.yaml" --listen "$DISPATCHER_LISTEN" \
    --log-format text >"$OUT/dispatcher.log" 2>&1 </dev/null &
PIDS+=($!)
wait_http "http://$DISPATCHER_LISTEN/healthz" 30 "the dispatcher"
phase "start zerospot dispatcher --no-cluster" "$t"

# 6. The conversation.
t=$(now)
"$ZEROSPOT" converse --config "$RUN/zerospot.yaml" --reply-queue "$Q_REPLIES" --models sailor,teacher \
    --turns "$TURNS" --topic "why the sea is blue" --options "$OPTIONS" \
    --deadline-s 120 "$@" >"$OUT/converse-transcript.txt" 2>"$OUT/converse-timings.txt" \
    || { log "ERROR: converse failed"; cat "$OUT/converse-timings.txt"; tail -n 40 "$OUT/dispatcher.log"; exit 1; }
phase "zerospot converse, $TURNS turns" "$t"

{
    echo
    echo "GPU while both servers were loaded (nvidia-smi):"
    nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,utilization.gpu --format=csv
    nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
    echo
    echo "MPS servers and their clients:"
    for s in $(echo get_server_list | nvidia-cuda-mps-control); do
        echo "server $s: clients $(echo "get_client_list $s" | nvidia-cuda-mps-control | tr '\n' ' ')"
    done
    echo
    echo "dispatcher metrics (zerospot_*):"
    python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
        "http://$DISPATCHER_LISTEN/metrics" | grep '^zerospot_' | grep -v '_bucket{' | head -n 40 || true
} >>"$PHASES" 2>&1
sed -i 's/\x1b\[[0-9;]*m//g' "$OUT/dispatcher.log" # the text log's colours
cat "$PHASES"
echo "--- transcript"
cat "$OUT/converse-transcript.txt"
echo "--- timings"
cat "$OUT/converse-timings.txt"
