"""`cerebrum adapt`: Transformer² experts for a trained language model of any family.

    cerebrum adapt runs/base --task add=add --task rev=reverse --out adapted.cbm
    cerebrum adapt adapted.cbm --held-out add3=add:digits=3 --out adapted.cbm
    cerebrum adapt adapted.cbm --prompt "47+38=" --adapt auto

RUN is a run directory or checkpoint of `cerebrum train` (any family), or a model file
written by this command (or `Cerebrum.export_model`). Each `--task NAME=SPEC` trains an SVF
expert named NAME (SPEC: a generated task, `add`, `sub`, `reverse`, `sort`, `rsort`, `max`,
`min`, with options such as `add:digits=3`, or `corpus:PATH`, a file or folder of text; see
`cerebrum.data.tasks`) with the base frozen. With two or more checkable tasks the dispatchers
are fitted too (`--dispatch`: the classifier on pass-one hidden states, the classification
expert, both, or none). Each `--held-out NAME=SPEC` runs the few-shot CEM search of mixture
coefficients over the experts and saves the mixture as NAME. The experts, mixtures and
dispatchers are saved inside the model file `--out` (a model file RUN is rewritten in place
without `--out`). The report gives each checkable task's exact-answer accuracy, base vs
expert or mixture, on fresh examples. `--prompt` generates with `--adapt` (auto, a name, or
none) after any training.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_command(subparsers) -> None:
    """Add the `adapt` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "adapt", help="train Transformer² (SVF) experts and dispatchers for a language model",
        description=__doc__.split("\n\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="RUN")
    parser.add_argument("--task", action="append", default=[], metavar="NAME=SPEC",
                        help="train an expert NAME on SPEC (repeatable)")
    parser.add_argument("--held-out", action="append", default=[], metavar="NAME=SPEC",
                        help="CEM-search a mixture NAME of the experts for SPEC (repeatable)")
    parser.add_argument("--out", help="the model file to write (with the experts)")
    parser.add_argument("--method", choices=["next_token", "reinforce"], default="next_token")
    parser.add_argument("--steps", type=int, default=200, help="steps per expert")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-2)
    parser.add_argument("--kl-coef", type=float, default=0.1,
                        help="REINFORCE: weight of KL(pi || base)")
    parser.add_argument("--targets", default=None,
                        help="adapted matrices: mlp (default), attention, all, or "
                        "comma-separated module-name patterns (only for a model without "
                        "experts yet)")
    parser.add_argument("--dispatch", choices=["classifier", "expert", "both", "none"],
                        default="both")
    parser.add_argument("--few-shot", type=int, default=16)
    parser.add_argument("--population", type=int, default=12)
    parser.add_argument("--elites", type=int, default=3)
    parser.add_argument("--generations", type=int, default=6)
    parser.add_argument("--n-eval", type=int, default=100,
                        help="fresh examples per checkable task in the report (0: none)")
    parser.add_argument("--prompt", help="generate from this prompt afterwards")
    parser.add_argument("--adapt", default="auto", help="with --prompt: auto, an expert or "
                        "mixture name, or none")
    parser.add_argument("-n", "--max-new-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true")
    parser.set_defaults(handler=run)


def load_model(run):
    """The language model of a model file, a run directory or a checkpoint."""
    from cerebrum.brain import persistence
    from cerebrum.brain.language_model import LanguageModel, from_checkpoint
    from cerebrum.exceptions import CerebrumFileError

    path = Path(run)
    if path.is_file():
        try:
            _, record, tensors = persistence.read_file(path, expect=("model",))
        except CerebrumFileError:
            pass  # not a model file: a checkpoint
        else:
            model = persistence.model_from_record(record, tensors, source=str(path))
            persistence.check_every_tensor_is_claimed(record, tensors, path)
            if not isinstance(model, LanguageModel):
                raise ValueError(f"RUN {run}: holds a {type(model).__name__}, not a language "
                                 "model")
            return model, True
    if not path.exists():
        raise FileNotFoundError(f"RUN {run}: no such run directory, checkpoint or model file")
    return from_checkpoint(path), False


def save_model(model, path) -> Path:
    """Write `model` (with its experts) as a model file."""
    from cerebrum.brain import persistence

    tensors: dict = {}
    record = persistence.model_record(model, "m", tensors)
    record["entry_id"] = "model"
    return persistence.write_file(path, "model", record, tensors)


def run(args) -> int:
    from cerebrum.brain.transformer2 import transformer2_of
    from cerebrum.data.tasks import parse_task_argument

    tasks = [parse_task_argument(t) for t in args.task]  # bad specs fail before loading
    held_out = [parse_task_argument(t) for t in args.held_out]
    names = [t.name for t in tasks + held_out]
    if len(set(names)) != len(names):
        raise ValueError(f"--task / --held-out names must be unique, got {names}")
    for task in held_out:
        if not task.checkable:
            raise ValueError(f"--held-out {task.name}: CEM needs a task with checkable "
                             f"answers, got {task.spec}")
    for value, name in ((args.steps, "--steps"), (args.batch_size, "--batch-size"),
                        (args.few_shot, "--few-shot")):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    model, is_model_file = load_model(args.run)
    out = args.out or (args.run if is_model_file else None)
    if (tasks or held_out) and out is None:
        raise ValueError("--out FILE is needed: RUN is a training run, and the experts are "
                         "saved in a model file")
    existing = transformer2_of(model, create=False)
    if args.targets is not None and existing is not None and existing.experts:
        raise ValueError("--targets: this model has experts on other matrices already")
    targets = None if args.targets is None else (
        args.targets if "," not in args.targets and args.targets in ("mlp", "attention", "all")
        else [p for p in args.targets.split(",") if p])
    t2 = existing or transformer2_of(model, targets=targets)
    counts = t2.parameter_counts(4)
    print(f"{model.family}: {counts['matrices']} adapted matrices; one expert has "
          f"{counts['expert']:,} parameters (a rank-4 LoRA on them: {counts['lora']:,})")
    for task in tasks:
        t2.train_expert(task, method=args.method, steps=args.steps,
                        batch_size=args.batch_size, lr=args.lr, kl_coef=args.kl_coef,
                        seed=args.seed, verbose=args.verbose)
        print(f"expert {task.name}: trained on {task.spec} ({args.method}, {args.steps} steps)")
    checkable = [t for t in tasks if t.checkable]
    if len(checkable) >= 2 and args.dispatch != "none":
        if args.dispatch in ("classifier", "both"):
            accuracy = t2.fit_classifier(checkable, seed=args.seed)
            print(f"classifier dispatcher: training accuracy {accuracy:.3f}")
        if args.dispatch in ("expert", "both"):
            t2.train_classification_expert(checkable, steps=args.steps,
                                           batch_size=args.batch_size, lr=args.lr,
                                           seed=args.seed, verbose=args.verbose)
            print("classification expert: trained")
        t2.dispatch_strategy = "expert" if args.dispatch == "expert" else "classifier"
    for task in held_out:
        result = t2.search_mixture(task.examples(args.few_shot, seed=args.seed + 555),
                                   name=task.name, population=args.population,
                                   elites=args.elites, generations=args.generations,
                                   seed=args.seed, task=task.spec)
        alpha = ", ".join(f"{n}={a:.3f}" for n, a in zip(t2.mixtures[task.name]["experts"],
                                                          result["alpha"], strict=True))
        print(f"mixture {task.name}: {alpha} (few-shot log-likelihood per token "
              f"{result['fitness']:.4f})")
    if args.n_eval and (checkable or held_out):
        print("accuracy on fresh examples (exact greedy answers):")
        for task in checkable + held_out:
            pairs = task.examples(args.n_eval, seed=args.seed + 999)
            print(f"  {task.name}: base {t2.accuracy(pairs, None):.3f}, "
                  f"{task.name} {t2.accuracy(pairs, task.name):.3f}")
    if out is not None and (tasks or held_out):
        print(f"wrote {save_model(model, out)}")
    if args.prompt is not None:
        adapt = None if args.adapt == "none" else args.adapt
        if adapt == "auto":
            print(f"pass one dispatched to: {t2.resolve('auto', args.prompt)}")
        print(model.generate(args.prompt, args.max_new_tokens, temperature=0, adapt=adapt))
    return 0
