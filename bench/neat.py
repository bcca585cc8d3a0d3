"""NEAT (seed 003) measurements: the long-range recall task and short bits-per-byte comparisons.

    python bench/neat.py recall --seconds 90        # Titans vs window-only vs full attention
    python bench/neat.py compare --seconds 120      # BLT entropy vs fixed-stride vs byte model
    python bench/neat.py profile                    # = cerebrum neat --mode profile --json

recall: each model is trained for the same wall-clock time on generated recall examples
(`cerebrum.data.recall`: 4 key-value pairs, then `--filler` bytes of filler, longer than the
sliding window, then a query), with the loss on the answer bytes only, and scored on 500
held-out examples (exact match of the 3-digit answer; chance 0.001).
compare: each configuration of the "neat" family is trained for the same wall-clock time on
the default corpus and scored (bits per byte) on the same held-out documents.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from cerebrum.brain.neat import NEATLanguageModel
from cerebrum.data import recall

RECALL_MODELS = {
    "titans (memory + window)": dict(use_titans_memory=True),
    "window only": dict(use_sliding_window=True),
    "full attention": dict(),
}


def recall_batches(examples, tokenizer, batch_size, device, generator):
    """Endless (B, T + 1) rows of encoded examples and the (B, T) targets (answer only)."""
    rows = [[tokenizer.bos_id, *tokenizer.encode(p + a)] for p, a in examples]
    answer = [len(tokenizer.encode(a)) for _, a in examples]
    data = torch.tensor(rows, device=device)
    targets = torch.full_like(data[:, 1:], -100)
    for i, n in enumerate(answer):
        targets[i, -n:] = data[i, -n:]
    while True:
        pick = torch.randint(0, len(rows), (batch_size,), generator=generator).to(device)
        yield data[pick, :-1], targets[pick]


def run_recall(args) -> list[dict]:
    device = torch.device(args.device)
    train = recall.make_examples(args.examples, filler_bytes=args.filler, seed=1)
    test = recall.make_examples(500, filler_bytes=args.filler, seed=2)
    length = len(train[0][0]) + len(train[0][1]) + 1
    results = []
    for name, switches in RECALL_MODELS.items():
        if args.models and name.split()[0] not in args.models:
            continue
        torch.manual_seed(0)
        model = NEATLanguageModel(block_size=length, n_layer=args.layers, n_head=4,
                                  n_embd=args.width, attention_window=args.window,
                                  memory_dim=args.memory_dim, memory_hidden=2 * args.memory_dim,
                                  memory_chunk=args.chunk, n_persistent=4,
                                  **switches).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
        batches = recall_batches(train, model.tokenizer, args.batch_size, device,
                                 torch.Generator().manual_seed(0))
        model.train()
        start, steps, loss = time.perf_counter(), 0, float("nan")
        while time.perf_counter() - start < args.seconds:
            x, y = next(batches)
            with torch.autocast(device.type, dtype=torch.bfloat16,
                                enabled=device.type == "cuda"):
                _, loss_t = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss_t.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            steps += 1
            if steps % 100 == 0:
                loss = float(loss_t.detach())
                print(f"{name}: step {steps} loss {loss:.3f}", flush=True)
        loss = float(loss_t.detach())
        model.eval()
        accuracy = recall.recall_accuracy(model, test)
        results.append({"model": name, "steps": steps, "seconds": args.seconds,
                        "final_answer_loss": loss, "recall_accuracy": accuracy,
                        "window": args.window, "filler_bytes": args.filler,
                        "sequence_bytes": length, "device": device.type})
        print(json.dumps(results[-1]), flush=True)
    return results


COMPARE_MODELS = {
    "byte transformer": dict(),
    "blt entropy": dict(use_blt_processor=True, patching="entropy"),
    "blt fixed": dict(use_blt_processor=True, patching="fixed"),
}


def _train_patch_size(model) -> float:
    """Mean patch size over the last 20 training steps (1 without patches)."""
    sizes = [s for s in model.history_["train"].get("patch_size", [])[-20:] if s == s]
    return sum(sizes) / len(sizes) if sizes else 1.0


def run_compare(args) -> list[dict]:
    from cerebrum.brain.language_model import texts_of
    from cerebrum.data import default_corpus

    corpus = default_corpus()
    held_out = list(texts_of(corpus, "validation", max_documents=args.documents))
    results = []
    base = dict(block_size=256, n_layer=4, n_head=4, n_embd=128, patch_size=args.patch_size,
                max_patch_length=12, local_dim=64, ngram_buckets=8192)
    for name, switches in COMPARE_MODELS.items():
        torch.manual_seed(0)
        model = NEATLanguageModel(**base, **switches).to(args.device)
        model.fit(corpus, steps=20, batch_size=args.batch_size, seq_len=256, eval_every=None,
                  shuffle_rows=0, warmup_steps=1)
        rates = sorted(model.history_["train"]["tokens_per_s"][5:])
        per_step = args.batch_size * 256 / rates[len(rates) // 2]
        steps = max(10, int(args.seconds / per_step))
        torch.manual_seed(0)
        model = NEATLanguageModel(**base, **switches).to(args.device)
        start = time.perf_counter()
        model.fit(corpus, steps=steps, batch_size=args.batch_size, seq_len=256,
                  eval_every=None, lr=2e-3, warmup_steps=min(100, steps // 10),
                  shuffle_rows=1024)
        elapsed = time.perf_counter() - start
        results.append({"model": name, "steps": steps, "seconds": elapsed,
                        "bytes_per_s": steps * args.batch_size * 256 / elapsed,
                        "bits_per_byte": model.bits_per_byte(held_out),
                        "mean_patch_size": _train_patch_size(model),
                        "device": str(args.device)})
        print(json.dumps(results[-1]), flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["recall", "compare", "profile"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--filler", type=int, default=96)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--memory-dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--patch-size", type=float, default=4.0)
    parser.add_argument("--documents", type=int, default=16)
    parser.add_argument("--models", nargs="*", help="recall: only these (titans, window, "
                        "full)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="profile: a model setting")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    if args.what == "profile":
        from cerebrum import cli_neat

        ns = argparse.Namespace(use_blt_processor=True, use_titans_memory=True,
                                dynamic_component_activation=True, mixed_precision=False,
                                gradient_checkpointing=False, batch_size=args.batch_size,
                                overrides=args.set, repeats=5)
        results = cli_neat.profile_rows(ns)
        print(json.dumps(results, indent=2))
    else:
        results = (run_recall if args.what == "recall" else run_compare)(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
