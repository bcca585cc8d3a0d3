"""The "gpt" family: fit on a corpus, generate, bits per byte, save/load with the tokenizer."""

import numpy as np
import pytest
import torch

from cerebrum import Cerebrum
from cerebrum.brain.gpt import GPTLanguageModel, GPTLMConfig

TINY = dict(block_size=64, n_layer=1, n_head=2, n_embd=32)
FIT = dict(steps=25, batch_size=8, seq_len=32, warmup_steps=5, random_state=0)


@pytest.fixture
def corpus_dir(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(20):
        (corpus / f"f{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 20)
    return corpus


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe"])
def test_fit_generate_score_and_round_trip(corpus_dir, tmp_path, tokenizer):
    brain = Cerebrum()
    extra = {"vocab_size": 300} if tokenizer == "bpe" else {}
    untrained = GPTLanguageModel(tokenizer=tokenizer, **extra, **TINY)
    brain.fit_and_add(str(corpus_dir), "gpt", model_id="lm", tokenizer=tokenizer, **extra,
                      **TINY, **FIT)
    model = brain.models["lm"]
    losses = model.history_["train"]["loss"]
    assert losses[-1] < 0.8 * losses[0]
    text = ["def f3(x):\n    return x + 3\n"]
    if tokenizer == "bytes":  # an untrained byte model is near log2(259) = 8.0 bits per byte
        assert brain.score("lm", text) < untrained.score(text) - 1.0
    sample = brain.generate("lm", "def f", max_new_tokens=20, temperature=0)
    assert isinstance(sample, str)
    brain.save(tmp_path / "lm.cbm")
    loaded = Cerebrum.load(tmp_path / "lm.cbm")
    for key, value in brain.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert loaded.score("lm", text) == brain.score("lm", text)
    assert loaded.generate("lm", "def f", max_new_tokens=20, temperature=0) == sample


def test_generation_is_the_networks_greedy_continuation(corpus_dir):
    torch.manual_seed(0)
    model = GPTLanguageModel(**TINY)
    prompt = "def g"
    ids = [model.tokenizer.bos_id, *model.tokenizer.encode(prompt)]
    out = model.gpt.generate(torch.tensor([ids]), 10, temperature=0)
    assert model.generate(prompt, 10, temperature=0) == model.tokenizer.decode(
        out[0, len(ids):].tolist())


def test_language_models_refuse_what_does_not_apply(corpus_dir):
    brain = Cerebrum()
    brain.fit_and_add(str(corpus_dir), "gpt", model_id="lm", **TINY, **{**FIT, "steps": 1})
    brain.fit_and_add(np.zeros((20, 2)) + np.arange(20)[:, None], "gmm", model_id="g",
                      n_components=1, random_state=0)
    with pytest.raises(TypeError, match="does not generate text"):
        brain.generate("g", "hello")
    with pytest.raises(TypeError, match=r"family 'gpt'\) has no sequence log-likelihood"):
        brain.classify(np.zeros((3, 2)), model_ids=["lm", "g"])
    with pytest.raises(ValueError, match="seq_len 100 exceeds the model's context"):
        GPTLanguageModel(**TINY).fit(str(corpus_dir), steps=1, seq_len=100)
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        GPTLMConfig(tokenizer="chars")
    with pytest.raises(ValueError, match="the byte tokenizer has 259 tokens"):
        GPTLMConfig(vocab_size=300)
    with pytest.raises(FileNotFoundError, match="matches no file"):
        Cerebrum().fit_and_add(str(corpus_dir / "missing*.txt"), "gpt", **TINY, steps=1)
