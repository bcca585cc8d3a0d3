"""The GPT baseline on the default corpus: tokens/s and held-out bits per byte vs gzip and xz.

Trains the documented small config (byte-level BPE with 4,096 tokens trained on 2,000 training
documents, 4 layers, 4 heads, width 128, context 256, ReLU^2 feed-forward, zero-initialised
output projections, QK-norm, a 32,768-row bigram table; Muon + AdamW, lr 3e-3 held then
decayed linearly to 0 over the last 40% of the steps, batches of 8 x 256 tokens drawn through
a shuffle buffer of 32,768 rows, which spans most of the corpus) on the Python
standard library's sources for a fixed wall-clock budget, then measures
bits per byte on held-out documents (the first documents of the validation split and, as a
second sample, of the test split, each capped at --eval-bytes bytes), and, on the same bytes in
the same run, gzip -9 and xz -9e (as a baseline any model should beat).
With --compile, also the training throughput under torch.compile.

    python bench/lm.py --minutes 15
    python bench/lm.py --minutes 1 --json
    python bench/lm.py --minutes 3 --set optimizer=adamw --set tokenizer=bytes   # variants
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import platform
import time

import torch

from cerebrum.brain.gpt import GPTLanguageModel, GPTLMConfig
from cerebrum.data import default_corpus
from cerebrum.train.metrics import bits_per_byte

SMALL = dict(tokenizer="bpe", vocab_size=4096, block_size=256, n_layer=4, n_head=4, n_embd=128,
             mlp="relu2", zero_init_residual=True, qk_norm=True, bigram_buckets=32768)
TRAINING = dict(batch_size=8, seq_len=256, lr=3e-3, optimizer="muon", schedule="wsd",
                min_lr_ratio=0.0, decay_fraction=0.4, shuffle_rows=32768)
#: Steps of the throughput probe that sets a run's step count (8 steps overshot a 15-minute
#: budget by 9% once and undershot it by 9% another time; 30 take about 10 s).
PROBE_STEPS = 30
#: Share of the budget the probe's step time is planned against: this shared VM's speed drifts
#: by a few percent within a run, and the budget is a limit, not a target.
BUDGET_MARGIN = 0.95
TRAINING_KEYS = ("batch_size", "seq_len", "lr", "optimizer", "weight_decay", "schedule",
                 "min_lr_ratio", "decay_fraction", "shuffle_rows")


def held_out_texts(corpus, max_bytes: int, split: str = "validation") -> list[str]:
    texts, total = [], 0
    for doc in corpus.documents(split, shuffle=False):
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


def settings_with(overrides: list[str]) -> tuple[dict, dict]:
    """SMALL and TRAINING with --set KEY=VALUE overrides (VALUE read as JSON when it parses)."""
    model, training = dict(SMALL), dict(TRAINING)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        if key in GPTLMConfig.__dataclass_fields__:
            model[key] = value
        elif key in TRAINING_KEYS:
            training[key] = value
        else:
            raise SystemExit(f"--set: unknown key {key!r}")
    if model["tokenizer"] == "bytes":
        model["vocab_size"] = 259
    return model, training


def train_for(minutes: float, model_config: dict, training: dict, *, compile: bool,
              seed: int = 0, tokenizer=None):
    """Train for about `minutes`: the step count comes from a short probe run's throughput
    (so the cosine schedule ends with the budget). Returns the model, steps, seconds, tokens/s
    and the seconds spent training the tokenizer (outside the budget)."""
    torch.manual_seed(seed)
    probe = GPTLanguageModel(**model_config)
    start = time.perf_counter()
    if tokenizer is not None:
        probe.tokenizer = tokenizer
    probe.fit(None, steps=PROBE_STEPS, warmup_steps=1, random_state=seed, compile=compile,
              eval_every=None, **training)
    tokenizer_seconds = time.perf_counter() - start  # including the probe steps
    # mean seconds per step after the first five (warm-up): the mean, not the median, counts
    # the occasional slow step (a long document to tokenize), so the run keeps to its budget
    tokens = training["batch_size"] * training["seq_len"]
    seconds_per_step = [tokens / r for r in probe.history_["train"]["tokens_per_s"]]
    per_step = sum(seconds_per_step[5:]) / len(seconds_per_step[5:])
    # the first step also fills the row shuffle buffer, which the timed run does again
    fill = max(0.0, seconds_per_step[0] - per_step)
    steps = max(10, int((minutes * 60 - fill) * BUDGET_MARGIN / per_step))
    torch.manual_seed(seed)
    model = GPTLanguageModel(**model_config)
    model.tokenizer = probe.tokenizer
    start = time.perf_counter()
    model.fit(None, steps=steps, warmup_steps=min(200, steps // 10), random_state=seed,
              compile=compile, eval_every=None, checkpoint_every=10**9, verbose=False,
              **training)
    seconds = time.perf_counter() - start
    tokens_per_s = steps * training["batch_size"] * training["seq_len"] / seconds
    return model, steps, seconds, tokens_per_s, tokenizer_seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--eval-bytes", type=int, default=200_000)
    parser.add_argument("--compile", action="store_true",
                        help="also measure tokens/s under torch.compile (1 minute)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change the model (tokenizer, vocab_size, n_layer, ...) or the "
                        f"training ({', '.join(TRAINING_KEYS)}); repeatable")
    args = parser.parse_args(argv)
    corpus = default_corpus()
    texts = held_out_texts(corpus, args.eval_bytes)
    test_texts = held_out_texts(corpus, args.eval_bytes, "test")
    model_config, training = settings_with(args.set)
    model, steps, seconds, tok_s, tokenizer_seconds = train_for(
        args.minutes, model_config, training, compile=False)
    held_out_bytes = sum(len(t.encode()) for t in texts)
    held_out_tokens = sum(len(model.tokenizer.encode(t)) for t in texts)
    result = {
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "config": model_config, "training": training,
        "steps": steps, "train_seconds": seconds, "tokenizer_seconds": tokenizer_seconds,
        "tokens_per_s": tok_s, "bytes_per_token": held_out_bytes / held_out_tokens,
        "held_out_bytes": held_out_bytes,
        "bits_per_byte": bits_per_byte(model.gpt, model.tokenizer, texts),
        **compressor_bpb(texts),
        # a second held-out sample, so that one sample's quirks cannot carry a conclusion
        "test": {"held_out_bytes": sum(len(t.encode()) for t in test_texts),
                 "bits_per_byte": bits_per_byte(model.gpt, model.tokenizer, test_texts),
                 **compressor_bpb(test_texts)},
    }
    if args.compile:
        _, _, _, compiled, _ = train_for(1.0, model_config, training, compile=True,
                                         tokenizer=model.tokenizer)
        result["tokens_per_s_compiled"] = compiled
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"GPT {model_config} {training} on the Python standard library, {steps} steps in "
          f"{seconds:.0f} s ({result['threads']} threads, torch {result['torch']}; tokenizer "
          f"trained in {tokenizer_seconds:.0f} s, outside the budget)")
    print(f"  tokens/s            {tok_s:,.0f}"
          + (f"   (torch.compile: {result['tokens_per_s_compiled']:,.0f})"
             if "tokens_per_s_compiled" in result else ""))
    print(f"  held-out bytes      {result['held_out_bytes']:,} "
          f"({result['bytes_per_token']:.2f} bytes per token)")
    print(f"  {'bits/byte':<19} {'validation':>10} {'test':>10}")
    for name in ("bits_per_byte", "gzip -9", "xz -9e"):
        label = "GPT" if name == "bits_per_byte" else name
        print(f"  {label:<19} {result[name]:>10.3f} {result['test'][name]:>10.3f}")
    print(f"  {'(held-out bytes)':<19} {result['held_out_bytes']:>10,} "
          f"{result['test']['held_out_bytes']:>10,}")


if __name__ == "__main__":
    main()
