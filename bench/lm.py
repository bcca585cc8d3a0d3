"""The GPT baseline on the default corpus: tokens/s and held-out bits per byte vs gzip and xz.

Trains the documented small config (bytes tokenizer, 4 layers, 4 heads, width 128, context
256) on the Python standard library's sources for a fixed wall-clock budget, then measures
bits per byte on held-out documents (the validation split, capped at --eval-bytes bytes), and,
on the same bytes in the same run, gzip -9 and xz -9e (as a baseline any model should beat).
With --compile, also the training throughput under torch.compile.

    python bench/lm.py --minutes 15
    python bench/lm.py --minutes 1 --json
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import platform
import time

import torch

from cerebrum.data import default_corpus
from cerebrum.models.language_model import GPTLanguageModel
from cerebrum.train.metrics import bits_per_byte

SMALL = dict(block_size=256, n_layer=4, n_head=4, n_embd=128)


def held_out_texts(corpus, max_bytes: int) -> list[str]:
    texts, total = [], 0
    for doc in corpus.documents("validation", shuffle=False):
        texts.append(doc.text)
        total += len(doc.text.encode())
        if total >= max_bytes:
            break
    return texts


def compressor_bpb(texts) -> dict:
    data = [t.encode() for t in texts]
    n = sum(len(d) for d in data)
    # each document compressed on its own, like the model scores each on its own
    return {"gzip -9": 8 * sum(len(gzip.compress(d, 9)) for d in data) / n,
            "xz -9e": 8 * sum(len(lzma.compress(d, preset=9 | lzma.PRESET_EXTREME))
                              for d in data) / n}


def train_for(minutes: float, *, compile: bool, seed: int = 0, batch_size: int = 16,
              seq_len: int = 256, lr: float = 3e-3):
    """Train for about `minutes`: the step count comes from a short probe run's throughput
    (so the cosine schedule ends with the budget)."""
    torch.manual_seed(seed)
    probe = GPTLanguageModel(**SMALL).fit(
        None, steps=8, batch_size=batch_size, seq_len=seq_len, warmup_steps=1,
        random_state=seed, compile=compile, eval_every=None)
    rates = sorted(probe.history_["train"]["tokens_per_s"][2:])  # skip warm-up steps
    per_step = batch_size * seq_len / rates[len(rates) // 2]
    steps = max(10, int(minutes * 60 / per_step))
    torch.manual_seed(seed)
    model = GPTLanguageModel(**SMALL)
    start = time.perf_counter()
    model.fit(None, steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr,
              warmup_steps=min(200, steps // 10), random_state=seed, compile=compile,
              eval_every=None, checkpoint_every=10**9, verbose=False)
    seconds = time.perf_counter() - start
    return model, steps, seconds, steps * batch_size * seq_len / seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--eval-bytes", type=int, default=200_000)
    parser.add_argument("--compile", action="store_true",
                        help="also measure tokens/s under torch.compile (1 minute)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    corpus = default_corpus()
    texts = held_out_texts(corpus, args.eval_bytes)
    model, steps, seconds, tok_s = train_for(args.minutes, compile=False)
    result = {
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "config": SMALL, "steps": steps,
        "train_seconds": seconds, "tokens_per_s": tok_s,
        "held_out_bytes": sum(len(t.encode()) for t in texts),
        "bits_per_byte": bits_per_byte(model.gpt, model.tokenizer, texts),
        **compressor_bpb(texts),
    }
    if args.compile:
        _, _, _, compiled = train_for(1.0, compile=True)
        result["tokens_per_s_compiled"] = compiled
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"GPT {SMALL} on the Python standard library, {steps} steps in {seconds:.0f} s "
          f"({result['threads']} threads, torch {result['torch']})")
    print(f"  tokens/s            {tok_s:,.0f}"
          + (f"   (torch.compile: {result['tokens_per_s_compiled']:,.0f})"
             if "tokens_per_s_compiled" in result else ""))
    print(f"  held-out bytes      {result['held_out_bytes']:,}")
    for name in ("bits_per_byte", "gzip -9", "xz -9e"):
        label = "GPT bits/byte" if name == "bits_per_byte" else f"{name} bits/byte"
        print(f"  {label:<19} {result[name]:.3f}")


if __name__ == "__main__":
    main()
