#!/usr/bin/env python3
"""Creates Ollama models over local GGUF files without copying them: what `ollama create NAME -f Modelfile`
does for `FROM ./file.gguf` (+ TEMPLATE, SYSTEM, PARAMETER lines), minus the upload.

The GGUF is hard-linked into the model store's blobs under its sha256 (so a 7 GB file is neither copied nor
sent over HTTP), then `POST /api/create` names it by digest, as the CLI does once the blob is there. The
server at --host must use --models-dir as its OLLAMA_MODELS.

Usage: models.py --host 127.0.0.1:11499 --models-dir DIR SPEC...
  SPEC: {"name": "sailor", "gguf": "PATH", "template": "FILE", "system": "TEXT", "stop": ["<end_of_turn>"]}
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import sys
from pathlib import Path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def create(host: str, models_dir: Path, spec: str) -> None:
    try:
        m = json.loads(spec)
        name, path = m["name"], Path(m["gguf"])
    except (ValueError, KeyError, TypeError):
        raise SystemExit(f"models: {spec!r}: write a JSON object with name and gguf (and template, system, stop)")
    if not path.is_file():
        raise SystemExit(f"models: {path}: no such file")
    body: dict = {"model": name, "stream": False}
    if "template" in m:
        body["template"] = Path(m["template"]).read_text()
    if "system" in m:
        body["system"] = m["system"]
    if "stop" in m:
        body["parameters"] = {"stop": m["stop"]}
    digest = sha256(path)
    blobs = models_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    blob = blobs / f"sha256-{digest}"
    if not blob.exists():
        try:
            os.link(path, blob)
        except OSError:
            os.symlink(path.resolve(), blob)
    body["files"] = {path.name: f"sha256:{digest}"}
    h, _, p = host.partition(":")
    conn = http.client.HTTPConnection(h, int(p or 11434), timeout=600)
    conn.request("POST", "/api/create", body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read().decode(errors="replace")
    if resp.status != 200 or '"success"' not in data:
        raise SystemExit(f"models: creating {name}: HTTP {resp.status}: {data[:500]}")
    print(f"models: created {name} over {path.name} (sha256 {digest[:12]}...)", flush=True)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", required=True)
    p.add_argument("--models-dir", type=Path, required=True)
    p.add_argument("specs", nargs="+")
    a = p.parse_args(argv)
    for spec in a.specs:
        create(a.host, a.models_dir, spec)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
