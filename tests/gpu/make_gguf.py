#!/usr/bin/env python3
"""Writes a llama-architecture GGUF with random weights, of any shape, with PyPI `gguf`.

The weights are noise (the text it writes is gibberish); the shape, the tensor types and the file size are
those of a real model, so loading, memory and decode speed are a real model's. Used on the GPU machine to
make a 7B-shaped model (32 layers x 4096, Llama 2 7B's shape) in seconds instead of carrying 7 GB.

Q8_0 weights are written as raw blocks (a float16 scale and 32 int8 values per block): random int8 values
with one fixed scale, so no quantisation pass is needed. Tensors of one shape share one random array (the
numbers do not matter for speed), which keeps memory and time small. The tokenizer is a synthetic
SentencePiece-style vocabulary (<unk>, <s>, </s>, the 256 byte tokens, then made-up pieces), enough for
llama.cpp's tokenizer and Ollama to run the model.

Usage: make_gguf.py OUT.gguf [--layers 32] [--hidden 4096] [--ffn 11008] [--heads 32] [--kv-heads 32]
                    [--vocab 32000] [--context 4096] [--type q8_0|f16] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import os
import string
import sys
import time

import numpy as np

import gguf
from gguf import GGMLQuantizationType, LlamaFileType, TokenType

Q8_BLOCK = 32  # values per Q8_0 block
Q8_BYTES = 34  # a float16 scale + 32 int8 values
WEIGHT_STD = 0.02  # the spread of the weights, as a trained model's init


def vocabulary(size: int) -> tuple[list[str], list[float], list[int]]:
    """<unk>, <s>, </s>, the 256 byte tokens, then distinct made-up pieces up to `size`."""
    if size < 259 + 26:
        raise ValueError(f"--vocab {size}: at least {259 + 26} tokens (3 special, 256 bytes, some pieces)")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    letters = string.ascii_lowercase
    pieces = itertools.chain(
        ("\u2581" + c for c in letters),
        letters,
        ("\u2581" + "".join(p) for n in itertools.count(2) for p in itertools.product(letters, repeat=n)),
    )
    for piece in pieces:
        if len(tokens) >= size:
            break
        tokens.append(piece)
        types.append(TokenType.NORMAL)
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i) for i in range(size - 259)]
    return tokens, scores, [int(t) for t in types]


def q8_0(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Raw Q8_0 blocks for a rows x cols matrix (numpy shape rows x cols/32*34, uint8)."""
    if cols % Q8_BLOCK:
        raise ValueError(f"a Q8_0 row must be a multiple of {Q8_BLOCK} values, not {cols}")
    blocks = cols // Q8_BLOCK
    raw = rng.integers(0, 256, size=(rows, blocks, Q8_BYTES), dtype=np.uint8)
    # Uniform int8 in [-128, 127] has a standard deviation of about 74: scale to WEIGHT_STD.
    scale = np.frombuffer(np.float16(WEIGHT_STD / 74.0).tobytes(), dtype=np.uint8)
    raw[:, :, 0] = scale[0]
    raw[:, :, 1] = scale[1]
    return raw.reshape(rows, blocks * Q8_BYTES)


def f16(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    return (rng.standard_normal((rows, cols), dtype=np.float32) * WEIGHT_STD).astype(np.float16)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--ffn", type=int, default=11008)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=32)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--type", choices=["q8_0", "f16"], default="q8_0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None)
    a = p.parse_args(argv)
    for flag in ("layers", "hidden", "ffn", "heads", "kv_heads", "vocab", "context"):
        if getattr(a, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    if a.hidden % a.heads or a.heads % a.kv_heads:
        p.error(f"--hidden {a.hidden} must divide by --heads {a.heads}, and --heads by --kv-heads {a.kv_heads}")
    head_dim = a.hidden // a.heads
    kv_dim = head_dim * a.kv_heads
    started = time.monotonic()
    rng = np.random.default_rng(a.seed)
    make = q8_0 if a.type == "q8_0" else f16
    raw_dtype = GGMLQuantizationType.Q8_0 if a.type == "q8_0" else None
    name = a.name or f"random-llama-{a.layers}x{a.hidden}-{a.type}"

    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name(name)
    w.add_file_type(LlamaFileType.MOSTLY_Q8_0 if a.type == "q8_0" else LlamaFileType.MOSTLY_F16)
    w.add_context_length(a.context)
    w.add_embedding_length(a.hidden)
    w.add_block_count(a.layers)
    w.add_feed_forward_length(a.ffn)
    w.add_head_count(a.heads)
    w.add_head_count_kv(a.kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(a.vocab)
    tokens, scores, types = vocabulary(a.vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)

    shared: dict[tuple[int, int], np.ndarray] = {}

    def matrix(rows: int, cols: int) -> np.ndarray:
        if (rows, cols) not in shared:
            shared[(rows, cols)] = make(rng, rows, cols)
        return shared[(rows, cols)]

    ones = np.ones(a.hidden, dtype=np.float32)
    # numpy shapes are (rows = output features, cols = input features), as GGUF converters write them.
    w.add_tensor("token_embd.weight", matrix(a.vocab, a.hidden), raw_dtype=raw_dtype)
    for i in range(a.layers):
        b = f"blk.{i}"
        w.add_tensor(f"{b}.attn_norm.weight", ones)
        w.add_tensor(f"{b}.attn_q.weight", matrix(a.hidden, a.hidden), raw_dtype=raw_dtype)
        w.add_tensor(f"{b}.attn_k.weight", matrix(kv_dim, a.hidden), raw_dtype=raw_dtype)
        w.add_tensor(f"{b}.attn_v.weight", matrix(kv_dim, a.hidden), raw_dtype=raw_dtype)
        w.add_tensor(f"{b}.attn_output.weight", matrix(a.hidden, a.hidden), raw_dtype=raw_dtype)
        w.add_tensor(f"{b}.ffn_norm.weight", ones)
        w.add_tensor(f"{b}.ffn_gate.weight", matrix(a.ffn, a.hidden), raw_dtype=raw_dtype)
        w.add_tensor(f"{b}.ffn_up.weight", matrix(a.ffn, a.hidden), raw_dtype=raw_dtype)
        w.add_tensor(f"{b}.ffn_down.weight", matrix(a.hidden, a.ffn), raw_dtype=raw_dtype)
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", matrix(a.vocab, a.hidden), raw_dtype=raw_dtype)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    params = a.vocab * a.hidden * 2 + a.layers * (2 * a.hidden * a.hidden + 2 * kv_dim * a.hidden + 3 * a.ffn * a.hidden)
    size = os.path.getsize(a.out)
    print(
        f"make_gguf: wrote {a.out}: {name}, {params / 1e9:.2f}B parameters, {size / 1e9:.2f} GB, "
        f"in {time.monotonic() - started:.1f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
