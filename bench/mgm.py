"""MGM (seed 004) against a dense GPT of about the same active parameters, at the same number
of training tokens on the default corpus; plain vs nuanced routing; staged vs single-stage;
answer accuracy on the built-in reasoning sets.

    PYTHONPATH=src python bench/mgm.py [--steps 300] [--device cuda] [--json out.json]
    PYTHONPATH=src python bench/mgm.py --corpus reasoning --bytes --steps 150 \
        --batch-size 8 --seq-len 128 --device cpu        # a small run on a CPU

Every model uses its family's `leaderboard_settings` (the dense GPT without its hashed bigram
table, which would add 4.2M parameters MGM does not have), with warm-up shortened to 10 steps
so that short stages reach their learning rate. Prints one JSON object: for each run, bits
per byte on 16 held-out documents, the training and generation tokens/s (medians), total and
active parameters, the final per-expert load range and the curvatures before and after.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from cerebrum.brain.gpt import GPTLanguageModel
from cerebrum.brain.mgm import MGMLanguageModel
from cerebrum.data import default_corpus
from cerebrum.data.reasoning import answer_accuracy, generate_examples, reasoning_corpus


def flat_curvatures(model) -> list[float]:
    return [k for layer in model.curvatures() for ks in layer for k in ks]


def generation_speed(model, n=64) -> float:
    model.generate("def main(", 1, temperature=0)  # warm-up
    start = time.perf_counter()
    model.generate("def main(", n, temperature=0)
    return n / (time.perf_counter() - start)


def run(name, model, corpus, fit, device) -> dict:
    model.to(device)
    before = flat_curvatures(model) if isinstance(model, MGMLanguageModel) else []
    start = time.perf_counter()
    model.fit(corpus, **fit)
    seconds = time.perf_counter() - start
    train = model.history_["train"]
    speeds = [v for v in train["tokens_per_s"][5:] if math.isfinite(v)]
    out = {"seconds": round(seconds, 1),
           "train_tokens_per_s": round(statistics.median(speeds)),
           "bits_per_byte": round(model.history_["eval"]["bits_per_byte"][-1], 4),
           "params_total_active": model.parameter_counts(),
           "generate_tokens_per_s": round(generation_speed(model), 1)}
    if isinstance(model, MGMLanguageModel):
        after = flat_curvatures(model)
        loads = [train[f"load_e{j}"][-1] for j in range(model.config.experts_num)]
        out.update(load_min=round(min(loads), 4), load_max=round(max(loads), 4),
                   loads=[round(v, 3) for v in loads],
                   curvatures_finite=all(math.isfinite(k) for k in after),
                   curvature_moved_max=round(max(abs(a - b) for a, b in
                                                 zip(after, before, strict=True)), 4),
                   curvatures_layer0=model.curvatures()[0])
    print(name, json.dumps(out), flush=True)
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
    parser.add_argument("--json")
    args = parser.parse_args()
    fit = {**MGMLanguageModel.leaderboard_settings["fit"], "steps": args.steps,
           "batch_size": args.batch_size, "seq_len": args.seq_len, "warmup_steps": 10,
           "eval_every": args.steps, "eval_documents": 16, "shuffle_rows": 4096,
           "random_state": 0, "checkpoint_every": 10 ** 9}
    corpus = (default_corpus() if args.corpus == "default"
              else reasoning_corpus("/tmp/mgm_reasoning", n=3000))
    tokenizer = {"tokenizer": "bytes", "vocab_size": 259} if args.bytes else {}
    results = {"device": str(torch.cuda.get_device_name()) if args.device == "cuda" else "cpu",
               "steps": args.steps, "tokens": args.steps * args.batch_size * fit["seq_len"]}
    mgm = {**MGMLanguageModel.leaderboard_settings["model"], **tokenizer}
    gpt = {**GPTLanguageModel.leaderboard_settings["model"], "bigram_buckets": 0, **tokenizer}
    torch.manual_seed(0)
    models = {"gpt_dense": GPTLanguageModel(**gpt)}
    results["gpt_dense"] = run("gpt_dense", models["gpt_dense"], corpus, fit, args.device)
    for name, model_extra, fit_extra in (
            ("mgm_staged_plain", {}, {}),
            ("mgm_staged_nuanced", {"nuanced_routing": True}, {}),
            ("mgm_single_stage", {}, {"staged": False})):
        torch.manual_seed(0)
        models[name] = MGMLanguageModel(**{**mgm, **model_extra})
        results[name] = run(name, models[name], corpus, {**fit, **fit_extra}, args.device)
    # the built-in reasoning sets: train on them, then answer fresh questions
    questions = [e for kind in ("cot", "reasoning", "conversational")
                 for e in generate_examples(kind, 20, seed=99)]
    if args.corpus == "reasoning":  # answer fresh questions with the models just trained
        for name in ("gpt_dense", "mgm_staged_plain", "mgm_single_stage"):
            results[name]["answer_accuracy"] = round(answer_accuracy(models[name], questions), 3)
    else:  # train on the built-in reasoning sets, then answer fresh questions
        data = reasoning_corpus("/tmp/mgm_reasoning", n=3000)
        torch.manual_seed(0)
        model = MGMLanguageModel(**{**mgm, "tokenizer": "bytes", "vocab_size": 259})
        results["mgm_reasoning"] = run("mgm_reasoning", model, data, fit, args.device)
        results["mgm_reasoning"]["answer_accuracy"] = answer_accuracy(model, questions)
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)


if __name__ == "__main__":
    main()
