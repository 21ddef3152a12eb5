#!/usr/bin/env python3
"""GPU sharing benchmark: N Ollama server processes on one GPU, with CUDA MPS and without (time-slicing).

For each model, each sharing mode and each N in --processes, it starts N `ollama serve` processes (each its
own port and HOME, one shared model store), loads the model in each (all layers on the GPU), warms them up,
and then, for each C in --concurrency, keeps C streaming requests in flight per process for --window-s
seconds (no new request starts after the window; the ones running finish). Under MPS it starts an MPS
control daemon with its own pipe and log folders before the servers and stops it after them; it never
changes the compute mode, clocks or MIG. Only the standard library is used.

What it writes, one row per (model, sharing, N, C):
  --out      the results CSV (header RESULT_HEADER): per-process and aggregate generated tokens/s, time to
             first token p50/p99 over every request, GPU memory used (all processes, MPS server included)
  --detail   the same with more columns (the slowest process, per-request decode speed, request count,
             load time, whether every layer was on the GPU, MPS clients seen)

Definitions. A process's tokens/s = the tokens it generated (Ollama's eval_count, summed over its requests)
/ (time its last request ended - the window's start). tokens_per_s_each = the mean of that over the N
processes, tokens_per_s_total = the sum; with C > 1 a process's figure covers its C streams together.
TTFT = from sending the request to the first non-empty streamed piece (prompt processing included; each
prompt starts with a unique tag, so no prefix cache is reused).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

RESULT_HEADER = [
    "gpu", "driver", "date", "model", "weights_gb", "sharing", "processes", "concurrency",
    "tokens_per_s_each", "tokens_per_s_total", "ttft_p50_ms", "ttft_p99_ms", "gpu_mem_mib",
]
DETAIL_HEADER = RESULT_HEADER + [
    "tokens_per_s_min_process", "decode_tokens_per_s_per_request", "requests", "tokens",
    "window_s", "num_predict", "context_length", "load_s", "all_layers_on_gpu", "mps_clients", "runner",
]
STORY = (
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle, "
    "describing the sea, the weather and every person she meets along the way. Once upon a time,"
)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def gpu_info() -> tuple[str, str]:
    if not shutil.which("nvidia-smi"):
        return "none", "none"
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
        capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()[0]
    name, driver = (x.strip() for x in out.split(",", 1))
    return name, driver


def gpu_mem_mib() -> int:
    if not shutil.which("nvidia-smi"):
        return 0
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    return int(out[0])


# --- MPS ---------------------------------------------------------------------------------------------

class Mps:
    """An MPS control daemon with its own pipe and log folders."""

    def __init__(self, pipe: Path, logs: Path):
        self.pipe, self.logs = pipe, logs

    def env(self) -> dict[str, str]:
        return {"CUDA_MPS_PIPE_DIRECTORY": str(self.pipe), "CUDA_MPS_LOG_DIRECTORY": str(self.logs)}

    def control(self, command: str, timeout: float = 10) -> str:
        r = subprocess.run(
            ["nvidia-cuda-mps-control"], input=command + "\n", capture_output=True, text=True,
            env={**os.environ, **self.env()}, timeout=timeout,
        )
        return (r.stdout + r.stderr).strip()

    def start(self) -> None:
        if not shutil.which("nvidia-cuda-mps-control"):
            raise SystemExit("bench: nvidia-cuda-mps-control is not on PATH (MPS needs the NVIDIA driver's tools)")
        self.pipe.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        subprocess.run(["nvidia-cuda-mps-control", "-d"], env={**os.environ, **self.env()}, check=True)
        time.sleep(0.5)
        log(f"MPS control daemon started (pipe {self.pipe}, log {self.logs})")

    def clients(self) -> int:
        servers = self.control("get_server_list").split()
        return sum(len(self.control(f"get_client_list {pid}").split()) for pid in servers if pid.isdigit())

    def stop(self) -> None:
        self.control("quit")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and processes_named("nvidia-cuda-mps"):
            time.sleep(0.2)
        log("MPS control daemon stopped")


def processes_named(prefix: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip().startswith(prefix):
                    found.append(int(d.name))
            except OSError:
                pass
    return found


# --- Ollama servers ----------------------------------------------------------------------------------

@dataclass
class Server:
    port: int
    proc: subprocess.Popen
    log_path: Path

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 600) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{method} {path} on :{self.port}: HTTP {resp.status}: {data[:300]!r}")
            return json.loads(data) if data else {}
        finally:
            conn.close()

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:  # the runners Ollama started are in the same process group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def start_servers(args, n: int, extra_env: dict[str, str], workdir: Path) -> list[Server]:
    servers = []
    base = {k: v for k, v in os.environ.items() if not k.startswith("CUDA_MPS_")}
    for i in range(n):
        port = args.base_port + i
        home = workdir / f"home{i}"
        home.mkdir(parents=True, exist_ok=True)
        env = {
            **base, **extra_env,
            "HOME": str(home),
            "OLLAMA_HOST": f"127.0.0.1:{port}",
            "OLLAMA_MODELS": str(args.models_dir),
            "OLLAMA_NUM_PARALLEL": str(max(args.concurrency)),
            "OLLAMA_CONTEXT_LENGTH": str(args.context),
            "OLLAMA_KEEP_ALIVE": "-1",
            "OLLAMA_MAX_LOADED_MODELS": "1",
            "OLLAMA_LOAD_TIMEOUT": "10m",
        }
        log_path = workdir / f"serve{i}.log"
        proc = subprocess.Popen(
            [args.ollama, "serve"], env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        servers.append(Server(port, proc, log_path))
    deadline = time.monotonic() + 90
    for s in servers:
        while True:
            if s.proc.poll() is not None:
                raise RuntimeError(f"ollama serve on :{s.port} exited: {s.log_path.read_text()[-2000:]}")
            try:
                s.request("GET", "/api/version", timeout=2)
                break
            except (OSError, RuntimeError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ollama serve on :{s.port} did not answer in 90 s")
                time.sleep(0.2)
    return servers


def in_parallel(fns) -> list:
    results: list = [None] * len(fns)
    errors: list = []

    def run(i, fn):
        try:
            results[i] = fn()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# --- one measurement ---------------------------------------------------------------------------------

@dataclass
class Done:
    server: int
    start: float
    first: float | None
    end: float
    eval_count: int
    eval_duration_ns: int


def stream_once(port: int, model: str, num_predict: int) -> tuple[float, float | None, float, dict]:
    body = {
        "model": model,
        "prompt": f"[{uuid.uuid4().hex[:12]}] {STORY}",
        "raw": True,
        "stream": True,
        "keep_alive": -1,
        "options": {"num_predict": num_predict},
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.monotonic()
    first = None
    final: dict = {}
    try:
        conn.request("POST", "/api/generate", body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"generate on :{port}: HTTP {resp.status}: {resp.read()[:300]!r}")
        while True:
            line = resp.readline()
            if not line:
                break
            piece = json.loads(line)
            if "error" in piece:
                raise RuntimeError(f"generate on :{port}: {piece['error']}")
            if first is None and piece.get("response"):
                first = time.monotonic()
            if piece.get("done"):
                final = piece
                break
    finally:
        conn.close()
    return start, first, time.monotonic(), final


def measure(servers: list[Server], model: str, concurrency: int, window_s: float, num_predict: int) -> list[Done]:
    done: list[Done] = []
    lock = threading.Lock()
    t0_box: list[float] = []
    # The window starts when every stream is ready (the barrier's action runs before any is released).
    barrier = threading.Barrier(len(servers) * concurrency, action=lambda: t0_box.append(time.monotonic()))
    errors: list[Exception] = []

    def worker(i: int, port: int):
        try:
            barrier.wait()
            t0 = t0_box[0]
            while time.monotonic() < t0 + window_s:
                start, first, end, final = stream_once(port, model, num_predict)
                with lock:
                    done.append(Done(i, start, first, end, int(final.get("eval_count", 0)),
                                     int(final.get("eval_duration", 0))))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i, s.port)) for i, s in enumerate(servers)
               for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    done.sort(key=lambda d: d.start)
    for d in done:
        d.start -= t0_box[0]
        d.end -= t0_box[0]
        if d.first is not None:
            d.first -= t0_box[0]
    return done


# --- the sweep ---------------------------------------------------------------------------------------

@dataclass
class Model:
    name: str
    label: str
    weights_gb: float


@dataclass
class Writer:
    out: Path
    detail: Path | None
    rows: int = 0
    files: list = field(default_factory=list)

    def open(self) -> None:
        for path, header in ((self.out, RESULT_HEADER), (self.detail, DETAIL_HEADER)):
            if path is None:
                continue
            new = not path.exists() or path.stat().st_size == 0
            f = open(path, "a", newline="")
            w = csv.writer(f, lineterminator="\n")
            if new:
                w.writerow(header)
            self.files.append((f, w, header))

    def write(self, row: dict) -> None:
        for f, w, header in self.files:
            w.writerow([row[h] for h in header])
            f.flush()
        self.rows += 1


def runner_kind(server: Server) -> str:
    """Which engine runs the model: Ollama's Go engine or its llama.cpp runner (from `starting runner`)."""
    for line in server.log_path.read_text(errors="replace").splitlines():
        if "starting runner" in line and "--model" in line:
            return "ollama-engine" if "--ollama-engine" in line else "llama.cpp"
    return "unknown"


def sweep(args) -> int:
    gpu, driver = gpu_info()
    today = dt.date.today().isoformat()
    models = []
    for spec in args.model:
        parts = spec.split(":")
        if len(parts) != 3:
            raise SystemExit(f"bench: --model {spec!r}: write OLLAMA_NAME:LABEL:WEIGHTS_GB")
        models.append(Model(parts[0], parts[1], float(parts[2])))
    writer = Writer(Path(args.out), Path(args.detail) if args.detail else None)
    writer.open()
    mps = Mps(Path(args.mps_pipe), Path(args.mps_log))
    started = time.monotonic()
    workdir = Path(args.workdir)
    log(f"{gpu}, driver {driver}; models {[m.label for m in models]}; processes {args.processes}; "
        f"sharing {args.sharing}; concurrency {args.concurrency}; window {args.window_s} s")
    for model in models:
        for n in args.processes:
            for sharing in args.sharing:
                left = args.deadline_s - (time.monotonic() - started)
                if left < args.reserve_s:
                    log(f"SKIPPED {model.label} {sharing} N={n}: {left:.0f} s left of --deadline-s")
                    continue
                point_dir = workdir / f"{model.label}-{sharing}-{n}"
                shutil.rmtree(point_dir, ignore_errors=True)
                point_dir.mkdir(parents=True)
                servers: list[Server] = []
                use_mps = sharing == "mps"
                try:
                    if use_mps:
                        mps.start()
                    servers = start_servers(args, n, mps.env() if use_mps else {}, point_dir)
                    t = time.monotonic()
                    in_parallel([lambda s=s: s.request("POST", "/api/generate",
                                                       {"model": model.name, "keep_alive": -1}) for s in servers])
                    load_s = time.monotonic() - t
                    on_gpu = all(
                        all(m.get("size_vram", 0) >= m.get("size", 1) for m in s.request("GET", "/api/ps")["models"])
                        for s in servers)
                    # Warm-up: the first generations build CUDA graphs and buffers.
                    in_parallel([lambda s=s: stream_once(s.port, model.name, 16) for s in servers
                                 for _ in range(max(args.concurrency))])
                    clients = mps.clients() if use_mps else 0
                    log(f"{model.label} {sharing} N={n}: loaded in {load_s:.1f} s, all layers on GPU: {on_gpu}"
                        + (f", MPS clients {clients}" if use_mps else ""))
                    for c in args.concurrency:
                        done = measure(servers, model.name, c, args.window_s, args.num_predict)
                        mem = gpu_mem_mib()
                        per_proc = []
                        for i in range(n):
                            mine = [d for d in done if d.server == i]
                            tokens = sum(d.eval_count for d in mine)
                            span = max((d.end for d in mine), default=0.0)
                            per_proc.append(tokens / span if span > 0 else 0.0)
                        ttfts = [(d.first - d.start) * 1000 for d in done if d.first is not None]
                        decode = [d.eval_count / (d.eval_duration_ns / 1e9) for d in done if d.eval_duration_ns > 0]
                        row = {
                            "gpu": gpu, "driver": driver, "date": today, "model": model.label,
                            "weights_gb": f"{model.weights_gb:.2f}", "sharing": sharing, "processes": n,
                            "concurrency": c,
                            "tokens_per_s_each": f"{sum(per_proc) / n:.1f}",
                            "tokens_per_s_total": f"{sum(per_proc):.1f}",
                            "ttft_p50_ms": f"{percentile(ttfts, 0.5):.1f}",
                            "ttft_p99_ms": f"{percentile(ttfts, 0.99):.1f}",
                            "gpu_mem_mib": mem,
                            "tokens_per_s_min_process": f"{min(per_proc):.1f}",
                            "decode_tokens_per_s_per_request": f"{sum(decode) / max(len(decode), 1):.1f}",
                            "requests": len(done), "tokens": sum(d.eval_count for d in done),
                            "window_s": args.window_s, "num_predict": args.num_predict,
                            "context_length": args.context, "load_s": f"{load_s:.1f}",
                            "all_layers_on_gpu": on_gpu, "mps_clients": clients,
                            "runner": runner_kind(servers[0]),
                        }
                        writer.write(row)
                        log(f"  C={c}: each {row['tokens_per_s_each']} tok/s (slowest "
                            f"{row['tokens_per_s_min_process']}), total {row['tokens_per_s_total']} tok/s, TTFT "
                            f"p50 {row['ttft_p50_ms']} ms p99 {row['ttft_p99_ms']} ms, {len(done)} requests, "
                            f"GPU memory {mem} MiB")
                except Exception as e:  # noqa: BLE001 - one failed point must not lose the others
                    log(f"FAILED {model.label} {sharing} N={n}: {e}")
                    for s in servers:
                        tail = s.log_path.read_text(errors="replace")[-1500:]
                        log(f"  serve :{s.port} log tail:\n{tail}")
                finally:
                    for s in servers:
                        s.stop()
                    if use_mps:
                        mps.stop()
    log(f"wrote {writer.rows} rows to {args.out} in {time.monotonic() - started:.0f} s")
    return 0 if writer.rows else 1


def ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of whole numbers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be at least 1")
    return values


def sharings(text: str) -> list[str]:
    values = text.split(",")
    for v in values:
        if v not in ("mps", "time-slicing"):
            raise argparse.ArgumentTypeError(f"{v!r}: sharing is mps or time-slicing")
    return values


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ollama", required=True, help="the ollama binary (its ../lib/ollama holds the GPU backend)")
    p.add_argument("--models-dir", required=True, help="OLLAMA_MODELS holding the models (already created)")
    p.add_argument("--model", action="append", required=True, help="OLLAMA_NAME:LABEL:WEIGHTS_GB (repeatable)")
    p.add_argument("--processes", type=ints, default=[1, 2, 4, 8])
    p.add_argument("--sharing", type=sharings, default=["time-slicing", "mps"])
    p.add_argument("--concurrency", type=ints, default=[1, 4])
    p.add_argument("--window-s", type=float, default=8.0)
    p.add_argument("--num-predict", type=int, default=128)
    p.add_argument("--context", type=int, default=2048, help="OLLAMA_CONTEXT_LENGTH (per request slot)")
    p.add_argument("--base-port", type=int, default=11500)
    p.add_argument("--mps-pipe", default="/tmp/zerospot-mps/pipe")
    p.add_argument("--mps-log", default="/tmp/zerospot-mps/log")
    p.add_argument("--workdir", default="/tmp/zerospot-bench")
    p.add_argument("--out", required=True)
    p.add_argument("--detail")
    p.add_argument("--deadline-s", type=float, default=1e9, help="start no new group after this long")
    p.add_argument("--reserve-s", type=float, default=60, help="time a group needs at least")
    args = p.parse_args(argv)
    if not os.access(args.ollama, os.X_OK):
        p.error(f"--ollama {args.ollama}: not an executable")
    return sweep(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
