"""MVoT (seed 003, part 2): direct answers vs text chain of thought vs interleaved images, and
the token discrepancy loss on vs off.

    python bench/mvot.py [--steps 1200] [--lambda 0.1] [--puzzles 150] [--images DIR] [--json]
    python bench/mvot.py --rows mvot,mvot_lambda0 --set grid_size=4 --set n_layer=3

Every row trains the "neat" family with `use_mvot_processor` from the same seed, on the same
puzzle stream (`cerebrum.data.gridworld`), for the same steps (the first `vqvae_steps` train
the VQ-VAE, identical across rows: same seed, same batches), and solves the same held-out
puzzles by greedy constrained decoding:

    direct        prompt -> "=answer"
    text_cot      prompt -> per move: the move and the agent's cell as text -> "=answer"
    mvot_lambda0  prompt -> per move: the move and the image of the next state (L_C only)
    mvot          the same with L_C + lambda L_D

Reported: task accuracy (chance 1/3: the outcomes are balanced), visualisation accuracy (the
share of the moves whose generated image, decoded by the VQ-VAE, shows the agent alone in its
true cell), teacher-forced image-token accuracy at the end of training, the VQ-VAE's
cell-level colour accuracy and codebook use on the held-out images, and training time.
`--images DIR` writes each MVoT row's held-out trajectories (true above, imagined below) as
PNG strips under DIR/ROW/.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from cerebrum.brain.neat import NEATLanguageModel
from cerebrum.data.gridworld import write_strips

#: The bench's model and puzzles: a 3 x 3 grid, 4 moves, 4-pixel cells, one token per cell.
MODEL = dict(grid_size=3, grid_moves=4, cell_pixels=4, vq_patch=4, codebook_size=16,
             code_dim=16, block_size=96, n_layer=2, n_head=2, n_embd=64, vqvae_steps=250)
FIT = dict(batch_size=16, lr=3e-3, warmup_steps=50, eval_every=None, random_state=0)
ROWS = {"direct": dict(mvot_task="direct"), "text_cot": dict(mvot_task="text_cot"),
        "mvot_lambda0": dict(mvot_task="mvot", discrepancy_weight=0.0),
        "mvot": dict(mvot_task="mvot")}


def parse_sets(items) -> dict:
    """KEY=VALUE strings -> {key: JSON value or string}."""
    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run_row(name: str, settings: dict, fit: dict, puzzles: int, images: str | None,
            corpus: str) -> dict:
    """Train one row and solve the held-out puzzles."""
    torch.manual_seed(0)
    model = NEATLanguageModel(**settings)
    start = time.perf_counter()
    model.fit(corpus, **fit)
    seconds = time.perf_counter() - start
    report = model.mvot_report(puzzles)
    train = model.history_["train"]
    last = [x for x in train.get("image_token_accuracy", []) if not math.isnan(x)]
    if images and settings["mvot_task"] == "mvot":
        truth = [f for r in report["results"] for f in r["batch"]["frames"]]
        imagined = [torch.cat([r["batch"]["frames"][i, :1].cpu(), pictures.cpu()])
                    for r in report["results"] for i, pictures in enumerate(r["images"])]
        write_strips(Path(images) / name, truth, imagined, limit=24)
    return {"row": name, "task": settings["mvot_task"],
            "lambda": (settings.get("discrepancy_weight")
                       if settings["mvot_task"] == "mvot" else None),
            "task_accuracy": report["task_accuracy"],
            "visualization_accuracy": report["visualization_accuracy"],
            "image_token_accuracy": last[-1] if last else None,
            "cell_accuracy": report["cell_accuracy"], "codes_used": report["used"],
            "perplexity": report["perplexity"], "spans_ok": report["spans_ok"],
            "final_loss": train["loss"][-1], "steps": fit["steps"],
            "train_seconds": seconds, "parameters": model.parameter_counts()[0]}


def print_table(rows: list[dict]) -> None:
    """The rows as an aligned text table."""
    header = ("row", "lambda", "task acc", "vis acc", "img tok acc", "cell acc", "codes",
              "loss", "steps", "train s")

    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    table = [(r["row"], fmt(r["lambda"], ".2f"),
              fmt(r["task_accuracy"], ".3f"), fmt(r["visualization_accuracy"], ".3f"),
              fmt(r["image_token_accuracy"], ".3f"), fmt(r["cell_accuracy"], ".4f"),
              fmt(r["codes_used"], ".2f"), fmt(r["final_loss"], ".3f"), str(r["steps"]),
              fmt(r["train_seconds"], ".0f")) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *table, strict=True)]
    for row in (header, *table):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1200,
                        help="steps per row (VQ-VAE included)")
    parser.add_argument("--lambda", dest="lam", type=float, default=0.1,
                        help="the discrepancy weight of the mvot row")
    parser.add_argument("--puzzles", type=int, default=150, help="held-out puzzles per row")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows to run")
    parser.add_argument("--set", action="append", dest="sets", metavar="KEY=VALUE",
                        help="a model or fit setting for every row (repeatable)")
    parser.add_argument("--images", default=None, metavar="DIR",
                        help="write the MVoT rows' trajectories as PNG strips")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    overrides = parse_sets(args.sets)
    fit_names = set(FIT) | {"steps", "batch_size", "lr", "optimizer", "schedule"}
    model_settings = {**MODEL, **{k: v for k, v in overrides.items() if k not in fit_names}}
    fit = {**FIT, "steps": args.steps, **{k: v for k, v in overrides.items() if k in fit_names}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "unused.txt"  # MVoT trains on puzzles; a one-line corpus spares
        corpus.write_text("MVoT trains on generated puzzles\n")  # listing the default one
        for name in args.rows.split(","):
            if name not in ROWS:
                raise SystemExit(f"unknown row {name!r}; rows: {', '.join(ROWS)}")
            settings = {**model_settings, **ROWS[name], "use_mvot_processor": True}
            if name == "mvot":
                settings["discrepancy_weight"] = args.lam
            rows.append(run_row(name, settings, fit, args.puzzles, args.images, str(corpus)))
            if not args.json:
                print(f"{name}: done in {rows[-1]['train_seconds']:.0f} s", flush=True)
    if args.json:
        print(json.dumps({"model": model_settings, "fit": fit, "rows": rows}, indent=2))
    else:
        print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
