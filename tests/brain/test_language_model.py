"""The language-model seam: a family added as one module (tests/brain/_toy_family.py: two
phases, an auxiliary loss) works through fit, the engine's log, the managers, the file format,
from_checkpoint and the CLI with no edit of any of them; files written before the seam still
load and give the same numbers."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cerebrum import Cerebrum, cli
from cerebrum.brain import registry
from cerebrum.brain.gpt import GPTLanguageModel
from cerebrum.brain.language_model import (
    LMTrainConfig,
    from_checkpoint,
    language_families,
)
from cerebrum.data import Corpus
from cerebrum.hf import export_hf
from cerebrum.train.engine import Trainer
from tests.brain import _toy_family

FIXTURES = Path(__file__).parent.parent / "fixtures" / "gpt_v1"
FIT = dict(steps=8, batch_size=4, seq_len=16, warmup_steps=1, lr=0.05, eval_every=4,
           shuffle_rows=0, log_every=1, random_state=0)


@pytest.fixture
def toy_families():
    _toy_family.register()
    yield
    registry.unregister("toy")
    registry.unregister("toy-sampler")


@pytest.fixture
def corpus_dir(tmp_path):
    """200 small files. Document ids are their (temporary, so varying) paths: the tests hold
    out 10% so that the validation split is never empty (0.9^200)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(200):
        (corpus / f"f{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 4)
    return corpus


def held_out(corpus_dir):
    return Corpus(str(corpus_dir), validation=0.1)


def test_a_two_phase_family_trains_each_phase_and_logs_its_metrics(toy_families, corpus_dir,
                                                                   tmp_path):
    model = _toy_family.ToyLM(width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.fit(held_out(corpus_dir), out_dir=tmp_path / "run", **FIT)
    train = model.history_["train"]
    assert train["step"] == list(range(1, 9))
    assert all(math.isfinite(a) for a in train["aux"][:4]) and np.isnan(train["aux"][4:]).all()
    assert model.history_["eval"]["step"] == [4, 8]
    assert all(0 < b < 9 for b in model.history_["eval"]["bits_per_byte"])
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert any("aux" in r and "nll" in r for r in logged)
    assert any("eval/bits_per_byte" in r for r in logged)
    # phase "embed" trained the embeddings only, phase "head" the head only
    halfway = from_checkpoint(tmp_path / "run" / "checkpoint-00000004.safetensors")
    assert not torch.equal(halfway.embed.weight, before["embed.weight"])
    assert torch.equal(halfway.head.weight, before["head.weight"])
    assert torch.equal(model.embed.weight, halfway.embed.weight)
    assert not torch.equal(model.head.weight, halfway.head.weight)


def test_a_family_goes_through_the_managers_files_and_checkpoints(toy_families, corpus_dir,
                                                                  tmp_path):
    brain = Cerebrum()
    brain.fit_and_add(held_out(corpus_dir), "toy", model_id="toy", width=4, out_dir=tmp_path / "r",
                      **FIT)
    text = ["def f3(x):\n    return x + 3\n" * 3]
    bpb = brain.score("toy", text)
    brain.save(tmp_path / "b.cbm")
    loaded = Cerebrum.load(tmp_path / "b.cbm")
    assert loaded.score("toy", text) == bpb
    assert loaded.models["toy"].corpus_ == brain.models["toy"].corpus_ is not None
    resumed = from_checkpoint(tmp_path / "r")
    for key, value in brain.models["toy"].state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    assert resumed.generate("def", 5, temperature=0) == brain.generate(
        "toy", "def", max_new_tokens=5, temperature=0)
    with pytest.raises(TypeError, match="'toy' family cannot be exported to Hugging Face "
                                        "Transformers: a test family"):
        export_hf(resumed, tmp_path / "hf")


def test_a_family_without_likelihoods_has_brier_but_no_bits_per_byte(toy_families,
                                                                     corpus_dir):
    text = ["def f3(x):\n    return x + 3\n" * 40]
    model = _toy_family.SamplerLM(width=8).fit(
        str(corpus_dir), **{**FIT, "steps": 40, "eval_every": None})
    with pytest.raises(TypeError, match="no token likelihoods, so no bits per byte"):
        model.bits_per_byte(text)
    trained = model.brier_scores(text, max_positions=256)
    assert trained["estimator"] == "samples"
    assert model.score(text, max_positions=256) == trained["brier_lm"]  # its score is BrierLM
    untrained = _toy_family.SamplerLM(width=8).brier_scores(text, max_positions=256)
    assert trained["brier_1"] > untrained["brier_1"] + 0.1
    assert model.history_["eval"] == {"step": []} or "bits_per_byte" not in model.history_[
        "eval"]


def test_the_cli_trains_evaluates_and_lists_any_family(toy_families, corpus_dir, tmp_path,
                                                       monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "toy", "--corpus", str(corpus_dir), "--validation", "0.1",
                     "--out", "run",
                     "--steps", "4", "--set", "width=4", "--set", "batch_size=4",
                     "--set", "seq_len=16", "--set", "verbose=false"]) == 0
    assert "done: step 4" in capsys.readouterr().out
    assert cli.main(["eval", "run", "--brier-positions", "32"]) == 0
    out = capsys.readouterr().out
    assert "bits per byte" in out and "BrierLM" in out and "the run's corpus" in out
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "toy" in capsys.readouterr().out
    assert cli.main(["train", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown family 'nope'" in err and "toy" in err and "gpt" in err


def test_text_families_are_listed():
    assert "gpt" in language_families() and "gmm" not in language_families()


# ----------------------------------------------------------------- the GPT as a family


def test_files_and_checkpoints_written_before_the_seam_load_and_agree():
    expected = json.loads((FIXTURES / "expected.json").read_text())
    brain = Cerebrum.load(FIXTURES / "brain.cbm")
    assert brain.score("bpe", [expected["text"]]) == pytest.approx(
        expected["brain_bpe_score"], rel=1e-6)
    assert brain.generate("bpe", "def f", max_new_tokens=12, temperature=0) == \
        expected["brain_bpe_greedy"]
    model = from_checkpoint(FIXTURES / "checkpoint.safetensors")
    assert isinstance(model, GPTLanguageModel)
    assert model.score([expected["text"]]) == pytest.approx(expected["checkpoint_score"],
                                                            rel=1e-6)
    assert model.generate("def f", 12, temperature=0) == expected["checkpoint_greedy"]
    assert model.history_["train"]["step"][-1] == expected["checkpoint_step"]


def test_a_run_written_before_the_seam_resumes(tmp_path):
    """The fixture's run trained 4 steps on a corpus its README describes; resumed here for 2
    more steps on the same corpus (the data position is replayed exactly)."""
    corpus = tmp_path / "fixture_corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"f{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 10)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FIXTURES / "checkpoint.safetensors", run / "checkpoint-00000004.safetensors")
    model = from_checkpoint(run)
    model.fit(str(corpus), steps=6, batch_size=4, seq_len=16, warmup_steps=1, eval_every=2,
              checkpoint_every=4, out_dir=run, resume=True, random_state=0)
    assert model.history_["train"]["step"] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(v) for v in model.history_["train"]["loss"])


def test_fit_settings_are_one_config(corpus_dir):
    model = GPTLanguageModel(block_size=32, n_layer=1, n_head=2, n_embd=16)
    config = model.fit_config(steps=3, random_state=7)
    assert isinstance(config, LMTrainConfig)
    assert (config.seed, config.seq_len, config.steps) == (7, 32, 3)
    with pytest.raises(TypeError, match="unknown fit setting"):
        model.fit_config(stepz=3)
    with pytest.raises(ValueError, match="seq_len 64 exceeds the model's context"):
        model.fit_config(seq_len=64)
    seen = {}

    class Spy(Trainer):
        def __init__(self, *args, **kwargs):
            seen["config"] = args[3]
            super().__init__(*args, **kwargs)

    import cerebrum.brain.language_model as seam

    original, seam.Trainer = seam.Trainer, Spy
    try:
        model.fit(str(corpus_dir), config, batch_size=2)
    finally:
        seam.Trainer = original
    assert seen["config"].batch_size == 2 and seen["config"].seed == 7


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    (dict(temperature=-1.0), ValueError, "temperature must be a finite number >= 0"),
    (dict(temperature=float("nan")), ValueError, "temperature must be a finite number"),
    (dict(temperature=float("inf")), ValueError, "temperature must be a finite number"),
    (dict(temperature="hot"), TypeError, "temperature must be a number"),
    (dict(top_k=0), ValueError, "top_k must be >= 1"),
    (dict(top_k=2.5), TypeError, "top_k must be an integer"),
    (dict(top_p=0.0), ValueError, r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), ValueError, r"top_p must be in \(0, 1\]"),
    (dict(top_p=float("nan")), ValueError, r"top_p must be in \(0, 1\]"),
    (dict(prompt=None), TypeError, "prompt must be a str, got NoneType"),
    (dict(prompt=b"def"), TypeError, "prompt must be a str, got bytes"),
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens must be >= 0"),
])
def test_generate_refuses_impossible_settings(kwargs, error, message):
    model = GPTLanguageModel(block_size=32, n_layer=1, n_head=2, n_embd=16)
    arguments = {"prompt": "def", "max_new_tokens": 4, **kwargs}
    with pytest.raises(error, match=message):
        model.generate(arguments.pop("prompt"), **arguments)


def test_scores_refuse_what_is_not_text():
    model = GPTLanguageModel(block_size=32, n_layer=1, n_head=2, n_embd=16)
    with pytest.raises(TypeError, match="texts must be a string, strings or a Corpus"):
        model.score([123])


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe"])
def test_a_failed_fit_leaves_the_model_as_it_was(corpus_dir, tokenizer):
    extra = {"vocab_size": 300} if tokenizer == "bpe" else {}
    model = GPTLanguageModel(block_size=32, n_layer=1, n_head=2, n_embd=16, tokenizer=tokenizer,
                             **extra)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FloatingPointError, match="the loss became"):
        model.fit(str(corpus_dir), steps=20, batch_size=2, seq_len=16, warmup_steps=0,
                  lr=1e30, clip_norm=1e30, eval_every=None, shuffle_rows=0)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert (model.tokenizer is None) == (tokenizer == "bpe")
    assert model.history_ == {} and model.corpus_ is None


def test_an_interrupted_fit_leaves_the_model_as_it_was_and_resumes(toy_families, corpus_dir,
                                                                   tmp_path):
    import os
    import signal

    model = _toy_family.ToyLM(width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, calls = model.loss, {"n": 0}

    def interrupting(net, batch, context):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return loss(net, batch, context)

    model.loss = interrupting
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt, match=r"interrupted at step \d+; the model is as it "
                                                "was before fit; fit again with resume=True"):
        model.fit(held_out(corpus_dir), out_dir=run, **FIT)
    for key, value in before.items():
        assert torch.equal(value, model.state_dict()[key]), key
    assert model.history_ == {}
    resumed = from_checkpoint(run)
    resumed.fit(held_out(corpus_dir), out_dir=run, resume=True, **FIT)
    assert resumed.history_["train"]["step"][-1] == 8


@pytest.mark.parametrize("texts", [None, 5, b"bytes"])
def test_score_names_what_texts_must_be(texts):
    from cerebrum.brain.language_model import as_texts

    with pytest.raises(TypeError, match="texts must be a string, strings or a Corpus"):
        as_texts(texts)
