#!/usr/bin/env bash
# On the GPU machine: gives the CPU-built Ollama its CUDA backend, in ZS/ollama/lib/ollama (next to
# ZS/ollama/bin/ollama, where Ollama looks: ../lib/ollama/libggml-base.so and ../lib/ollama/<dir>/libggml-cuda.so).
#
#   build-cuda.sh ZS build   builds libggml-cuda.so from Ollama's own ggml sources (ZS/in/ggml-src.tar.gz:
#                            the module's CMakeLists.txt, CMakePresets.json, ml/backend/ggml/ggml) for the
#                            H200 only (sm_90), only the ggml-cuda target (not the CPU variants the Go binary
#                            already has); then packs libggml-base + libggml-cuda into ZS/cuda-libs.tar.xz so a
#                            later call can carry them instead of building (3 min with 16 cores).
#   build-cuda.sh ZS reuse   unpacks ZS/in/cuda-libs.tar.xz (carried back from an earlier build) instead.
# Either way the CUDA runtime and cuBLAS libraries the backend links are copied from the machine's own CUDA
# toolkit. Writes ZS/cuda.done when the backend is in place; the log goes to standard output.
set -euo pipefail

zs=${1:?usage: build-cuda.sh ZS build|reuse}
mode=${2:?usage: build-cuda.sh ZS build|reuse}
dest=$zs/ollama/lib/ollama
runner_dir=cuda_v13
log() { printf '[build-cuda %(%H:%M:%S)T] %s\n' -1 "$*"; }
start=$SECONDS

nvcc=$(command -v nvcc || true)
[[ -n $nvcc ]] || nvcc=/usr/local/cuda/bin/nvcc
[[ -x $nvcc ]] || { log "ERROR: no nvcc on PATH or in /usr/local/cuda/bin"; exit 1; }
cuda_root=$(cd "$(dirname "$nvcc")/.." && pwd)
log "nvcc: $("$nvcc" --version | tail -n 2 | head -n 1) ($nvcc)"

# The CUDA runtime libraries libggml-cuda.so needs (cudart, cublas, cublasLt), from the toolkit.
copy_cuda_runtime() {
    local lib found
    for lib in libcudart.so libcublas.so libcublasLt.so; do
        compgen -G "$dest/$runner_dir/$lib.[0-9]*" >/dev/null && continue # the install copied it
        found=$(find "$cuda_root/lib64/" "$cuda_root/targets/x86_64-linux/lib/" -maxdepth 1 -name "$lib.[0-9]*" \
            -not -name '*.*.*.*' 2>/dev/null | sort | head -n 1)
        [[ -n $found ]] || { log "ERROR: $lib.N not found under $cuda_root"; exit 1; }
        cp -L "$found" "$dest/$runner_dir/"
    done
}

mkdir -p "$dest/$runner_dir"
case $mode in
build)
    src=$zs/src build=$zs/build
    rm -rf "$src" "$build"
    mkdir -p "$src"
    tar -xzf "$zs/in/ggml-src.tar.gz" -C "$src"
    generator=(-G Ninja)
    command -v ninja >/dev/null || generator=(-G "Unix Makefiles")
    log "configuring (${generator[*]}, sm_90, runner dir $runner_dir)"
    cmake -S "$src" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_DISABLE_FIND_PACKAGE_Vulkan=ON -DOLLAMA_RUNNER_DIR=$runner_dir \
        -DCMAKE_INSTALL_PREFIX="$zs/ollama" >"$zs/cmake-configure.log" 2>&1 \
        || { tail -n 40 "$zs/cmake-configure.log"; exit 1; }
    log "configured in $((SECONDS - start)) s; building ggml-cuda with $(nproc) jobs"
    t=$SECONDS
    cmake --build "$build" --target ggml-cuda -j "$(nproc)" >"$zs/cmake-build.log" 2>&1 \
        || { tail -n 60 "$zs/cmake-build.log"; exit 1; }
    log "built in $((SECONDS - t)) s"
    # The install copies libggml-cuda.so (and the CUDA libraries it links) into lib/ollama/cuda_v13.
    cmake --install "$build" --component CUDA --strip >>"$zs/cmake-build.log" 2>&1
    cp -a "$build"/lib/ollama/libggml-base.so* "$dest/"
    strip --strip-unneeded "$dest"/libggml-base.so.*.* 2>/dev/null || true
    [[ -f $dest/$runner_dir/libggml-cuda.so ]] || { log "ERROR: no libggml-cuda.so after the install"; exit 1; }
    copy_cuda_runtime
    t=$SECONDS
    (cd "$dest" && tar -cf - libggml-base.so* "$runner_dir/libggml-cuda.so") | xz -T0 -6 >"$zs/cuda-libs.tar.xz.tmp"
    mv "$zs/cuda-libs.tar.xz.tmp" "$zs/cuda-libs.tar.xz"
    log "packed the backend for later calls in $((SECONDS - t)) s: $(du -h "$zs/cuda-libs.tar.xz" | cut -f1)"
    ;;
reuse)
    tar -xJf "$zs/in/cuda-libs.tar.xz" -C "$dest"
    copy_cuda_runtime
    ;;
*)
    log "ERROR: mode is build or reuse, not $mode"; exit 2 ;;
esac
ls -l "$dest" "$dest/$runner_dir"
date -u +%FT%TZ >"$zs/cuda.done"
log "CUDA backend ready in $((SECONDS - start)) s"
