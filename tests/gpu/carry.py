#!/usr/bin/env python3
"""Carries files larger than one device call allows, in loads, and puts them back together there.

A device call carries at most 64 MiB of the working tree, so `pack` (here) cuts the files into chunks and
fills numbered load folders (`load1`, `load2`, ...), each below --load-mib, in the order given: what the
GPU machine needs first goes first. Every load holds the MANIFEST (name, size, sha256, chunk count).
`receive` (on the GPU machine, after each call) moves the chunks of the loads it finds into a store
folder and, for every file whose chunks are all there, joins them, checks the size and sha256, and
removes the chunks. It prints which files are complete and which wait for chunks.

Usage:
  carry.py pack --out DIR --load-mib 56 FILE...      (here)
  carry.py receive --loads DIR --store DIR           (there; prints 'complete NAME' lines)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
from pathlib import Path

CHUNK_SUFFIX = ".chunk"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def pack(out: Path, load_mib: float, files: list[Path]) -> int:
    capacity = int(load_mib * 1024 * 1024)
    if capacity < 1024 * 1024:
        raise SystemExit("carry: --load-mib must be at least 1")
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise SystemExit(f"carry: two files share a name: {names}")
    for f in files:
        if not f.is_file():
            raise SystemExit(f"carry: {f} is not a file")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    manifest = []
    load, used = 1, 0
    (out / f"load{load}").mkdir()
    for f in files:
        size = f.stat().st_size
        chunks = 0
        with open(f, "rb") as src:
            left = size
            while left > 0 or chunks == 0:
                if used >= capacity:
                    load, used = load + 1, 0
                    (out / f"load{load}").mkdir()
                take = min(left, capacity - used)
                with open(out / f"load{load}" / f"{f.name}.{chunks:03d}{CHUNK_SUFFIX}", "wb") as dst:
                    dst.write(src.read(take))
                used += take
                left -= take
                chunks += 1
        manifest.append(f"{f.name}\t{size}\t{sha256(f)}\t{chunks}\n")
    for i in range(1, load + 1):
        (out / f"load{i}" / "MANIFEST").write_text("".join(manifest))
    for i in range(1, load + 1):
        d = out / f"load{i}"
        mib = sum(p.stat().st_size for p in d.iterdir()) / 1024 / 1024
        parts = sorted(p.name for p in d.iterdir() if p.name != "MANIFEST")
        print(f"load{i}\t{mib:.1f} MiB\t{' '.join(parts)}")
    return 0


def receive(loads: Path, store: Path) -> int:
    store.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, tuple[int, str, int]] = {}
    if (store / "MANIFEST").exists():
        for line in (store / "MANIFEST").read_text().splitlines():
            name, size, digest, chunks = line.split("\t")
            manifest[name] = (int(size), digest, int(chunks))
    for d in sorted(loads.glob("load*")) if loads.is_dir() else []:
        if (d / "MANIFEST").exists():
            for line in (d / "MANIFEST").read_text().splitlines():
                name, size, digest, chunks = line.split("\t")
                manifest[name] = (int(size), digest, int(chunks))
        for chunk in d.glob(f"*{CHUNK_SUFFIX}"):
            shutil.move(str(chunk), store / chunk.name)
    (store / "MANIFEST").write_text(
        "".join(f"{n}\t{s}\t{h}\t{c}\n" for n, (s, h, c) in sorted(manifest.items())))
    for name, (size, digest, chunks) in sorted(manifest.items()):
        target = store / name
        if target.exists() and target.stat().st_size == size:
            print(f"complete {name}")
            continue
        parts = [store / f"{name}.{i:03d}{CHUNK_SUFFIX}" for i in range(chunks)]
        missing = [p.name for p in parts if not p.exists()]
        if missing:
            print(f"waiting {name}: {chunks - len(missing)}/{chunks} chunks")
            continue
        tmp = store / f".{name}.joining"
        with open(tmp, "wb") as out:
            for p in parts:
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
        got, got_size = sha256(tmp), tmp.stat().st_size
        if got_size != size or got != digest:
            tmp.unlink()
            raise SystemExit(f"carry: {name} joined to {got} ({got_size} bytes), expected {digest} ({size})")
        os.replace(tmp, target)
        for p in parts:
            p.unlink()
        print(f"complete {name}")
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack")
    pk.add_argument("--out", type=Path, required=True)
    pk.add_argument("--load-mib", type=float, default=56)
    pk.add_argument("files", type=Path, nargs="+")
    rc = sub.add_parser("receive")
    rc.add_argument("--loads", type=Path, required=True)
    rc.add_argument("--store", type=Path, required=True)
    a = p.parse_args(argv)
    if a.cmd == "pack":
        return pack(a.out, a.load_mib, a.files)
    return receive(a.loads, a.store)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
