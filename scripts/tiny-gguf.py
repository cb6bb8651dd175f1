#!/usr/bin/env python3
"""Writes a tiny llama-architecture GGUF model with random weights and a small vocabulary.

Used by `scripts/real-ollama seed` to give a real Ollama something to load on the CPU without
downloading weights. The output is nonsense text at thousands of tokens per second; what matters
is that Ollama's scheduler, runner processes, keep_alive, eviction and reload rules are the real
ones. Two sizes (tiny-a, tiny-b) differ in width and depth so that /api/ps shows two sizes.

Usage: tiny-gguf.py OUT.gguf [--embd N] [--layers N] [--ctx N] [--seed N]
Needs PyPI's `gguf` (which brings numpy); scripts/real-ollama installs it.
"""
import argparse
import sys

try:
    import numpy as np
    import gguf
except ImportError as e:  # one clear line, not a traceback
    sys.exit(f"error: {e}; install it with: python3 -m pip install gguf==0.19.0")


def vocab():
    """A SentencePiece-style vocabulary: control tokens, the 256 byte tokens (so any text
    tokenizes), then a few word pieces. llama.cpp's SPM tokenizer needs the byte tokens."""
    tokens, scores, types = [], [], []

    def add(t, score, kind):
        tokens.append(t.encode("utf-8"))
        scores.append(score)
        types.append(kind)

    add("<unk>", 0.0, gguf.TokenType.UNKNOWN)
    add("<s>", 0.0, gguf.TokenType.CONTROL)
    add("</s>", 0.0, gguf.TokenType.CONTROL)
    for b in range(256):
        add(f"<0x{b:02X}>", 0.0, gguf.TokenType.BYTE)
    pieces = ["\u2581"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += ["\u2581" + w for w in ("the", "a", "is", "hello", "world", "model", "warm", "jetson", "orin")]
    for i, p in enumerate(pieces):
        add(p, -float(i + 1), gguf.TokenType.NORMAL)
    return tokens, scores, types


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--embd", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.embd % 8 or not (8 <= a.embd <= 4096) or not (1 <= a.layers <= 64):
        sys.exit("error: --embd must be a multiple of 8 from 8 to 4096, --layers 1 to 64")

    rng = np.random.default_rng(a.seed)
    tokens, scores, types = vocab()
    n_vocab, n_embd, n_ff, n_head = len(tokens), a.embd, a.embd * 2, 4

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name(f"tiny-{n_embd}x{a.layers}")
    w.add_context_length(a.ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(a.layers)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)

    # numpy shapes are ggml's ne reversed: token_embd is ne=[n_embd, n_vocab].
    w.add_tensor("token_embd.weight", rand(n_vocab, n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("output.weight", rand(n_vocab, n_embd))
    for i in range(a.layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(p + t + ".weight", rand(n_embd, n_embd))
        w.add_tensor(p + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", rand(n_ff, n_embd))
        w.add_tensor(p + "ffn_up.weight", rand(n_ff, n_embd))
        w.add_tensor(p + "ffn_down.weight", rand(n_embd, n_ff))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
