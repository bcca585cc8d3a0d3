"""NEAT (seed 003) measurements: the long-range recall task and short bits-per-byte comparisons.

    python bench/neat.py recall --seconds 90        # Titans vs window-only vs full attention
    python bench/neat.py recall --steps 800 --pairs 2 --filler 32 --window 16 --width 64 \
        --memory-dim 32 --batch-size 32 --eval-examples 200   # equal steps, small (CPU)
    python bench/neat.py memory --pairs 4 --filler 96 --width 64 --memory-dim 32  # memory alone
    python bench/neat.py compare --seconds 120      # BLT entropy vs fixed-stride vs byte model
    python bench/neat.py profile                    # = cerebrum neat --mode profile --json

recall: each model is trained for the same wall-clock time on generated recall examples
(`cerebrum.data.recall`: 4 key-value pairs, then `--filler` bytes of filler, longer than the
sliding window, then a query), with the loss on the answer bytes only, and scored on 500
held-out examples (exact match of the 3-digit answer; chance 0.001). `--steps` trains every
model for the same number of steps instead; `--pairs-from` / `--curriculum-from` grow the
pairs / filler to the task's over the first half of the steps; `--set KEY=VALUE` changes a
setting of the Titans model (of every model with `--set-all`), for ablations.
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


def _recall_sets(args, filler, pairs=None):
    task = dict(n_pairs=pairs or args.pairs, key_bytes=args.key_bytes,
                value_bytes=args.value_bytes, filler_bytes=filler)
    return (recall.make_examples(args.examples, seed=1, **task),
            recall.make_examples(args.eval_examples, seed=2, **task))


def _curriculum(args) -> list[tuple[int, int, list]]:
    """(pairs, filler, training examples) of each stage: the filler grows from
    --curriculum-from to --filler and the pairs from --pairs-from to --pairs, linearly over 5
    stages that share the first half of the steps (the last stage, the task itself, has the
    second half)."""
    if not args.steps or (args.curriculum_from is None and args.pairs_from is None):
        return []
    f0 = args.filler if args.curriculum_from is None else args.curriculum_from
    p0 = args.pairs if args.pairs_from is None else args.pairs_from
    stages = sorted({(round(p0 + (args.pairs - p0) * i / 4),
                      round(f0 + (args.filler - f0) * i / 4)) for i in range(5)})
    return [(p, f, _recall_sets(args, f, p)[0]) for p, f in stages]


def run_recall(args) -> list[dict]:
    from cerebrum.cli import parse_overrides

    device = torch.device(args.device)
    train, test = _recall_sets(args, args.filler)
    length = len(train[0][0]) + len(train[0][1]) + 1
    stages = _curriculum(args)
    overrides = parse_overrides(args.set)
    results = []
    for name, switches in RECALL_MODELS.items():
        if args.models and name.split()[0] not in args.models:
            continue
        torch.manual_seed(args.seed)
        settings = dict(block_size=length, n_layer=args.layers, n_head=args.heads,
                        n_embd=args.width, attention_window=args.window,
                        memory_dim=args.memory_dim, memory_hidden=2 * args.memory_dim,
                        memory_chunk=args.chunk, n_persistent=4)
        model = NEATLanguageModel(**{**settings, **switches, **(
            overrides if switches.get("use_titans_memory") or args.set_all else {})}).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
        batches = recall_batches(train, model.tokenizer, args.batch_size, device,
                                 torch.Generator().manual_seed(0))
        stage_batches = [recall_batches(s, model.tokenizer, args.batch_size, device,
                                        torch.Generator().manual_seed(0))
                         for _, _, s in stages]
        model.train()
        start, steps, loss = time.perf_counter(), 0, float("nan")
        while (steps < args.steps) if args.steps else (
                time.perf_counter() - start < args.seconds):
            if stage_batches and steps < args.steps // 2:
                batches = stage_batches[steps * len(stages) // (args.steps // 2)]
            elif stage_batches:
                batches = stage_batches[-1]
            x, y = next(batches)
            with torch.autocast(device.type, dtype=torch.bfloat16,
                                enabled=device.type == "cuda"):
                _, loss_t = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss_t.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            steps += 1
            if steps % args.log_every == 0:
                loss = float(loss_t.detach())
                print(f"{name}: step {steps} loss {loss:.3f}", flush=True)
        loss = float(loss_t.detach())
        model.eval()
        accuracy = recall.recall_accuracy(model, test)
        results.append({"model": name, "steps": steps,
                        "seconds": round(time.perf_counter() - start, 1),
                        "final_answer_loss": loss, "recall_accuracy": accuracy,
                        "window": args.window, "filler_bytes": args.filler,
                        "pairs": args.pairs, "sequence_bytes": length,
                        "settings": overrides, "device": device.type})
        print(json.dumps(results[-1]), flush=True)
    return results


def run_memory(args) -> list[dict]:
    """The memory alone on oracle inputs: the diagnosis of the recall task without the
    attention that must build its keys. Each pair's position holds key embedding + value
    embedding, then `--filler` random-token positions, then the query key's embedding; a
    linear readout of the memory's output at the query predicts the value (10 classes,
    chance 0.1). Trains `--steps` (default 600) and reports the accuracy on 512 fresh
    sequences."""
    from cerebrum.cli import parse_overrides
    from cerebrum.nn.titans import NeuralMemory

    settings = parse_overrides(args.set)
    torch.manual_seed(args.seed)
    D, n_keys = args.width, 26
    key_emb, value_emb, filler_emb = (torch.nn.Embedding(n, D) for n in (n_keys, 10, 26))
    memory = NeuralMemory(D, args.memory_dim, 2 * args.memory_dim,
                          settings.get("memory_depth", 2), args.chunk,
                          settings.get("memory_max_grad_norm", 1.0),
                          settings.get("memory_theta_max", 0.5),
                          forget_bias=settings.get("memory_forget_bias", -8.0))
    norm, head = torch.nn.RMSNorm(D), torch.nn.Linear(D, 10)
    modules = (key_emb, value_emb, filler_emb, memory, norm, head)
    optimizer = torch.optim.AdamW([p for m in modules for p in m.parameters()], lr=args.lr,
                                  weight_decay=0.0)

    def batch(B):
        keys = torch.stack([torch.randperm(n_keys)[:args.pairs] for _ in range(B)])
        values = torch.randint(0, 10, (B, args.pairs))
        asked = torch.randint(0, args.pairs, (B,))
        rows = torch.arange(B)
        x = torch.cat([key_emb(keys) + value_emb(values),
                       filler_emb(torch.randint(0, 26, (B, args.filler))),
                       key_emb(keys[rows, asked]).unsqueeze(1)], 1)
        return x, values[rows, asked]

    def accuracy():
        with torch.no_grad():
            x, y = batch(512)
            return float((head(memory(norm(x))[0][:, -1]).argmax(-1) == y).float().mean())

    steps = args.steps or 600
    for step in range(1, steps + 1):
        x, y = batch(args.batch_size)
        loss = torch.nn.functional.cross_entropy(head(memory(norm(x))[0][:, -1]), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % args.log_every == 0:
            print(f"memory: step {step} loss {float(loss.detach()):.3f} accuracy {accuracy():.3f}",
                  flush=True)
    result = {"steps": steps, "pairs": args.pairs, "filler": args.filler,
              "accuracy": accuracy(), "settings": settings}
    print(json.dumps(result), flush=True)
    return [result]


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
    parser.add_argument("what", choices=["recall", "memory", "compare", "profile"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--steps", type=int, default=0,
                        help="recall: train this many steps (equal steps) instead of seconds")
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--eval-examples", type=int, default=500)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--key-bytes", type=int, default=3)
    parser.add_argument("--value-bytes", type=int, default=3)
    parser.add_argument("--curriculum-from", type=int, default=None, metavar="BYTES",
                        help="recall (with --steps): filler grows from BYTES to --filler over "
                        "the first half of the steps")
    parser.add_argument("--pairs-from", type=int, default=None, metavar="N",
                        help="recall (with --steps): the pairs grow from N to --pairs over the "
                        "first half of the steps")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=100)
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
                        help="a model setting (recall: of the Titans model; with --set-all, "
                        "of every model)")
    parser.add_argument("--set-all", action="store_true")
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
        results = {"recall": run_recall, "memory": run_memory,
                   "compare": run_compare}[args.what](args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
