"""The `cerebrum` command line (also `python -m cerebrum`).

Each verb is a small function registered in `COMMANDS`: it adds its own sub-parser and returns
the handler to run. User errors (`ValueError`, `TypeError`, missing files) print one line to
stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from cerebrum import __version__, cli_adapt, cli_mgm, cli_neat


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the library's main jobs on real data that ships with scikit-learn",
        description="Fit Gaussian mixtures to scikit-learn's digits, choose K by BIC and "
        "compare the clusters with the true labels.",
    )
    parser.set_defaults(handler=_run_demo)


def _run_demo(args) -> int:
    from cerebrum import demo

    demo.run()
    return 0


# --------------------------------------------------------------------------- brains

_DATA_HELP = ("a .npy, .npz or .csv file of numbers: rows are samples or frames; sequences "
              "come from a (B, T, D) array, an .npz 'lengths' array, --lengths or "
              "--sequence-column")


def _add_data_arguments(parser) -> None:
    parser.add_argument("data", metavar="DATA", help=_DATA_HELP)
    parser.add_argument("--lengths", metavar="N,N,...", type=_int_list,
                        help="sequence lengths, summing to the number of rows")
    parser.add_argument("--sequence-column", metavar="NAME|INDEX",
                        help="a column of sequence ids: each run of equal ids is a sequence")
    parser.add_argument("--key", help="the array to use in an .npz file (default 'X')")


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got "
                                         f"{text!r}") from None


def _load_data(args):
    from cerebrum.data import load_arrays

    try:
        return load_arrays(args.data, key=args.key, sequence_column=args.sequence_column,
                           lengths=args.lengths)
    except OSError as err:  # unreadable (permissions, a directory): one line naming it
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"cannot read {args.data}: {err.strerror or err}") from None


def _load_brain(path):
    from cerebrum import Cerebrum

    try:
        return Cerebrum.load(path)
    except OSError as err:  # unreadable (permissions, a directory): one line naming it
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"cannot read brain file {path}: {err.strerror or err}") from None


def _add_fit(subparsers) -> None:
    from cerebrum.brain import registry

    # the classical families (those Cerebrum keeps in a manager): gmm, hmm, and any other
    # registered the same way
    families = [name for name in registry.names() if registry.get(name).managed]
    parser = subparsers.add_parser(
        "fit", help="fit a Gaussian mixture or HMM and add it to a brain file",
        description="Fit a model on DATA and add it to the brain file given by -o (created "
        "when missing, rewritten atomically). Prints the new model's id.")
    parser.add_argument("family", choices=families, help=" or ".join(families))
    _add_data_arguments(parser)
    parser.add_argument("-k", "--components", type=int, required=True,
                        help="mixture components (gmm) or hidden states (hmm)")
    parser.add_argument("--covariance", default="diag",
                        choices=["full", "diag", "tied", "spherical"])
    parser.add_argument("--mix", type=int, default=1, help="Gaussians per state (hmm)")
    parser.add_argument("--id", dest="model_id", help="the model id (default: generated)")
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--n-init", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    parser.add_argument("-o", "--output", required=True, metavar="BRAIN",
                        help="brain file to add the model to")
    parser.set_defaults(handler=_run_fit)


def _run_fit(args) -> int:
    from pathlib import Path

    from cerebrum import Cerebrum
    from cerebrum.brain import registry

    rank, world_size, created = _fit_process_group()
    try:
        X, lengths = _load_data(args) if world_size == 1 else _load_fit_shard(args, rank,
                                                                             world_size)
        brain = _load_brain(args.output) if Path(args.output).exists() else Cerebrum()
        options = {"n_components": args.components, "covariance_type": args.covariance,
                   "max_iter": args.max_iter, "n_init": args.n_init,
                   "random_state": args.seed, "verbose": rank == 0}
        family = registry.get(args.family)
        if "n_mix" in family.config_fields:
            options["n_mix"] = args.mix
        if family.takes_sequences:
            options["lengths"] = lengths
        elif lengths is not None and rank == 0:
            print(f"cerebrum fit: note: a {family.name} treats the frames of sequences as "
                  "samples", file=sys.stderr)
        model_id = brain.fit_and_add(X, args.family, model_id=args.model_id, **options)
        if rank == 0:  # every rank holds the same model: one writes it
            brain.save(args.output)
            print(model_id)
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


def _fit_process_group() -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the group) for `cerebrum fit`: under
    torchrun (WORLD_SIZE > 1) each process fits its shard of DATA and the statistics are
    all-reduced over gloo (the fit runs on the CPU); otherwise one process fits it all."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, False
    dist.init_process_group(backend="gloo")
    return dist.get_rank(), dist.get_world_size(), True


def _load_fit_shard(args, rank: int, world_size: int):
    """This rank's slice of DATA: contiguous rows, or whole sequences when there are lengths
    (`mixtures.distributed.shard_bounds`). A .npy file is memory-mapped, so each rank reads only
    its slice; other formats are read whole by every rank, then sliced."""
    import numpy as np

    from cerebrum.brain import registry
    from cerebrum.mixtures.distributed import shard_bounds

    sequences = registry.get(args.family).takes_sequences
    if args.data.lower().endswith(".npy") and args.sequence_column is None:
        if not os.path.isfile(args.data):
            raise FileNotFoundError(f"no such file: {args.data}")
        table, lengths = np.load(args.data, mmap_mode="r", allow_pickle=False), args.lengths
        if table.ndim == 3:  # (B, T, D): B sequences of T frames
            lengths = lengths if lengths is not None else [table.shape[1]] * table.shape[0]
            table = table.reshape(-1, table.shape[2])
        elif table.ndim == 1:
            table = table[:, None]
    else:
        table, lengths = _load_data(args)
    start, stop, shard_lengths = shard_bounds(
        len(table), lengths if sequences else None, rank, world_size)
    X = np.asarray(table[start:stop], dtype=np.float64)
    return X, (shard_lengths if sequences else lengths)


def _add_brain_data_verb(subparsers, name, handler, help, description) -> None:
    """A verb that reads BRAIN and DATA and works on some or all of the brain's models."""
    parser = subparsers.add_parser(name, help=help, description=description)
    parser.add_argument("brain", metavar="BRAIN")
    _add_data_arguments(parser)
    parser.add_argument("--id", dest="model_ids", action="append",
                        help="a model id (repeatable; default: every model)")
    parser.set_defaults(handler=handler)


def _add_score(subparsers) -> None:
    _add_brain_data_verb(
        subparsers, "score", _run_score,
        help="log-likelihood of data under the models of a brain",
        description="Print each model's log-likelihood of DATA in nats: the total over the "
        "samples or sequences, and the mean per sample or sequence.")


def _run_score(args) -> int:
    brain = _load_brain(args.brain)
    X, lengths = _load_data(args)
    _, scores, candidates = brain.classify(X, model_ids=args.model_ids, lengths=lengths)
    unit = "sequence" if lengths is not None else "sample"
    rows = [(str(c), f"{scores[:, j].sum():.6g}", f"{scores[:, j].mean():.6g}")
            for j, c in enumerate(candidates)]
    _print_table(("id", "total log-likelihood", f"mean per {unit}"), rows)
    return 0


def _add_classify(subparsers) -> None:
    _add_brain_data_verb(
        subparsers, "classify", _run_classify,
        help="the most likely model for each sample or sequence",
        description="For each sample (or sequence), print the id of the model under which "
        "it is most likely, its log-likelihood, and the margin over the runner-up.")


def _run_classify(args) -> int:
    import numpy as np

    brain = _load_brain(args.brain)
    X, lengths = _load_data(args)
    labels, scores, candidates = brain.classify(X, model_ids=args.model_ids, lengths=lengths)
    ordered = np.sort(scores, axis=1)
    margin = ordered[:, -1] - ordered[:, -2] if len(candidates) > 1 else ordered[:, -1] * 0
    rows = [(str(n), str(label), f"{ordered[n, -1]:.6g}", f"{margin[n]:.3g}")
            for n, label in enumerate(labels)]
    _print_table(("#", "model", "log-likelihood", "margin"), rows)
    return 0


def _add_info(subparsers) -> None:
    parser = subparsers.add_parser(
        "info", help="list the models in a brain file",
        description="A table of the models in a brain file: id, family, sizes, free "
        "parameters and fit summary.")
    parser.add_argument("brain", metavar="BRAIN")
    parser.set_defaults(handler=_run_info)


def _run_info(args) -> int:
    from cerebrum.brain.cerebrum import iter_models

    brain = _load_brain(args.brain)
    rows = []
    for label, model, family in iter_models(brain):
        if family is None:
            rows.append((label, type(model).__name__, "", "", ""))
            continue
        config = family.config_of(model)
        sizes = " ".join(f"{k}={v}" for k, v in vars(config).items())
        n_parameters = getattr(model, "n_parameters", None)
        if n_parameters is None:
            n_parameters = sum(p.numel() for p in model.parameters())
        summary = family.summary(model)
        fitted = getattr(model, "is_fitted", True)
        status = "not fitted" if not fitted else " ".join(
            f"{k.rstrip('_')}={v}" for k, v in summary.items()
            if k in ("converged_", "n_iter_") and v is not None) or "fitted"
        rows.append((label, family.name, sizes, str(n_parameters), status))
    _print_table(("id", "family", "sizes", "parameters", "fit"), rows)
    return 0


def _add_sample(subparsers) -> None:
    parser = subparsers.add_parser(
        "sample", help="draw samples from a model of a brain",
        description="Draw N samples (gmm) or sequences of N steps (hmm) and save them: a .npy "
        "file gets the observations, an .npz file the observations ('X') and the components "
        "or states ('labels').")
    parser.add_argument("brain", metavar="BRAIN")
    parser.add_argument("--id", dest="model_id", required=True, help="the model id")
    parser.add_argument("-n", type=int, required=True, help="samples (gmm) or steps (hmm)")
    parser.add_argument("--sequences", type=int, default=1, help="sequences to draw (hmm)")
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    parser.add_argument("-o", "--output", required=True, help="a .npy or .npz file")
    parser.set_defaults(handler=_run_sample)


def _run_sample(args) -> int:
    import numpy as np

    from cerebrum.brain.cerebrum import iter_models

    if not args.output.endswith((".npy", ".npz")):
        raise ValueError(f"--output must end in .npy or .npz, got {args.output!r}")
    brain = _load_brain(args.brain)
    models = {label: model for label, model, _ in iter_models(brain, [args.model_id])}
    if len(models) != 1:
        raise ValueError(f"model {args.model_id!r} holds {len(models)} models: "
                         f"{', '.join(models)}; sample one of them from Python")
    (model,) = models.values()
    from cerebrum.brain import registry

    family = registry.family_of(model)
    if family is None or family.sample is None:
        raise ValueError(f"model {args.model_id!r} ({type(model).__name__}) cannot sample")
    X, labels = family.sample(model, args.n, n_sequences=args.sequences,
                              random_state=args.seed)
    if args.output.endswith(".npz"):
        np.savez(args.output, X=X, labels=labels)
    else:
        np.save(args.output, X)
    print(f"wrote {X.shape} to {args.output}")
    return 0


# --------------------------------------------------------------------------- language models


def _language_families() -> list[str]:
    from cerebrum.brain import language_model  # imports the brain, which registers families

    return language_model.language_families()


def _add_corpus_arguments(parser, *, purpose: str) -> None:
    parser.add_argument("--corpus", action="append", metavar="[NAME=]PATH",
                        help=f"{purpose}: a file, directory, glob or .jsonl (repeatable); NAME= "
                        "puts it in a named subset")
    parser.add_argument("--subset", action="append", metavar="NAME=WEIGHT",
                        help="sampling weight of a named subset (repeatable)")
    parser.add_argument("--validation", type=float, metavar="F",
                        help="fraction of the corpus held out for validation (default 0.01)")
    parser.add_argument("--test", type=float, metavar="F",
                        help="fraction held out for testing (default 0.01)")
    parser.add_argument("--document-bytes", type=int, metavar="N",
                        help="cut text files larger than N bytes into documents of about N "
                        "bytes on line boundaries (default 16384); the held-out text of a "
                        "cut file is its end")


def _add_train(subparsers) -> None:
    families = _language_families()
    parser = subparsers.add_parser(
        "train", help=f"train a language model on a text corpus ({', '.join(families)})",
        description="Train a language-model family on a corpus (default: the Python standard "
        "library of this interpreter). Settings are the family's model and fit arguments, from "
        "--config (TOML or JSON) and --set KEY=VALUE (later wins). Checkpoints go to --out, "
        "with the corpus's specification, so `cerebrum eval RUN` scores the run's own "
        f"held-out text. Families: {', '.join(families)}.")
    parser.add_argument("family", metavar="FAMILY",
                        help=f"the family to train: {', '.join(families)}")
    _add_corpus_arguments(parser, purpose="the training corpus")
    parser.add_argument("--config", metavar="FILE", help="a TOML or JSON file of settings")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                        help="one setting (repeatable); VALUE is read as JSON when it parses")
    parser.add_argument("--steps", type=int, help="training steps (same as --set steps=N)")
    parser.add_argument("--out", default="runs/latest", help="run directory (checkpoints, "
                        "metrics.jsonl, curves.npz)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in --out (on the run's own "
                        "corpus unless --corpus is given)")
    parser.set_defaults(handler=_run_train)


def _corpus_from(args):
    """The corpus the flags describe, or None when no --corpus was given."""
    from cerebrum.data import Corpus

    options = {name: value for name, value in (
        ("validation", args.validation), ("test", args.test),
        ("document_bytes", args.document_bytes)) if value is not None}
    if not args.corpus:
        if args.subset:
            raise ValueError("--subset needs --corpus NAME=PATH")
        if "document_bytes" in options:
            raise ValueError("--document-bytes applies to --corpus files; the built-in corpus "
                             "keeps its files whole")
        if options:
            from cerebrum.data import default_corpus

            return default_corpus(**options)
        return None
    subsets: dict[str, list[str]] = {}
    for item in args.corpus:
        name, _, path = item.rpartition("=") if "=" in item else ("main", "", item)
        subsets.setdefault(name or "main", []).append(path)
    weights = {}
    for item in args.subset or []:
        name, sep, weight = item.partition("=")
        try:
            weights[name] = float(weight)
        except ValueError:
            raise ValueError(f"--subset expects NAME=WEIGHT, got {item!r}") from None
        if not sep:
            raise ValueError(f"--subset expects NAME=WEIGHT, got {item!r}")
    return Corpus(subsets, weights, **options)


def _read_settings(args) -> dict:
    import json

    settings: dict = {}
    if args.config:
        from pathlib import Path

        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"no such config file: {path}")
        import tomllib

        try:
            text = path.read_text(encoding="utf-8")
            loaded = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (UnicodeDecodeError, ValueError) as err:  # JSONDecodeError, TOMLDecodeError
            kind = "TOML" if path.suffix == ".toml" else "JSON"
            raise ValueError(f"--config {path} is not a {kind} file of settings: {err}") \
                from None
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {path} must hold a table of settings, got "
                             f"{type(loaded).__name__}")
        settings.update(loaded)
    settings.update(parse_overrides(args.overrides))
    if args.steps is not None:
        settings["steps"] = args.steps
    return settings


def parse_overrides(items) -> dict:
    """`--set KEY=VALUE` items as a dict, each VALUE read as JSON where it parses (numbers,
    true/false, lists) and kept as a string otherwise."""
    import json

    settings = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


def _text_family(name: str):
    from cerebrum.brain import registry

    families = _language_families()
    if name not in registry.names():
        raise ValueError(f"unknown family {name!r}; language-model families: "
                         f"{', '.join(families)}")
    if name not in families:
        raise ValueError(f"family {name!r} does not train on text corpora (fit it with "
                         f"`cerebrum fit`); language-model families: {', '.join(families)}")
    return registry.get(name)


def _check_run_directory(out) -> None:
    """Refuse an --out that training could not write to, before training."""
    from pathlib import Path

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a run directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the run directory {out}: {err.strerror}") from None
    if not os.access(out, os.W_OK):
        raise ValueError(f"the run directory {out} is not writable")


def _run_corpus(model, args):
    """The corpus of the flags, else the one the run was trained on, else the default."""
    from cerebrum.data import Corpus, default_corpus

    corpus = _corpus_from(args)
    if corpus is not None:
        return corpus, "given"
    if getattr(model, "corpus_", None):
        return Corpus.from_dict(model.corpus_), "the run's"
    return default_corpus(), "the default (the run did not record its corpus)"


def _run_train(args) -> int:
    from cerebrum.brain.language_model import from_checkpoint

    family = _text_family(args.family)
    config_fields, fit_kwargs = family.split_arguments(_read_settings(args))
    for reserved in ("out_dir", "resume", "corpus"):
        if reserved in fit_kwargs:
            raise ValueError(f"set {reserved} with its own flag, not in the settings")
    if args.resume:
        model = from_checkpoint(args.out)
        if model.family != family.name:
            raise ValueError(f"{args.out} is a run of family {model.family!r}, not "
                             f"{family.name!r}")
        corpus, _ = _run_corpus(model, args)
    else:
        import torch

        seed = fit_kwargs.get("random_state", fit_kwargs.get("seed", 0))
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"random_state (the seed) must be an integer, got {seed!r}")
        with torch.random.fork_rng(devices=[]):  # the run's seed draws the initial weights
            if seed is not None:
                torch.manual_seed(seed)
            model = family.build(family.make_config(config_fields))
        corpus = _corpus_from(args)
    # refuse bad settings and an unusable --out before anything is written or trained
    model.fit_config(**{k: v for k, v in fit_kwargs.items()
                        if k != "verbose" and not (k == "eval_every" and v is None)})
    _check_run_directory(args.out)
    fit_kwargs.setdefault("verbose", True)
    try:
        model.fit(corpus, out_dir=args.out, resume=args.resume, **fit_kwargs)
    except KeyboardInterrupt:
        print(f"interrupted: the last checkpoint is in {args.out}; continue with --resume",
              file=sys.stderr)
        return 130
    history = model.history_
    last = history["train"]["loss"][-1] if history["train"]["loss"] else float("nan")
    print(f"done: step {history['train']['step'][-1]}, loss {last:.4f}, "
          f"checkpoints in {args.out}")
    return 0


def _add_eval(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="bits per byte and BrierLM of a trained language model on held-out text",
        description="Score the model of RUN (a run directory or a checkpoint file) on the "
        "held-out split of a corpus: by default the corpus the run was trained on. Prints "
        "bits per byte (families with token likelihoods; lower is better) and BrierLM "
        "(every family; higher is better); see docs/language-models.md.")
    parser.add_argument("run", metavar="RUN")
    _add_corpus_arguments(parser, purpose="score this corpus instead of the run's")
    parser.add_argument("--split", choices=["validation", "test"], default="validation")
    parser.add_argument("--max-documents", type=int, default=None,
                        help="score at most this many held-out documents")
    parser.add_argument("--brier-positions", type=int, default=512, metavar="N",
                        help="positions BrierLM samples (0 skips BrierLM)")
    parser.set_defaults(handler=_run_eval)


def _run_eval(args) -> int:
    from cerebrum.brain.language_model import from_checkpoint, texts_of

    model = from_checkpoint(args.run)
    corpus, whose = _run_corpus(model, args)
    texts = list(texts_of(corpus, args.split, max_documents=args.max_documents))
    if not texts:
        raise ValueError(f"the {args.split} split of {corpus.describe()} holds no documents; "
                         "hold out more with --validation / --test, or cut files into smaller "
                         "documents with --document-bytes")
    rows = []
    if model.has_likelihoods:
        rows.append(("bits per byte", f"{model.bits_per_byte(texts):.4f}"))
    if args.brier_positions:
        rows.append(("BrierLM", f"{model.brier_lm(texts, max_positions=args.brier_positions):.2f}"))
    rows.extend(model.evaluation_rows(texts))
    for name, value in rows:
        print(f"{value}  {name}")
    n_bytes = sum(len(t.encode()) for t in texts)
    print(f"scored {len(texts)} documents ({n_bytes:,} bytes) of the {args.split} split of "
          f"{whose} corpus: {corpus.describe()}")
    return 0


def _add_generate(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="continue a prompt with a trained language model",
        description="Print the continuation of --prompt by the model of RUN.")
    parser.add_argument("run", metavar="RUN")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("-n", "--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="0 for greedy decoding")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int)
    parser.set_defaults(handler=_run_generate)


def _run_generate(args) -> int:
    from cerebrum.brain.language_model import from_checkpoint

    model = from_checkpoint(args.run)
    print(model.generate(args.prompt, args.max_new_tokens, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, random_state=args.seed))
    return 0


def _add_export_hf(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-hf", help="export a trained language model for Hugging Face Transformers",
        description="Write the model of RUN (a run directory or a checkpoint file) to DIR, "
        "loadable with transformers.AutoModelForCausalLM.from_pretrained(DIR, "
        "trust_remote_code=True). Families without an exporter say why.")
    parser.add_argument("run", metavar="RUN")
    parser.add_argument("directory", metavar="DIR")
    parser.set_defaults(handler=_run_export_hf)


def _run_export_hf(args) -> int:
    from cerebrum.brain.language_model import from_checkpoint
    from cerebrum.hf import export_hf

    print(f"wrote {export_hf(from_checkpoint(args.run), args.directory)}")
    return 0


def _print_table(header, rows) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


#: Verbs in the order `--help` lists them.
COMMANDS = [_add_fit, _add_score, _add_classify, _add_info, _add_sample, _add_train,
            _add_eval, _add_generate, _add_export_hf, cli_mgm.add_command, cli_neat.add_command,
            cli_adapt.add_command,
            _add_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cerebrum",
        description="Mixture, state-space and hybrid neural models: fit, score, sample, train.",
    )
    parser.add_argument("--version", action="version", version=f"cerebrum {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv=None) -> int:
    """Entry point of the console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        print(f"cerebrum {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cerebrum {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
