"""Transformer² (seed 003, NEAT part 2 section 1) measured on generated tasks.

    python bench/adapt.py                                   # base, experts, dispatch, CEM
    python bench/adapt.py --base-steps 3000 --expert-steps 300 --json
    python bench/adapt.py --base runs/adapt/base.cbm        # reuse a trained base

A small byte-level GPT is trained on the mix of the training tasks (`cerebrum.data.tasks`:
add, reverse, sort, max) so that it knows the format; then one SVF expert per training task
(next-token loss on the answers, base frozen), the classifier dispatcher, the classification
expert, and, for each held-out related task (add3, max8, min, rsort), a CEM mixture over
the four experts from `--few-shot` examples. Everything is scored by exact greedy answers on
`--n-eval` fresh examples per task. Printed: the task x expert accuracy table; base vs own
expert vs each dispatch strategy vs the CEM mixture; dispatch accuracy; the cost of pass one
next to a plain forward; an expert's parameters beside a rank-4 LoRA's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from cerebrum import Cerebrum
from cerebrum.brain.gpt import GPTLanguageModel
from cerebrum.brain.transformer2 import transformer2_of
from cerebrum.data.tasks import HELD_OUT_TASKS, TRAINING_TASKS, task_mix_text

EVAL_SEED = 999
FEW_SHOT_SEED = 555


def train_base(args) -> GPTLanguageModel:
    torch.manual_seed(args.seed)
    model = GPTLanguageModel(n_layer=args.layers, n_head=4, n_embd=args.width, block_size=64,
                             mlp="relu2", qk_norm=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tasks.txt"
        path.write_text(task_mix_text(TRAINING_TASKS, args.mix_examples, seed=args.seed))
        start = time.perf_counter()
        model.fit(str(path), steps=args.base_steps, batch_size=32, seq_len=64, lr=3e-3,
                  warmup_steps=100, eval_every=None, shuffle_rows=4096, verbose=args.verbose)
        print(f"base: {args.base_steps} steps in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
    return model


def median_seconds(fn, repeat=5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", help="a saved brain file with the base as 'lm' (skips "
                        "training it)")
    parser.add_argument("--save", help="write the adapted model (brain file) here")
    parser.add_argument("--base-steps", type=int, default=1500)
    parser.add_argument("--mix-examples", type=int, default=20000,
                        help="examples per training task in the base's text")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--expert-steps", type=int, default=300)
    parser.add_argument("--expert-lr", type=float, default=5e-2)
    parser.add_argument("--method", choices=["next_token", "reinforce"], default="next_token")
    parser.add_argument("--reinforce-task", choices=[t.name for t in TRAINING_TASKS],
                        help="also train this task's expert by REINFORCE (KL to the base) and "
                        "compare it with the next-token expert")
    parser.add_argument("--reinforce-steps", type=int, default=100)
    parser.add_argument("--kl-coef", type=float, default=0.1)
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--few-shot", type=int, default=16)
    parser.add_argument("--population", type=int, default=12)
    parser.add_argument("--elites", type=int, default=3)
    parser.add_argument("--generations", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()

    if args.base:
        model = Cerebrum.load(args.base).models["lm"]
    else:
        model = train_base(args)
        if args.save:
            brain = Cerebrum()
            brain.add_model(model, "lm")
            brain.save(Path(args.save).with_suffix(".base.cbm"))
    t2 = transformer2_of(model)
    timings = {}
    start = time.perf_counter()
    for task in TRAINING_TASKS:
        t2.train_expert(task, method=args.method, steps=args.expert_steps,
                        lr=args.expert_lr, seed=args.seed)
    timings["experts_s"] = time.perf_counter() - start
    reinforce = None
    if args.reinforce_task:
        task = next(t for t in TRAINING_TASKS if t.name == args.reinforce_task)
        start = time.perf_counter()
        history = t2.train_expert(task, name=f"{task.name}-rl", method="reinforce",
                                  steps=args.reinforce_steps, lr=args.expert_lr,
                                  kl_coef=args.kl_coef, seed=args.seed)
        timings["reinforce_s"] = time.perf_counter() - start
        pairs = task.examples(args.n_eval, seed=EVAL_SEED)
        rewards = history["train"]["reward"]
        reinforce = {"task": task.name, "steps": args.reinforce_steps,
                     "base": t2.accuracy(pairs, None),
                     "next_token_expert": t2.accuracy(pairs, task.name),
                     "reinforce_expert": t2.accuracy(pairs, f"{task.name}-rl"),
                     "reward_first_10": sum(rewards[:10]) / len(rewards[:10]),
                     "reward_last_10": sum(rewards[-10:]) / len(rewards[-10:]),
                     "kl_last": history["train"]["kl"][-1]}
    start = time.perf_counter()
    timings["classifier_train_accuracy"] = t2.fit_classifier(TRAINING_TASKS, seed=args.seed)
    t2.train_classification_expert(TRAINING_TASKS, steps=args.expert_steps,
                                   lr=args.expert_lr, seed=args.seed)
    timings["dispatchers_s"] = time.perf_counter() - start
    cem = {}
    start = time.perf_counter()
    for task in HELD_OUT_TASKS:
        cem[task.name] = t2.search_mixture(
            task.examples(args.few_shot, seed=FEW_SHOT_SEED), name=f"{task.name}-mix",
            experts=[t.name for t in TRAINING_TASKS], population=args.population,
            elites=args.elites, generations=args.generations, seed=args.seed, task=task.spec)
    timings["cem_s"] = time.perf_counter() - start

    experts = [t.name for t in TRAINING_TASKS]
    tasks = [*TRAINING_TASKS, *HELD_OUT_TASKS]
    grid, summary, dispatch = {}, [], {}
    for task in tasks:
        pairs = task.examples(args.n_eval, seed=EVAL_SEED)
        row = {"base": t2.accuracy(pairs, None)}
        for name in experts:
            row[name] = t2.accuracy(pairs, name)
        grid[task.name] = row
        line = {"task": task.name, "held_out": task not in TRAINING_TASKS, "base": row["base"],
                "own_expert": row.get(task.name), "best_expert": max(row[n] for n in experts)}
        for strategy in ("classifier", "expert"):
            t2.dispatch_strategy = strategy
            line[f"dispatch_{strategy}"] = t2.accuracy(pairs, "auto")
            if task in TRAINING_TASKS:
                picks = t2.dispatch([p for p, _ in pairs], strategy)
                dispatch.setdefault(strategy, []).extend(p == task.name for p in picks)
        t2.dispatch_strategy = "classifier"
        if f"{task.name}-mix" in t2.mixtures:
            line["cem_mixture"] = t2.accuracy(pairs, f"{task.name}-mix")
            line["cem_alpha"] = [round(a, 3) for a in cem[task.name]["alpha"]]
        summary.append(line)
    dispatch_accuracy = {k: sum(v) / len(v) for k, v in dispatch.items()}

    # cost: pass one next to one plain forward of the same prompts (batch of 64 prompts)
    prompts = [p for task in TRAINING_TASKS for p, _ in task.examples(16, seed=EVAL_SEED)]
    tok = model.tokenizer
    ids = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor([tok.bos_id, *tok.encode(p)]) for p in prompts], batch_first=True,
        padding_value=tok.pad_id)
    forward_times, adapted_times = [], []
    with torch.no_grad():
        for _ in range(9):  # interleaved, so a busy shared CPU slows both alike
            forward_times.append(median_seconds(lambda: model.token_logits(ids), repeat=1))
            with t2.using("add"):
                adapted_times.append(median_seconds(lambda: model.token_logits(ids), repeat=1))
    forward, adapted = sorted(forward_times)[4], sorted(adapted_times)[4]
    cost = {"forward_ms": 1e3 * forward, "pass_two_forward_ms": 1e3 * adapted,
            "pass_one_classifier_ms": 1e3 * median_seconds(
                lambda: t2.dispatch(prompts, "classifier")),
            "pass_one_expert_ms": 1e3 * median_seconds(lambda: t2.dispatch(prompts, "expert")),
            "prompts": len(prompts)}
    params = {**t2.parameter_counts(4), "base": model.parameter_counts()[0]}
    result = {"grid": grid, "summary": summary, "dispatch_accuracy": dispatch_accuracy,
              "cost": cost, "parameters": params, "timings": timings, "reinforce": reinforce,
              "settings": vars(args), "threads": torch.get_num_threads()}
    if args.save:
        brain = Cerebrum()
        brain.add_model(model, "lm")
        brain.save(args.save)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"\ntask x expert accuracy ({args.n_eval} examples each; * held out)")
    print("| task | base | " + " | ".join(experts) + " |")
    print("|---" * (len(experts) + 2) + "|")
    for task in tasks:
        mark = "*" if task not in TRAINING_TASKS else ""
        print(f"| {task.name}{mark} | " + " | ".join(f"{grid[task.name][c]:.3f}"
                                                    for c in ["base", *experts]) + " |")
    print("\n| task | base | own expert | dispatch: classifier | dispatch: cls expert | "
          "CEM mixture | CEM alpha (add, reverse, sort, max) |")
    print("|---|---|---|---|---|---|---|")
    for line in summary:
        own = "-" if line["own_expert"] is None else f"{line['own_expert']:.3f}"
        mix = f"{line['cem_mixture']:.3f}" if "cem_mixture" in line else "-"
        alpha = ", ".join(map(str, line.get("cem_alpha", []))) or "-"
        print(f"| {line['task']}{'*' if line['held_out'] else ''} | {line['base']:.3f} | "
              f"{own} | {line['dispatch_classifier']:.3f} | {line['dispatch_expert']:.3f} | "
              f"{mix} | {alpha} |")
    print("\ndispatch accuracy on the training tasks: " + ", ".join(
        f"{k} {v:.3f}" for k, v in dispatch_accuracy.items()))
    print(f"cost for {cost['prompts']} prompts: forward {cost['forward_ms']:.1f} ms, pass two "
          f"(cached expert weights) {cost['pass_two_forward_ms']:.1f} ms, pass one: "
          f"classifier {cost['pass_one_classifier_ms']:.1f} ms, classification expert "
          f"{cost['pass_one_expert_ms']:.1f} ms")
    if reinforce:
        print(f"REINFORCE on {reinforce['task']} ({reinforce['steps']} steps, KL weight "
              f"{args.kl_coef}): base {reinforce['base']:.3f}, next-token expert "
              f"{reinforce['next_token_expert']:.3f}, REINFORCE expert "
              f"{reinforce['reinforce_expert']:.3f}; mean reward first 10 steps "
              f"{reinforce['reward_first_10']:.3f}, last 10 {reinforce['reward_last_10']:.3f}")
    print(f"parameters: one expert {params['expert']:,} ({params['matrices']} matrices), "
          f"rank-4 LoRA {params['lora']:,}, base {params['base']:,}")
    print(f"timings: {json.dumps({k: round(v, 3) for k, v in timings.items()})}; "
          f"threads {torch.get_num_threads()} "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})")


if __name__ == "__main__":
    main()
