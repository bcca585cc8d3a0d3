"""Ablations of the calm family (seed 002): loss type x head x latent-model input x SSM kind,
each variant's latent model trained for the same wall-clock budget on one shared autoencoder.

The seed runs `for loss_type in ["calm", "rf", "calm_rf"]: main()`. Here the autoencoder (phase
1) is trained once, for --ae-minutes, with the family's leaderboard settings (or --set
overrides), and every variant's latent model (phase 2) then trains on that same frozen
autoencoder for --minutes (the step count planned from a short throughput probe of that
variant, like bench/lm.py), so the rows differ only in what the variant changes. Each row
reports, on the same held-out documents: BrierLM (two-sample estimator, the fixed 64-token
context), d_fid, d_div, the energy and RF terms and the gate mean (held-out, as in training),
and the shared autoencoder's token and chunk accuracy (with and without noise on z).

    python bench/calm_ablation.py --minutes 3 --ae-minutes 3             # the default grid
    python bench/calm_ablation.py --steps 300 --ae-steps 4000            # equal step budgets
    python bench/calm_ablation.py --minutes 0.2 --ae-minutes 0.2 --json  # a smoke test
    python bench/calm_ablation.py --variants loss_type=calm loss_type=rf,head=calm
    python bench/calm_ablation.py --set tokenizer=bytes --set K=2
    python bench/calm_ablation.py --minutes 2 --device cuda                # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from cerebrum.brain.calm import CALMLanguageModel
from cerebrum.brain.language_model import as_corpus, texts_of
from cerebrum.data.tokenizers import tokenizer_from_dict

#: The default grid: the seed's three loss types on the leaderboard base (CALM's head, token
#: input, conv SSM), then each option changed alone on the energy loss: the seed's gated head,
#: the seed's z input, the diagonal SSM.
DEFAULT_VARIANTS = (
    "loss_type=calm", "loss_type=rf", "loss_type=calm_rf",
    "loss_type=calm,head=gated", "loss_type=calm,lm_input=z", "loss_type=calm,ssm=diag",
)
PROBE_STEPS = 10
BUDGET_MARGIN = 0.95


def parse_assignments(items, what: str) -> dict:
    """["KEY=VALUE", ...] -> {KEY: VALUE}, VALUE read as JSON when it parses."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{what} expects KEY=VALUE, got {item!r}")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        out[key] = value
    return out


def fit_latent(model, corpus, steps: int, training: dict, seed: int) -> float:
    """Train `model`'s latent model for `steps` steps (its autoencoder frozen); seconds."""
    start = time.perf_counter()
    model.fit(corpus, steps=steps, ae_steps=0, lm_steps=steps, random_state=seed,
              eval_every=None, checkpoint_every=10**9, warmup_steps=min(100, steps // 10),
              verbose=False, **training)
    return time.perf_counter() - start


def run_variant(variant: dict, base: dict, autoencoder_state: dict, tokenizer, corpus,
                training: dict, minutes: float, texts, seed: int, brier_positions: int,
                device=None, steps: int | None = None) -> dict:
    """One row: the variant's latent model trained for about `minutes` (or exactly `steps`
    steps) on the shared autoencoder, then scored."""
    config = {**base, **variant}

    def fresh():
        torch.manual_seed(seed)
        model = CALMLanguageModel(**config).to(device)
        model.tokenizer = tokenizer
        model.autoencoder.load_state_dict(autoencoder_state)
        return model

    if steps is None:
        probe = fresh()
        fit_latent(probe, corpus, PROBE_STEPS, training, seed)
        rates = probe.history_["train"]["tokens_per_s"][2:]  # after the warm-up steps
        tokens = training["batch_size"] * training.get("seq_len", probe.context_length)
        per_step = sum(tokens / r for r in rates) / len(rates)
        steps = max(2, int(minutes * 60 * BUDGET_MARGIN / per_step))
    model = fresh()
    seconds = fit_latent(model, corpus, steps, training, seed)
    latent = model.latent_report(texts)
    brier = model.brier_scores(texts, max_positions=brier_positions)
    return {"variant": variant, "steps": steps, "seconds": seconds,
            "brier_lm": brier["brier_lm"],
            **{f"brier_{n}": brier[f"brier_{n}"] for n in range(1, 5)},
            **{k: latent.get(k, float("nan")) for k in ("d_fid", "d_div", "energy", "rf",
                                                        "gate_mean")},
            "fidelity_by_position": latent["fidelity_by_position"]}


AE_FIELDS = ("tokenizer", "vocab_size", "K", "latent_dim", "ae_width", "ae_depth", "kl_weight",
             "kl_free_bits", "token_dropout", "z_dropout")


def train_autoencoder(base: dict, training: dict, corpus, seed: int, device, ae_steps,
                      ae_minutes: float):
    """The shared autoencoder: a probe (which trains the tokenizer and measures the speed),
    then `ae_steps` steps (None: as many as fit in `ae_minutes`). Returns (model, tokenizer,
    steps, seconds, probe seconds)."""
    torch.manual_seed(seed)
    shared = CALMLanguageModel(**base).to(device)
    start = time.perf_counter()
    shared.fit(corpus, steps=PROBE_STEPS, ae_steps=PROBE_STEPS, lm_steps=0, random_state=seed,
               eval_every=None, checkpoint_every=10**9, warmup_steps=1, **training)
    setup = time.perf_counter() - start
    rates = shared.history_["train"]["tokens_per_s"][2:]
    tokens = training["batch_size"] * training.get("seq_len", shared.context_length)
    ae_steps = ae_steps or max(2, int(ae_minutes * 60 * BUDGET_MARGIN / (
        sum(tokens / r for r in rates) / len(rates))))
    tokenizer = shared.tokenizer
    torch.manual_seed(seed)
    shared = CALMLanguageModel(**base).to(device)
    shared.tokenizer = tokenizer
    start = time.perf_counter()
    shared.fit(corpus, steps=ae_steps, ae_steps=ae_steps, lm_steps=0, random_state=seed,
               eval_every=None, checkpoint_every=10**9, warmup_steps=min(100, ae_steps // 10),
               verbose=False, **training)
    return shared, tokenizer, ae_steps, time.perf_counter() - start, setup


def save_autoencoder(path: str, model, base: dict, steps: int, seconds: float) -> None:
    """The trained autoencoder, its tokenizer and how it was made, for a later run."""
    torch.save({"autoencoder": model.autoencoder.state_dict(),
                "tokenizer": model.tokenizer.to_dict(),
                "config": {k: base.get(k) for k in AE_FIELDS}, "steps": steps,
                "seconds": seconds}, path)


def load_autoencoder(path: str, base: dict, device):
    """A saved autoencoder (`save_autoencoder`), checked against the base's autoencoder
    fields. Returns (model, tokenizer, steps, seconds, 0.0)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    wanted = {k: base.get(k) for k in AE_FIELDS}
    if saved["config"] != wanted:
        raise SystemExit(f"{path} holds an autoencoder of {saved['config']}, not {wanted}")
    shared = CALMLanguageModel(**base).to(device)
    shared.tokenizer = tokenizer_from_dict(saved["tokenizer"])
    shared.autoencoder.load_state_dict(saved["autoencoder"])
    return shared, shared.tokenizer, saved["steps"], saved["seconds"], 0.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0,
                        help="latent-phase budget of each variant (default 3)")
    parser.add_argument("--ae-minutes", type=float, default=None,
                        help="budget of the shared autoencoder (default: --minutes)")
    parser.add_argument("--steps", type=int, default=None,
                        help="train each variant's latent model for exactly this many steps "
                        "(an equal step budget; replaces --minutes)")
    parser.add_argument("--ae-steps", type=int, default=None,
                        help="train the shared autoencoder for exactly this many steps "
                        "(replaces --ae-minutes)")
    parser.add_argument("--autoencoder", default=None, metavar="PATH",
                        help="reuse the shared autoencoder saved at PATH; if PATH does not "
                        "exist, train it and save it there")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                        metavar="K=V[,K=V]", help="the rows: model fields changed per variant")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change the base model or the training (repeatable)")
    parser.add_argument("--corpus", action="append", metavar="PATH",
                        help="train and score on these files or folders (default: the Python "
                        "standard library)")
    parser.add_argument("--eval-documents", type=int, default=8)
    parser.add_argument("--brier-positions", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None,
                        help="train and score on this device (default: the CPU)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or (args.ae_minutes is not None and args.ae_minutes <= 0):
        raise SystemExit("--minutes and --ae-minutes must be > 0")
    if any(n is not None and n < 2 for n in (args.steps, args.ae_steps)):
        raise SystemExit("--steps and --ae-steps must be >= 2")
    ae_minutes = args.minutes if args.ae_minutes is None else args.ae_minutes

    settings = CALMLanguageModel.leaderboard_settings
    base, training = dict(settings["model"]), dict(settings["fit"])
    training.pop("ae_steps", None)
    training.pop("lm_steps", None)
    fit_fields = {f for f in CALMLanguageModel.fit_config_class.__dataclass_fields__}
    for key, value in parse_assignments(args.set, "--set").items():
        (training if key in fit_fields else base)[key] = value
    if base.get("tokenizer") == "bytes":
        base["vocab_size"] = 259
    variants = [parse_assignments(v.split(","), "--variants") for v in args.variants]

    corpus = as_corpus(args.corpus)
    texts = list(texts_of(corpus, "validation", max_documents=args.eval_documents))
    if not texts:
        raise SystemExit(f"{corpus.describe()} has no validation documents")

    if args.autoencoder and os.path.exists(args.autoencoder):
        shared, tokenizer, ae_steps, ae_seconds, setup = load_autoencoder(args.autoencoder,
                                                                          base, args.device)
    else:
        shared, tokenizer, ae_steps, ae_seconds, setup = train_autoencoder(
            base, training, corpus, args.seed, args.device, args.ae_steps, ae_minutes)
        if args.autoencoder:
            save_autoencoder(args.autoencoder, shared, base, ae_steps, ae_seconds)
    ae_report = shared.autoencoder_accuracy(texts)
    ae_state = {k: v.clone() for k, v in shared.autoencoder.state_dict().items()}

    rows = [run_variant(v, base, ae_state, tokenizer, corpus, training, args.minutes, texts,
                        args.seed, args.brier_positions, args.device, args.steps)
            for v in variants]
    result = {"base": base, "training": training, "corpus": corpus.describe(),
              "device": str(args.device or "cpu"),
              "threads": torch.get_num_threads(), "setup_seconds": setup,
              "autoencoder": {"steps": ae_steps, "seconds": ae_seconds,
                              "accuracy": {str(k): v for k, v in ae_report.items()}},
              "minutes_per_variant": None if args.steps else args.minutes,
              "steps_per_variant": args.steps, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    acc0, acc3 = ae_report[0.0], ae_report[0.3]
    print(f"calm ablation on {result['corpus']}: shared autoencoder {ae_steps} steps in "
          f"{ae_seconds:.0f} s, held-out token / chunk accuracy {100 * acc0['token_accuracy']:.2f}"
          f"% / {100 * acc0['chunk_accuracy']:.2f}% (noise 0.3 on z: "
          f"{100 * acc3['token_accuracy']:.2f}% / {100 * acc3['chunk_accuracy']:.2f}%); each "
          f"variant's latent model " + (f"{args.steps} steps" if args.steps else
                                        f"{args.minutes:g} min") +
          f" ({result['threads']} threads)")
    header = (f"{'loss':<8} {'head':<6} {'input':<7} {'ssm':<5} {'steps':>6} {'BrierLM':>8} "
              f"{'d_fid':>7} {'d_div':>7} {'rf':>6} {'gate':>5} {'AE tok%':>8}")
    print(header)
    print("-" * len(header))
    for row in rows:
        config = {**base, **row["variant"]}
        gate = row["gate_mean"]
        print(f"{config['loss_type']:<8} {config['head']:<6} {config['lm_input']:<7} "
              f"{config['ssm']:<5} {row['steps']:>6} {row['brier_lm']:>8.2f} "
              f"{row['d_fid']:>7.3f} {row['d_div']:>7.3f} {row['rf']:>6.3f} "
              f"{'-' if gate != gate else f'{gate:.2f}':>5} "
              f"{100 * acc0['token_accuracy']:>8.2f}")


if __name__ == "__main__":
    main()
