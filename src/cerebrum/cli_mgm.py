"""`cerebrum mgm`: seed 004's training command line (its `integration_test_runner.py` flags).

    cerebrum mgm --hidden-dim 128 --experts-num 16 --k-experts 4 --num-heads 12 \\
        --dataset-conversational --stage-steps 20 --out runs/mgm

trains an "mgm" model (`cerebrum.brain.mgm`) in the five stages on the selected data subsets
and prints its held-out bits per byte, its answer accuracy on fresh built-in examples, and the
experts' loads and curvatures. The same settings work as `cerebrum train mgm --set KEY=VALUE`
(hidden_dim, experts_num, k_experts, num_heads, lr, seq_len, amp_off, flash_attention_off,
skip_setup, nuanced_routing, stage_steps, ...).

Flags and what they set:
    --hidden-dim, --experts-num, --k-experts, --num-heads, --seq-len   the model (seq_len is
        the context and the training sequence length)
    --learning-rate      lr
    --dataset-cot / --dataset-reasoning / --dataset-conversational [PATH]
                         train on that subset: the built-in generated set
                         (`cerebrum.data.reasoning`), or a JSONL file of your own given as
                         PATH; several flags mix the subsets equally; none: all three built-in
    --sample-size N      examples per built-in subset (default 2000)
    --validation-steps N held-out documents scored at each evaluation (eval_documents)
    --stage-steps N | N1,N2,N3,N4,N5   steps per stage (default 20 each)
    --amp-off            train in float32; --flash-attention-off: the math attention kernel
    --skip-setup         skip curvature calibration, and resume the run in --out if it has
                         a checkpoint
    --nuanced-routing    curvature-aware gate
    --out DIR            the run directory (checkpoints, metrics.jsonl, the built-in data)
"""

from __future__ import annotations

import argparse
from pathlib import Path

SUBSET_FLAGS = ("cot", "reasoning", "conversational")
BUILTIN = "builtin"


def _stage_steps(text: str):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--stage-steps expects N or N1,N2,N3,N4,N5, got {text!r}") from None
    return values[0] if len(values) == 1 else values


def add_command(subparsers) -> None:
    """Add the `mgm` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "mgm", help="train a mixture of geometric experts with seed 004's flags",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--hidden-dim", type=int, default=128)
    model.add_argument("--experts-num", type=int, default=16)
    model.add_argument("--k-experts", type=int, default=2)
    model.add_argument("--num-heads", type=int, default=4)
    model.add_argument("--n-layer", type=int, default=4)
    model.add_argument("--seq-len", type=int, default=128)
    model.add_argument("--memory-slots", type=int, default=16)
    model.add_argument("--memory-width", type=int, default=128)
    model.add_argument("--nuanced-routing", action="store_true")
    model.add_argument("--flash-attention-off", action="store_true")
    data = parser.add_argument_group("data")
    for name in SUBSET_FLAGS:
        data.add_argument(f"--dataset-{name}", nargs="?", const=BUILTIN, default=None,
                          metavar="PATH", help=f"train on the {name} subset (built-in, or "
                          "your JSONL file)")
    data.add_argument("--sample-size", type=int, default=2000,
                      help="examples per built-in subset")
    train = parser.add_argument_group("training")
    train.add_argument("--learning-rate", type=float, default=3e-3)
    train.add_argument("--stage-steps", type=_stage_steps, default=20)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--validation-steps", type=int, default=8,
                       help="held-out documents scored at each evaluation")
    train.add_argument("--amp-off", action="store_true")
    train.add_argument("--skip-setup", action="store_true")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--answers", type=int, default=20,
                       help="fresh built-in examples to measure answer accuracy on (0: none)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--out", default="runs/mgm", help="run directory")
    parser.set_defaults(handler=run)


def _corpus(args):
    from cerebrum.data import Corpus
    from cerebrum.data.reasoning import generate_examples, write_jsonl

    chosen = {name: getattr(args, f"dataset_{name}") for name in SUBSET_FLAGS}
    if not any(chosen.values()):
        chosen = dict.fromkeys(SUBSET_FLAGS, BUILTIN)
    if isinstance(args.sample_size, bool) or args.sample_size < 1:
        raise ValueError(f"--sample-size must be >= 1, got {args.sample_size}")
    subsets = {}
    for name, source in chosen.items():
        if source is None:
            continue
        if source == BUILTIN:
            path = Path(args.out) / "data" / f"{name}.jsonl"
            write_jsonl(generate_examples(name, args.sample_size, args.seed), path)
            subsets[name] = [str(path)]
        else:
            if not Path(source).is_file():
                raise FileNotFoundError(f"--dataset-{name}: no such file: {source}")
            subsets[name] = [source]
    return Corpus(subsets, validation=0.05, test=0.01), [
        n for n, s in chosen.items() if s == BUILTIN]


def run(args) -> int:
    """The `mgm` subcommand's handler: train, then report."""
    import torch

    from cerebrum.brain.language_model import from_checkpoint
    from cerebrum.brain.mgm import MGMLanguageModel
    from cerebrum.data.reasoning import answer_accuracy, generate_examples
    from cerebrum.train.engine import latest_checkpoint

    out = Path(args.out)
    corpus, builtin = _corpus(args)
    resume = False
    if args.skip_setup and out.is_dir():
        try:
            latest_checkpoint(out)
            resume = True
        except FileNotFoundError:
            resume = False
    if resume:
        model = from_checkpoint(out)
        if model.family != "mgm":
            raise ValueError(f"{out} is a run of family {model.family!r}, not 'mgm'")
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            model = MGMLanguageModel(
                seq_len=args.seq_len, hidden_dim=args.hidden_dim, experts_num=args.experts_num,
                k_experts=args.k_experts, num_heads=args.num_heads, n_layer=args.n_layer,
                memory_slots=args.memory_slots, memory_width=args.memory_width,
                nuanced_routing=args.nuanced_routing,
                flash_attention_off=args.flash_attention_off)
    stages = args.stage_steps
    total = sum(stages) if isinstance(stages, list) else 5 * stages
    shortest = min(stages) if isinstance(stages, list) else stages
    model.fit(corpus, out_dir=out, resume=resume, verbose=not args.quiet,
              stage_steps=stages, steps=total, lr=args.learning_rate,
              batch_size=args.batch_size, seq_len=args.seq_len,
              eval_documents=args.validation_steps, eval_every=max(1, total // 4),
              amp_off=args.amp_off, skip_setup=args.skip_setup, random_state=args.seed,
              warmup_steps=max(1, min(10, shortest // 2)))
    history = model.history_
    loss = history["train"]["loss"][-1]
    print(f"done: step {history['train']['step'][-1]}, loss {loss:.4f}, checkpoints in {out}")
    evals = history.get("eval") or {}
    if evals.get("bits_per_byte"):
        print(f"held-out bits per byte: {evals['bits_per_byte'][-1]:.4f}")
    total_params, active = model.parameter_counts()
    print(f"parameters: {total_params:,} total, {active:,} active per token")
    loads = [history["train"][f"load_e{j}"][-1] for j in range(model.config.experts_num)]
    types = model.mgm.config.expert_types()
    print("expert load: " + ", ".join(f"{j}:{t}={v:.1%}" for j, (t, v) in
                                      enumerate(zip(types, loads, strict=True))))
    curvatures = model.curvatures()[0]
    print("curvatures (layer 0): " + ", ".join(
        f"{j}:{','.join(f'{k:+.3f}' for k in ks)}" for j, ks in enumerate(curvatures) if ks))
    if args.answers and builtin:
        per_kind = max(1, args.answers // len(builtin))
        examples = [e for kind in builtin
                    for e in generate_examples(kind, per_kind, seed=args.seed + 1_000_003)]
        print(f"answer accuracy ({len(examples)} fresh built-in examples): "
              f"{answer_accuracy(model, examples):.1%}")
    return 0
