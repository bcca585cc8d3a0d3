"""`cerebrum neat`: seed 003's command line (`python main.py --mode ...` there).

    cerebrum neat --mode train --use_titans_memory --use_blt_processor --mixed_precision \\
        --gradient_checkpointing --dynamic_component_activation --batch_size 8 \\
        --max_steps 1000 --output_dir ./outputs
    cerebrum neat --mode eval --model_path ./outputs/best_model --batch_size 16
    cerebrum neat --mode profile --use_titans_memory --use_blt_processor [--json]

train: trains the "neat" family (the switches given; other settings from --set KEY=VALUE,
model or fit arguments) on --corpus (default: the built-in corpus); checkpoints go to
--output_dir and the final model to OUTPUT_DIR/best_model (a run directory `eval` and
`cerebrum eval` read). eval: bits per byte of --model_path on its run's held-out text.
profile: for the plain byte transformer, each component given alone and all of them
together (and, with --dynamic_component_activation, the combination with it): parameters,
forward + backward time per byte, peak memory and FLOPs per byte (forward + backward,
counted by `torch.utils.flop_counter`), as a table or --json. Peak memory is the CUDA
allocator's peak on a GPU; on a CPU it is the bytes of the weights, their gradients and the
activations saved for the backward pass (counted with saved-tensor hooks).

`--use_mvot_processor` trains on MVoT's interleaved grid-world puzzles (docs/neat.md);
eval of such a model reports task and visualisation accuracy on held-out puzzles and, with
`--images DIR`, writes each puzzle's true and imagined trajectories as PNG strips; profile
adds its row (the network on interleaved sequences with L_D).
`--use_transformer2_adaptation` trains SVF experts and the dispatcher after the network
(`adaptation_tasks`, `adaptation_steps`); eval adds each expert task's accuracy, base vs
expert vs two-pass dispatch; profile adds its row (an expert's training step: the forward
with adapted weights, gradients to the singular-value scales alone).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

SWITCHES = ("use_titans_memory", "use_blt_processor", "mixed_precision",
            "gradient_checkpointing", "dynamic_component_activation", "use_mvot_processor",
            "use_transformer2_adaptation")
#: The components `--mode profile` measures alone and together.
COMPONENTS = ("use_blt_processor", "use_titans_memory", "use_mvot_processor",
              "use_transformer2_adaptation")
#: The size `--mode profile` measures unless --set says otherwise.
PROFILE_MODEL = dict(block_size=256, n_layer=4, n_head=4, n_embd=128)


def add_command(subparsers) -> None:
    """Add the `neat` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "neat", help="seed 003's NEAT byte model: train, eval or profile its components",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--mode", choices=["train", "eval", "profile"], required=True)
    for name in SWITCHES:
        parser.add_argument(f"--{name}", action="store_true")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--max_steps", type=int, default=None)
    parser.add_argument("--output_dir", default="./outputs")
    parser.add_argument("--model_path", default=None)
    parser.add_argument("--corpus", action="append", metavar="PATH",
                        help="training / scoring text (repeatable; default the built-in corpus)")
    parser.add_argument("--validation", type=float, default=None, metavar="F",
                        help="fraction of --corpus held out for validation (default 0.01)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                        help="a model or fit setting of the neat family (repeatable)")
    parser.add_argument("--max_documents", type=int, default=16,
                        help="eval: held-out documents scored")
    parser.add_argument("--repeats", type=int, default=3, help="profile: timed repetitions")
    parser.add_argument("--puzzles", type=int, default=120,
                        help="eval of an MVoT model: held-out puzzles solved")
    parser.add_argument("--images", default=None, metavar="DIR",
                        help="eval of an MVoT model: write true / imagined trajectories as PNG")
    parser.add_argument("--json", action="store_true", help="profile: print JSON")
    parser.set_defaults(handler=run)


def _overrides(args) -> dict:
    from cerebrum.cli import parse_overrides  # loaded already: cli imports this module

    return parse_overrides(args.overrides)


def run(args) -> int:
    """The handler of `cerebrum neat`."""
    for name in ("batch_size", "max_steps", "max_documents", "repeats", "puzzles"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    return {"train": _train, "eval": _eval, "profile": _profile}[args.mode](args)


def _corpus(args):
    from cerebrum.data import Corpus

    if not args.corpus:
        if args.validation is not None:
            raise ValueError("--validation applies to --corpus files")
        return None
    options = {} if args.validation is None else {"validation": args.validation}
    return Corpus(args.corpus, **options)


def _train(args) -> int:
    import torch

    from cerebrum.brain import registry

    family = registry.get("neat")
    settings = {**{n: True for n in SWITCHES if getattr(args, n)}, **_overrides(args)}
    if args.batch_size is not None:
        settings["batch_size"] = args.batch_size
    if args.max_steps is not None:
        settings["steps"] = args.max_steps
    config_fields, fit_kwargs = family.split_arguments(settings)
    seed = fit_kwargs.get("random_state", 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = family.build(family.make_config(config_fields))
    fit_kwargs.setdefault("verbose", True)
    out = Path(args.output_dir)
    model.fit(_corpus(args), out_dir=out, **fit_kwargs)
    from cerebrum.brain.language_model import checkpoint_path

    best = out / "best_model"
    best.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(out)
    shutil.copy(final, best / final.name)
    history = model.history_
    print(f"done: step {history['train']['step'][-1]}, loss {history['train']['loss'][-1]:.4f}; "
          f"checkpoints in {out}, final model in {best}")
    return 0


def _eval(args) -> int:
    from cerebrum.brain.language_model import from_checkpoint, texts_of
    from cerebrum.data import Corpus, default_corpus

    if args.model_path is None:
        raise ValueError("--mode eval needs --model_path (a run directory or checkpoint)")
    model = from_checkpoint(args.model_path)
    if getattr(model, "mvot", None) is not None:
        return _eval_mvot(model, args)
    corpus = _corpus(args)
    if corpus is None:
        corpus = Corpus.from_dict(model.corpus_) if model.corpus_ else default_corpus()
    texts = list(texts_of(corpus, "validation", max_documents=args.max_documents))
    if not texts:
        raise ValueError(f"the validation split of {corpus.describe()} holds no documents")
    print(f"{model.bits_per_byte(texts):.4f}  bits per byte ({len(texts)} held-out documents "
          f"of {corpus.describe()})")
    for name, value in model.evaluation_rows(texts):  # Transformer²: task accuracies
        print(f"{value}  {name}")
    return 0


def _eval_mvot(model, args) -> int:
    from cerebrum.data.gridworld import write_strips

    report = model.mvot_report(args.puzzles)
    visual = report["visualization_accuracy"]
    print(f"task accuracy {report['task_accuracy']:.3f} ({args.puzzles} held-out puzzles, "
          f"task {model.config.mvot_task!r})"
          + ("" if visual is None else f"; visualisation accuracy {visual:.3f}")
          + f"; VQ-VAE cell accuracy {report['cell_accuracy']:.4f}, codes used "
          f"{report['used']:.2f}")
    if args.images:
        truth = [f for r in report["results"] for f in r["batch"]["frames"]]
        imagined = [_with_prompt_image(r["batch"]["frames"][i, :1], images)
                    for r in report["results"] for i, images in enumerate(r["images"])]
        paths = write_strips(args.images, truth, imagined)
        print(f"{len(paths)} PNG strips in {args.images} (top: true states; below: the "
              "prompt's image and the imagined ones)")
    return 0


def _with_prompt_image(first, images):
    """The prompt's image (1, 3, H, W) followed by the generated ones (n, 3, H, W): the
    imagined row of a strip."""
    import torch

    return torch.cat([first.cpu(), images.cpu()])


def profile_rows(args) -> list[dict]:
    """The profile table's rows (see the module docstring)."""
    components = [n for n in COMPONENTS if getattr(args, n)]
    if not components:
        components = list(COMPONENTS)
    engineering = {n: True for n in ("mixed_precision", "gradient_checkpointing")
                   if getattr(args, n)}
    combos = [("byte transformer", {})]
    combos += [(name.removeprefix("use_"), {name: True}) for name in components]
    if len(components) > 1:
        combos.append(("+".join(c.removeprefix("use_") for c in components),
                       dict.fromkeys(components, True)))
    if args.dynamic_component_activation:
        combos.append((combos[-1][0] + "+dynamic",
                       {**combos[-1][1], "dynamic_component_activation": True}))
    settings = {**PROFILE_MODEL, **_overrides(args)}
    return [measure(name, {**settings, **engineering, **switches},
                    batch_size=args.batch_size or 8, repeats=args.repeats)
            for name, switches in combos]


def measure(name: str, settings: dict, *, batch_size: int = 8, repeats: int = 3,
            device=None) -> dict:
    """Parameters, forward + backward seconds per byte, peak memory and FLOPs per byte of
    one "neat" configuration on random bytes (batch_size x block_size)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cerebrum.brain.neat import NEATLanguageModel

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    model = NEATLanguageModel(**settings).to(device)
    model.train()
    net = model.net
    if net.entropy_model is not None:
        net.threshold.fill_(0.0)  # set, so the profile times entropy patching (calibrated below)
    T = model.config.block_size
    batch = torch.randint(0, 256, (batch_size, T + 1), device=device,
                          generator=torch.Generator(device=device).manual_seed(0))
    if model.mvot is not None:  # interleaved puzzles (untrained codebook): L_C + lambda L_D
        batch = model.mvot.sequences(model.mvot.sample_batch(batch_size, device=device))
        T = batch.shape[1] - 1
    if net.entropy_model is not None:
        net.calibrate(batch[:, :-1])

    def step():
        model.zero_grad(set_to_none=True)
        _, loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()

    if model.config.use_transformer2_adaptation:
        # Transformer²'s training step: the network frozen, the forward with weights adapted
        # by an expert's z (recomposed from the cached SVD), gradients to z alone
        from cerebrum.brain.transformer2 import expert_step

        model.requires_grad_(False)
        step, _ = expert_step(model, lambda: model(batch[:, :-1], batch[:, 1:])[1])

    step()  # warm-up
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step()
        peak = torch.cuda.max_memory_allocated(device)
    else:
        saved = [0]

        def pack(tensor):
            saved[0] += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step()
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        peak = saved[0] + 2 * weights
    n_bytes = batch_size * T
    stats = net.last_stats
    total, _ = model.parameter_counts()
    return {"name": name, "parameters": total,
            "seconds_per_kbyte": 1000 * sorted(times)[len(times) // 2] / n_bytes,
            "peak_mb": peak / 2**20, "flops_per_byte": flops / n_bytes,
            "mean_patch_size": stats.get("mean_patch_size", 1.0),
            "memory_write_share": (float(stats["writes"]) / max(1, stats["positions"]
                                                                * batch_size)
                                   if "writes" in stats else None),
            "device": device.type}


def _profile(args) -> int:
    rows = profile_rows(args)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("component", "params", "ms/kB f+b", "peak MB", "MFLOP/B", "patch", "writes")
    table = [(r["name"], f"{r['parameters']:,}", f"{r['seconds_per_kbyte'] * 1000:.2f}",
              f"{r['peak_mb']:.1f}", f"{r['flops_per_byte'] / 1e6:.2f}",
              f"{r['mean_patch_size']:.2f}",
              "-" if r["memory_write_share"] is None else f"{r['memory_write_share']:.2f}")
             for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *table, strict=True)]
    for row in (header, *table):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    kind = ("CUDA allocator peak" if rows[0]["device"] == "cuda"
            else "weights + gradients + saved activations")
    print(f"(device: {rows[0]['device']}; peak memory: {kind})")
    return 0
