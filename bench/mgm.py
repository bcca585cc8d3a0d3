"""MGM (seed 004) against a dense GPT of about the same active parameters, at the same number
of training tokens on the default corpus; plain vs nuanced routing; staged vs single-stage;
per-expert load and curvatures over training; answer accuracy on the built-in reasoning sets.

    PYTHONPATH=src python bench/mgm.py [--steps 300] [--device cuda] [--json out.json]
    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/mgm.py --steps 250 --batch-size 8 \
        --seq-len 128 --device cpu --json /tmp/mgm.json          # the CPU study (docs/mgm.md)
    PYTHONPATH=src python bench/mgm.py --runs mgm_single_stage --steps 250 --seq-len 128 \
        --extra '{"euclid": {"model": {"manifolds": ["euclidean"]}, "fit": {"staged": false}}}'

Every model uses its family's `leaderboard_settings` (the dense GPT without its hashed bigram
table, which would add 4.2M parameters MGM does not have), with warm-up shortened to 10 steps
so that short stages reach their learning rate. Every BPE model uses the one tokenizer
trained for the first (so bits per byte compare the networks, not the tokenizers), the same
seed and the same batches. For each run: bits per byte on `--eval-documents` held-out
documents, BrierLM (`--brier-positions`), the training and generation tokens/s (medians),
total and active parameters; for MGM also the per-expert load (fraction of the token-expert
assignments, averaged over layers) in `--snapshots` windows over training, the final load of
every layer on the held-out documents, and the curvatures (layer means) at the end of each
window, with how far each learnable curvature moved, and where the curved experts' tangent
vectors lie (`tangent_norms`). `--extra` adds ablation runs (MGM config
and fit overrides, as JSON); `--runs` selects runs (gpt_dense, mgm_staged_plain,
mgm_staged_nuanced, mgm_single_stage, reasoning, and the --extra names). `--json` writes
everything.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import time

import torch

from cerebrum.brain.gpt import GPTLanguageModel
from cerebrum.brain.language_model import texts_of
from cerebrum.brain.mgm import MGMLanguageModel
from cerebrum.data import default_corpus
from cerebrum.data.reasoning import KINDS, answer_accuracy, generate_examples, reasoning_corpus

STANDARD_RUNS = ("gpt_dense", "mgm_staged_plain", "mgm_staged_nuanced", "mgm_single_stage",
                 "reasoning")


def generation_speed(model, n=64) -> float:
    model.generate("def main(", 1, temperature=0)  # warm-up
    start = time.perf_counter()
    model.generate("def main(", n, temperature=0)
    return n / (time.perf_counter() - start)


def curvature_table(model) -> list[list[list[float]]]:
    """Per layer, per expert, its signed curvatures."""
    return model.curvatures()


def learnable(model) -> list[list[bool]]:
    """Per layer, per expert: whether its curvature(s) are learnable."""
    return [[bool(e.curvature_parameters()) for e in block.moe.experts]
            for block in model.mgm.blocks]


@torch.no_grad()
def run_windows(model, ids: list[int], block: int, hooks) -> None:
    """Run `ids` through the network in windows of `block` tokens, in eval mode, for the
    forward `hooks` to observe; the hooks are removed and the mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for start in range(0, len(ids), block):
            model.mgm(torch.tensor([ids[start:start + block]], device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def layer_loads(model, texts, max_tokens=4096) -> list[list[float]]:
    """Per layer, per expert: the fraction of the held-out tokens' assignments it receives
    (the documents' first `max_tokens` tokens, in windows of the model's context)."""
    tokenizer, block = model._require_tokenizer(), model.context_length
    ids = [t for text in texts for t in [tokenizer.bos_id, *tokenizer.encode(text)]][:max_tokens]
    loads: list[torch.Tensor] = []
    hooks = []
    for i, b in enumerate(model.mgm.blocks):
        def hook(_module, _inputs, output, i=i):
            load = output[1].load(model.mgm.config.experts_num)
            loads.append((i, load * output[1].experts.shape[0]))
        hooks.append(b.moe.register_forward_hook(hook))
    run_windows(model, ids, block, hooks)
    totals = [torch.zeros(model.mgm.config.experts_num) for _ in model.mgm.blocks]
    for i, counts in loads:
        totals[i] += counts.cpu()
    return [[round(float(v), 4) for v in t / t.sum()] for t in totals]


#: Where each curved map stops being informative, in units of sqrt(c)|u|: the ball's exp map
#: is clamped below its rim (artanh(1 - 1e-5) = 6.1: beyond, |u| no longer reaches the
#: output and gets no gradient), the sphere's wraps around after pi (not injective), the
#: hyperboloid's is clamped at a rapidity of 15.
SATURATION = {"hyperbolic": 6.1, "poincare": 6.1, "spherical": math.pi, "lorentzian": 15.0}


@torch.no_grad()
def tangent_norms(model, texts, max_tokens=2048) -> dict:
    """Per curved expert type: the median of sqrt(c)|u| (u = W_in x, the tangent vector sent
    onto the manifold) over the held-out tokens each expert receives, and the fraction beyond
    SATURATION (the product's ball and sphere factors as product_ball / product_sphere)."""
    tokenizer, block = model._require_tokenizer(), model.context_length
    ids = [t for text in texts for t in [tokenizer.bos_id, *tokenizer.encode(text)]][:max_tokens]
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for b in model.mgm.blocks:
        for e in b.moe.experts:
            m = e.manifold

            def hook(_module, _inputs, u, e=e, m=m):
                if u.shape[0] == 0:
                    return
                u = u.float()
                if e.kind == "product":
                    third = m.split[0]
                    for part, f, sl in (("product_ball", m.ball, slice(0, third)),
                                        ("product_sphere", m.sphere,
                                         slice(third, 2 * third))):
                        seen.setdefault(part, []).append(f.c.sqrt() * u[:, sl].norm(dim=-1))
                elif e.kind in SATURATION:
                    seen.setdefault(e.kind, []).append(m.c.sqrt() * u.norm(dim=-1))
            hooks.append(e.up.register_forward_hook(hook))
    run_windows(model, ids, block, hooks)
    out = {}
    for kind, values in seen.items():
        v = torch.cat(values)
        limit = SATURATION[kind.replace("product_ball", "hyperbolic").replace(
            "product_sphere", "spherical")]
        out[kind] = {"median": round(float(v.median()), 2),
                     "beyond": round(float((v > limit).float().mean()), 3)}
    return out


def snapshots(model, steps, n) -> list[dict]:
    """n windows over training: mean per-expert load in each window and the curvatures (layer
    means) at its end, from the per-step training curves."""
    train = model.history_["train"]
    E = model.mgm.config.experts_num
    step = train["step"]
    bounds = [round(i * steps / n) for i in range(n + 1)]
    out = []
    for lo, hi in itertools.pairwise(bounds):
        rows = [r for r, s in enumerate(step) if lo < s <= hi]
        if not rows:
            continue
        load = [statistics.fmean(train[f"load_e{j}"][r] for r in rows) for j in range(E)]
        curv = {k[5:]: round(train[k][rows[-1]], 4) for k in sorted(train)
                if k.startswith("curv_e")}
        out.append({"steps": f"{lo + 1}-{hi}", "load_min": round(min(load), 4),
                    "load_max": round(max(load), 4), "loads": [round(v, 4) for v in load],
                    "curvatures": curv})
    return out


def run(name, model, corpus, fit, args, held_out, tokenizer=None) -> dict:
    model.to(args.device)
    if tokenizer is not None and model.config.tokenizer == "bpe":
        model.tokenizer = tokenizer  # fit trains one only when the model has none
    is_mgm = isinstance(model, MGMLanguageModel)
    before = curvature_table(model) if is_mgm else None
    start = time.perf_counter()
    model.fit(corpus, **fit)
    seconds = time.perf_counter() - start
    train = model.history_["train"]
    speeds = [v for v in train["tokens_per_s"][5:] if math.isfinite(v)]
    total, active = model.parameter_counts()
    out = {"seconds": round(seconds, 1),
           "train_tokens_per_s": round(statistics.median(speeds)),
           "bits_per_byte": round(model.history_["eval"]["bits_per_byte"][-1], 4),
           "params_total": total, "params_active": active,
           "final_train_loss": round(statistics.fmean(train["loss"][-20:]), 4)}
    if args.brier_positions:
        out["brier_lm"] = round(model.brier_lm(held_out, max_positions=args.brier_positions), 2)
    out["generate_tokens_per_s"] = round(generation_speed(model), 1)
    if is_mgm:
        after = curvature_table(model)
        fixed = learnable(model)
        moved = [abs(a - b) for layer_a, layer_b, layer_l in zip(after, before, fixed,
                                                                 strict=True)
                 for ka, kb, ok in zip(layer_a, layer_b, layer_l, strict=True) if ok
                 for a, b in zip(ka, kb, strict=True)]
        final = [train[f"load_e{j}"][-1] for j in range(model.mgm.config.experts_num)]
        per_layer = layer_loads(model, held_out)
        out["tangent_norms"] = tangent_norms(model, held_out)
        out.update(
            load_min=round(min(final), 4), load_max=round(max(final), 4),
            held_out_layer_load_min=min(min(v) for v in per_layer),
            held_out_layer_load_max=max(max(v) for v in per_layer),
            held_out_layer_loads=per_layer,
            snapshots=snapshots(model, fit["steps"], args.snapshots),
            curvatures_finite=all(math.isfinite(k) for layer in after for ks in layer
                                  for k in ks),
            curvature_moved_min=round(min(moved), 4) if moved else None,
            curvature_moved_max=round(max(moved), 4) if moved else None,
            curvatures_initial_layer0=before[0], curvatures_final_layer0=after[0],
            expert_types=list(model.mgm.config.expert_types()))
    print(name, json.dumps({k: v for k, v in out.items()
                            if k not in ("snapshots", "held_out_layer_loads")}), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--corpus", choices=("default", "reasoning"), default="default",
                        help="the standard library (default) or the built-in reasoning sets")
    parser.add_argument("--bytes", action="store_true",
                        help="the byte tokenizer for every model (no BPE training)")
    parser.add_argument("--eval-documents", type=int, default=8)
    parser.add_argument("--brier-positions", type=int, default=512,
                        help="positions BrierLM scores (0: no BrierLM)")
    parser.add_argument("--snapshots", type=int, default=5,
                        help="windows over training for the load and curvature snapshots")
    parser.add_argument("--questions", type=int, default=15,
                        help="fresh questions per kind for the answer accuracy")
    parser.add_argument("--runs", default=",".join(STANDARD_RUNS),
                        help="comma-separated runs to do (module docstring)")
    parser.add_argument("--extra", default="{}",
                        help='ablations: {"name": {"model": {...}, "fit": {...}}} (JSON)')
    parser.add_argument("--json")
    args = parser.parse_args()
    extra = json.loads(args.extra)
    wanted = args.runs.split(",") + list(extra) if args.runs else list(extra)
    fit = {**MGMLanguageModel.leaderboard_settings["fit"], "steps": args.steps,
           "batch_size": args.batch_size, "seq_len": args.seq_len, "warmup_steps": 10,
           "eval_every": args.steps, "eval_documents": args.eval_documents,
           "shuffle_rows": 4096, "random_state": 0, "checkpoint_every": 10 ** 9,
           "log_every": 10 ** 9}
    corpus = (default_corpus() if args.corpus == "default"
              else reasoning_corpus("/tmp/mgm_reasoning", n=3000))
    held_out = list(texts_of(corpus, "validation", max_documents=args.eval_documents))
    tokenizer_kind = {"tokenizer": "bytes", "vocab_size": 259} if args.bytes else {}
    results = {"device": str(torch.cuda.get_device_name()) if args.device == "cuda" else "cpu",
               "torch": torch.__version__, "threads": torch.get_num_threads(),
               "steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len,
               "tokens": args.steps * args.batch_size * args.seq_len,
               "eval_documents": args.eval_documents, "runs": {}}
    mgm = {**MGMLanguageModel.leaderboard_settings["model"], **tokenizer_kind}
    gpt = {**GPTLanguageModel.leaderboard_settings["model"], "bigram_buckets": 0,
           **tokenizer_kind}
    specs = {"gpt_dense": (None, {}, {}),
             "mgm_staged_plain": (mgm, {}, {}),
             "mgm_staged_nuanced": (mgm, {"nuanced_routing": True}, {}),
             "mgm_single_stage": (mgm, {}, {"staged": False}),
             **{name: (mgm, spec.get("model", {}), spec.get("fit", {}))
                for name, spec in extra.items()}}
    shared = {"tokenizer": None}

    def do(name, base, model_extra, fit_extra, data, tokenizer=None):
        torch.manual_seed(0)
        model = (GPTLanguageModel(**{**gpt, **model_extra}) if base is None
                 else MGMLanguageModel(**{**base, **model_extra}))
        result = run(name, model, data, {**fit, **fit_extra}, args, held_out_of(data),
                     tokenizer)
        result["model_overrides"], result["fit_overrides"] = model_extra, fit_extra
        results["runs"][name] = result
        return model

    def held_out_of(data):
        return held_out if data is corpus else list(
            texts_of(data, "validation", max_documents=args.eval_documents))

    for name in wanted:
        if name in specs:
            model = do(name, *specs[name], corpus, shared["tokenizer"])
            if shared["tokenizer"] is None and model.config.tokenizer == "bpe":
                shared["tokenizer"] = model.tokenizer
    if "reasoning" in wanted:  # train on the built-in reasoning sets, answer fresh questions
        data = corpus if args.corpus == "reasoning" else reasoning_corpus(
            "/tmp/mgm_reasoning", n=3000)
        questions = {kind: generate_examples(kind, args.questions, seed=99) for kind in KINDS}
        byte = {"tokenizer": "bytes", "vocab_size": 259}
        for name, base in (("reasoning_gpt_dense", None), ("reasoning_mgm_staged_plain", mgm)):
            model = do(name, base, byte, {}, data)
            accuracy = {kind: round(answer_accuracy(model, q), 3)
                        for kind, q in questions.items()}
            accuracy["all"] = round(statistics.fmean(accuracy.values()), 3)
            results["runs"][name]["answer_accuracy"] = accuracy
            print(name, "answer accuracy", accuracy, flush=True)
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)


if __name__ == "__main__":
    main()
