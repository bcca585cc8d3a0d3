"""The "neat" family on the seam: two phases, every switch combination trains and generates,
files and checkpoints (save / load, exact resume), the command lines, clear errors."""

import argparse
import itertools
import json
import math
import shutil

import pytest
import torch

from cerebrum import Cerebrum, cli, cli_neat
from cerebrum.brain.language_model import from_checkpoint
from cerebrum.brain.neat import NEATLanguageModel
from cerebrum.data import Corpus, recall

TINY = dict(block_size=32, n_layer=1, n_head=2, n_embd=16, local_dim=16, local_heads=2,
            ngram_buckets=32, entropy_layers=1, entropy_dim=16, attention_window=8,
            n_persistent=2, memory_dim=8, memory_hidden=8, memory_chunk=4, patch_size=3.0,
            max_patch_length=6)
FIT = dict(batch_size=4, seq_len=16, warmup_steps=1, lr=0.01, eval_every=3,
           eval_documents=2, shuffle_rows=0, log_every=1, random_state=0)


@pytest.fixture
def corpus_dir(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(60):
        (corpus / f"f{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 3)
    return corpus


def held_out(corpus_dir):
    return Corpus(str(corpus_dir), validation=0.2)


def test_entropy_patching_trains_in_two_phases_and_calibrates(corpus_dir, tmp_path):
    torch.manual_seed(0)
    model = NEATLanguageModel(**TINY, use_blt_processor=True, entropy_phase_fraction=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.fit(held_out(corpus_dir), steps=6, out_dir=tmp_path / "run", **FIT)
    halfway = from_checkpoint(tmp_path / "run" / "checkpoint-00000003.safetensors")
    changed = {k for k, v in halfway.state_dict().items()
               if k != "net.threshold" and not torch.equal(v, before[k])}
    assert changed and all(k.startswith("net.entropy_model.") for k in changed)
    assert math.isnan(float(halfway.net.threshold))
    assert math.isfinite(float(model.net.threshold))  # calibrated when "main" began
    for key, value in model.state_dict().items():
        if key.startswith("net.entropy_model."):
            assert torch.equal(value, halfway.state_dict()[key]), key  # frozen in "main"
    patch = model.history_["train"]["patch_size"]
    assert all(math.isnan(p) for p in patch[:3])
    assert all(2.0 < p < 4.5 for p in patch[3:])  # near the target 3 (a 4 x 16 batch)
    assert all(0 < b < 9 for b in model.history_["eval"]["bits_per_byte"])


@pytest.mark.parametrize(("blt", "titans"), list(itertools.product([False, True], repeat=2)))
def test_every_combination_trains_and_generates(corpus_dir, blt, titans):
    torch.manual_seed(0)
    model = NEATLanguageModel(**TINY, use_blt_processor=blt, use_titans_memory=titans,
                              dynamic_component_activation=titans)
    model.fit(held_out(corpus_dir), steps=3, **{**FIT, "eval_every": None})
    assert all(math.isfinite(v) for v in model.history_["train"]["loss"])
    text = model.generate("def f", 40, temperature=1.0, random_state=3)
    assert len(text.encode("utf-8", "surrogateescape")) > 0
    # greedy generation equals reading the argmax off the model's own logits
    greedy = model.generate("def f", 5, temperature=0)
    ids = [257, *b"def f"]
    for _ in range(5):
        logits = model.token_logits(torch.tensor([ids[-32:]]))[0, -1]
        ids.append(int(logits.argmax()))
    assert model.tokenizer.decode(ids[6:]) == greedy


def test_save_load_and_exact_resume(corpus_dir, tmp_path):
    torch.manual_seed(0)
    settings = dict(**TINY, use_blt_processor=True, use_titans_memory=True,
                    entropy_phase_fraction=0.4)
    brain = Cerebrum()
    brain.fit_and_add(held_out(corpus_dir), "neat", model_id="neat", out_dir=tmp_path / "a",
                      steps=6, checkpoint_every=2, **settings, **FIT)
    text = ["def f3(x):\n    return x + 3\n" * 2]
    score = brain.score("neat", text)
    assert 0 < score < 9
    brain.save(tmp_path / "b.cbm")
    loaded = Cerebrum.load(tmp_path / "b.cbm")
    assert loaded.score("neat", text) == score
    assert loaded.generate("neat", "def", max_new_tokens=6, temperature=0) == brain.generate(
        "neat", "def", max_new_tokens=6, temperature=0)
    # resume from step 2 (inside the entropy phase) to the end: the same weights and curve
    run = tmp_path / "resumed"
    run.mkdir()
    shutil.copy(tmp_path / "a" / "checkpoint-00000002.safetensors", run)
    resumed = from_checkpoint(run)
    resumed.fit(held_out(corpus_dir), steps=6, checkpoint_every=2, out_dir=run, resume=True,
                **FIT)
    straight = brain.models["neat"]
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    assert resumed.history_["train"]["loss"] == straight.history_["train"]["loss"]


@pytest.mark.parametrize(("blt", "titans"), [(False, False), (True, True)])
def test_a_fresh_model_scores_about_8_bits_per_byte_through_the_seam(blt, titans):
    torch.manual_seed(0)
    model = NEATLanguageModel(**TINY, use_blt_processor=blt, use_titans_memory=titans)
    text = "".join(chr(c) for c in range(32, 127)) * 2  # longer than the context: windows
    assert model.bits_per_byte(text) == pytest.approx(8.0, abs=0.1)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    (dict(adaptation_tasks="add;divide"), ValueError, "unknown kind 'divide'"),
    (dict(adaptation_steps=0), ValueError, "adaptation_steps must be"),
    (dict(use_mvot_processor=True), ValueError, r"block_size \(32\) must be >= 145"),
    (dict(tokenizer="bpe", vocab_size=512), ValueError, "vocab_size|must be 'bytes'"),
    (dict(entropy_phase_fraction=1.0), ValueError, r"entropy_phase_fraction must be in \(0, 1\)"),
    (dict(attention_window=64, use_sliding_window=True), ValueError,
     "larger than the context"),
    (dict(patching="bpe"), ValueError, "patching must be one of"),
    (dict(patch_size=0.0), ValueError, "must be >= 1"),
])
def test_bad_settings_are_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        NEATLanguageModel(**{**TINY, **kwargs})
    NEATLanguageModel(block_size=16)  # the window of a model without one is not checked


def neat_cli(*argv):
    parser = argparse.ArgumentParser()
    cli_neat.add_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["neat", *argv])
    return args.handler(args)


def test_the_seed_command_lines(corpus_dir, tmp_path, capsys):
    sets = [x for k, v in TINY.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    out = tmp_path / "outputs"
    assert neat_cli("--mode", "train", "--use_titans_memory", "--use_blt_processor",
                    "--gradient_checkpointing", "--dynamic_component_activation",
                    "--batch_size", "4", "--max_steps", "4", "--output_dir", str(out),
                    "--corpus", str(corpus_dir), "--validation", "0.2", *sets,
                    "--set", "seq_len=16", "--set", "shuffle_rows=0", "--set", "verbose=false",
                    "--set", "eval_every=null") == 0
    assert "done: step 4" in capsys.readouterr().out
    assert neat_cli("--mode", "eval", "--model_path", str(out / "best_model"),
                    "--batch_size", "16", "--max_documents", "2") == 0
    assert "bits per byte" in capsys.readouterr().out
    assert neat_cli("--mode", "profile", "--use_titans_memory", "--use_blt_processor",
                    "--json", "--batch_size", "2", "--repeats", "1", *sets) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["byte transformer", "blt_processor",
                                         "titans_memory", "blt_processor+titans_memory"]
    assert all(r["flops_per_byte"] > 0 and r["parameters"] > 0 for r in rows)
    # every component by default, MVoT's included: a puzzle small enough for block_size 32
    assert neat_cli("--mode", "profile", "--batch_size", "2", "--repeats", "1", *sets,
                    "--set", "grid_size=2", "--set", "grid_moves=1") == 0
    assert "MFLOP/B" in capsys.readouterr().out


def test_cerebrum_train_neat_takes_the_same_settings(corpus_dir, tmp_path, monkeypatch,
                                                     capsys):
    monkeypatch.chdir(tmp_path)
    sets = [x for k, v in TINY.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    assert cli.main(["train", "neat", "--corpus", str(corpus_dir), "--validation", "0.2",
                     "--out", "run", "--steps", "3", *sets, "--set", "use_blt_processor=true",
                     "--set", "patching=fixed", "--set", "batch_size=2", "--set", "seq_len=16",
                     "--set", "verbose=false"]) == 0
    assert "done: step 3" in capsys.readouterr().out


def test_the_recall_task_and_its_scorer():
    examples = recall.make_examples(5, n_pairs=3, filler_bytes=100, seed=0)
    assert examples == recall.make_examples(5, n_pairs=3, filler_bytes=100, seed=0)
    for prompt, answer in examples:
        key = prompt[prompt.rindex("?") + 1:prompt.rindex("=")]
        assert f"{key}={answer};" in prompt
        assert prompt.index(f"{key}={answer};") < len(prompt) - 100  # beyond the filler

    tokenizer = NEATLanguageModel(**TINY).tokenizer
    sequences = [[tokenizer.bos_id, *tokenizer.encode(p + a)] for p, a in examples]

    class Oracle:
        """Knows the examples: puts its mass on each sequence's true next byte."""

        context_length = 1000

        def __init__(self):
            self.tokenizer = tokenizer

        def token_logits(self, ids):
            row = ids[0].tolist()
            full = next(s for s in sequences if s[:len(row)] == row)
            logits = torch.zeros(1, len(row), 259)
            for j in range(len(row)):
                logits[0, j, full[j + 1]] = 10.0
            return logits

    assert recall.recall_accuracy(Oracle(), examples) == 1.0
    fresh = NEATLanguageModel(**{**TINY, "block_size": 256})
    assert recall.recall_accuracy(fresh, examples) < 0.5
