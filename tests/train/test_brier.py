"""BrierLM against closed forms (a Markov chain enumerated n-gram by n-gram, perfect and
uniform predictors), a brute-force enumeration of the scored positions, and a small GPT that
learns.

Statistical tolerances are five standard errors from bounds on the per-position spread that
hold for any model (see `standard_error_bound`), so they do not depend on the fixed seeds.
"""

import itertools
import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cerebrum.data.tokenizers import ByteTokenizer
from cerebrum.models.gpt import GPT, GPTConfig
from cerebrum.train.brier import LogitsPredictor, brier_lm, brier_scores
from cerebrum.train.metrics import bits_per_byte

# ---------------------------------------------------------------- toy predictors

# peaked, so Brier-4 stays well above the statistical tolerances
TRANSITIONS = torch.tensor([[0.85, 0.10, 0.05],
                            [0.05, 0.80, 0.15],
                            [0.10, 0.15, 0.75]], dtype=torch.float64)


class Markov:
    """A first-order Markov chain: the next token depends on the previous one only."""

    def __init__(self, transitions=TRANSITIONS):
        self.transitions = transitions

    def sample(self, contexts, n, generator=None):
        state, tokens = contexts[:, -1], []
        for _ in range(n):
            state = torch.multinomial(self.transitions[state], 1, generator=generator)[:, 0]
            tokens.append(state)
        return torch.stack(tokens, 1)

    def log_prob(self, contexts, continuations):
        previous = torch.cat([contexts[:, -1:], continuations[:, :-1]], 1)
        return self.transitions[previous, continuations].log().sum(1)


class SampleOnly:
    """Hides everything but `sample`, as a likelihood-free model would."""

    def __init__(self, predictor):
        self.sample = predictor.sample


class Deterministic:
    """Puts all its mass on next = (a * previous + b) mod V."""

    def __init__(self, vocab_size=7, a=3, b=1):
        self.vocab_size, self.a, self.b = vocab_size, a, b

    def sample(self, contexts, n, generator=None):
        state, tokens = contexts[:, -1], []
        for _ in range(n):
            state = (self.a * state + self.b) % self.vocab_size
            tokens.append(state)
        return torch.stack(tokens, 1)

    def log_prob(self, contexts, continuations):
        certain = self.sample(contexts, continuations.shape[1])
        matches = (certain == continuations).all(1)
        return torch.where(matches, 0.0, -math.inf)


class Uniform:
    """Every token equally likely, whatever the context."""

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size

    def sample(self, contexts, n, generator=None):
        return torch.randint(0, self.vocab_size, (contexts.shape[0], n), generator=generator)

    def log_prob(self, contexts, continuations):
        n = continuations.shape[1]
        return torch.full((contexts.shape[0],), -n * math.log(self.vocab_size))


class Recording:
    """Remembers the contexts it is asked about; predicts zeros."""

    def __init__(self):
        self.contexts = set()

    def sample(self, contexts, n, generator=None):
        self.contexts.update(tuple(row) for row in contexts.tolist())
        return torch.zeros(contexts.shape[0], n, dtype=torch.long)


def markov_documents(n_documents, lengths, seed=0, transitions=TRANSITIONS):
    rng = np.random.default_rng(seed)
    P = transitions.numpy()
    documents = []
    for _ in range(n_documents):
        doc = [int(rng.integers(len(P)))]
        for _ in range(int(rng.integers(*lengths)) - 1):
            doc.append(int(rng.choice(len(P), p=P[doc[-1]])))
        documents.append(doc)
    return documents


def all_positions(documents, context_length, n_max, align):
    """Every (document, t) a score uses, by the definition in the module docstring."""
    return [(d, t) for d, doc in enumerate(documents) for t in range(len(doc))
            if t >= context_length and t + n_max <= len(doc)
            and (t - context_length) % align == 0]


def exact_markov_brier(documents, positions, n_max, transitions=TRANSITIONS):
    """Brier-n averaged over `positions`, by enumerating every n-gram."""
    P = transitions.numpy()
    V = len(P)

    def probability(previous, ngram):
        p = 1.0
        for token in ngram:
            p, previous = p * P[previous, token], token
        return p

    collision = {(a, n): sum(probability(a, x) ** 2
                             for x in itertools.product(range(V), repeat=n))
                 for a in range(V) for n in range(1, n_max + 1)}
    totals = np.zeros(n_max)
    for d, t in positions:
        doc, previous = documents[d], documents[d][t - 1]
        for n in range(1, n_max + 1):
            totals[n - 1] += (2 * probability(previous, doc[t:t + n])
                              - collision[previous, n])
    return totals / len(positions)


def standard_error_bound(estimator, samples, n_positions):
    """A bound on the standard error of a Brier-n mean over n_positions.

    Probabilities path: 2 p(y) is exact and the mean of S values of p(x) in [0, 1] has
    standard deviation <= 1 / (2 sqrt(S)). Samples path with m = 2 S draws: the mean of m
    indicators 2 * 1{x = y} has sd <= 1 / sqrt(m), and the mean over pairs of 1{x_i = x_j}
    (a U-statistic of order 2) has variance <= (2 / m) * 1/4 (Hoeffding); sds add at worst.
    """
    if estimator == "probabilities":
        sd = 0.5 / math.sqrt(samples)
    else:
        m = 2 * samples
        sd = 1 / math.sqrt(m) + math.sqrt(0.5 / m)
    return sd / math.sqrt(n_positions)


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("estimator, samples, wrap", [
    ("samples", 1, "markov"),
    ("samples", 8, "markov"),
    ("probabilities", 4, "markov"),  # n calls to log_prob for the prefixes
    ("probabilities", 4, "logits"),  # LogitsPredictor's prefix_log_probs
    ("samples", 4, "logits"),
])
def test_estimators_converge_to_the_enumerated_markov_brier(estimator, samples, wrap):
    documents = [*markov_documents(300, (40, 90)), [0, 1], []]  # short ones are skipped
    context_length, n_max, align = 3, 4, 2
    if wrap == "markov":
        predictor = Markov() if estimator == "probabilities" else SampleOnly(Markov())
    else:
        log_transitions = TRANSITIONS.log()
        predictor = LogitsPredictor(lambda ids: log_transitions[ids])
    scores = brier_scores(predictor, documents, context_length=context_length, n_max=n_max,
                          align=align, batch_size=1024, samples=samples,
                          use_probabilities=estimator == "probabilities")
    positions = all_positions(documents, context_length, n_max, align)
    expected = exact_markov_brier(documents, positions, n_max)
    assert scores["positions"] == len(positions)
    assert scores["estimator"] == estimator
    tolerance = 5 * standard_error_bound(estimator, samples, len(positions))
    for n in range(1, n_max + 1):
        assert scores[f"brier_{n}"] == pytest.approx(expected[n - 1], abs=tolerance)
    assert scores["brier_lm"] == pytest.approx(
        100 * np.prod([scores[f"brier_{n}"] for n in range(1, n_max + 1)]) ** (1 / n_max))


def test_perfect_predictor_scores_100_on_both_paths():
    model = Deterministic()
    documents = [[start] for start in range(7)]
    for doc in documents:
        doc.extend(model.sample(torch.tensor([doc]), 30)[0].tolist())
    for use_probabilities in (True, False):
        scores = brier_scores(model, documents, context_length=2, samples=3,
                              use_probabilities=use_probabilities)
        assert scores["estimator"] == ("probabilities" if use_probabilities else "samples")
        assert [scores[f"brier_{n}"] for n in range(1, 5)] == [1.0] * 4
        assert scores["brier_lm"] == 100.0


def test_certainly_wrong_predictor_scores_minus_one_and_brier_lm_0():
    model = Deterministic(a=1, b=1)  # predicts previous + 1
    documents = [list(range(7)[::-1]) * 3]  # always previous - 1
    for use_probabilities in (True, False):
        scores = brier_scores(model, documents, context_length=1,
                              use_probabilities=use_probabilities)
        assert [scores[f"brier_{n}"] for n in range(1, 5)] == [-1.0] * 4
        assert scores["brier_lm"] == 0.0


@pytest.mark.parametrize("vocab_size", [2, 5])
def test_uniform_predictor_gives_one_over_v_to_the_n(vocab_size):
    rng = random.Random(0)
    documents = [[rng.randrange(vocab_size) for _ in range(50)] for _ in range(10)]
    expected = [vocab_size ** -n for n in range(1, 5)]
    # the probabilities path is exact here: every continuation has the same probability
    for predictor in (Uniform(vocab_size),
                      LogitsPredictor(lambda ids: torch.zeros(*ids.shape, vocab_size))):
        scores = brier_scores(predictor, documents, context_length=4)
        assert [scores[f"brier_{n}"] for n in range(1, 5)] == pytest.approx(expected,
                                                                              rel=1e-5)
        assert scores["brier_lm"] == pytest.approx(100 * vocab_size ** -2.5, rel=1e-5)
    many = [[rng.randrange(vocab_size) for _ in range(400)] for _ in range(30)]
    scores = brier_scores(SampleOnly(Uniform(vocab_size)), many, context_length=4,
                          samples=8, batch_size=2048)
    tolerance = 5 * standard_error_bound("samples", 8, scores["positions"])
    assert [scores[f"brier_{n}"] for n in range(1, 5)] == pytest.approx(expected,
                                                                          abs=tolerance)


def test_logits_predictor_probabilities_follow_the_tempered_softmax():
    torch.manual_seed(0)
    table = torch.randn(6, 6)  # logits of the next token given the previous one
    predictor = LogitsPredictor(lambda ids: table[ids], temperature=0.7)
    contexts = torch.randint(0, 6, (5, 3))
    continuations = torch.randint(0, 6, (5, 4))
    expected = torch.zeros(5)
    previous = contexts[:, -1]
    for j in range(4):
        step = torch.log_softmax(table[previous] / 0.7, -1)
        expected += step.gather(1, continuations[:, j:j + 1])[:, 0]
        assert torch.allclose(predictor.prefix_log_probs(contexts, continuations)[:, j],
                              expected, atol=1e-5)
        previous = continuations[:, j]
    assert torch.allclose(predictor.log_prob(contexts, continuations), expected, atol=1e-5)


def test_logits_predictor_finds_the_device_of_a_module():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    assert LogitsPredictor(model).device == torch.device("cpu")
    assert LogitsPredictor(model.forward).device == torch.device("cpu")
    assert LogitsPredictor(lambda ids: ids, device="meta").device == torch.device("meta")


# ---------------------------------------------------------------- positions


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 25), min_size=1, max_size=6),
       context_length=st.integers(1, 6), n_max=st.integers(1, 4), align=st.integers(1, 4),
       per_document=st.none() | st.integers(1, 5), cap=st.none() | st.integers(1, 20),
       seed=st.integers(0, 3))
def test_positions_are_the_aligned_ones_with_room(lengths, context_length, n_max, align,
                                                  per_document, cap, seed):
    # token ids encode (document, index), so a context tells where it was cut from
    documents = [[1000 * d + i for i in range(length)] for d, length in enumerate(lengths)]
    candidates = all_positions(documents, context_length, n_max, align)
    options = dict(context_length=context_length, n_max=n_max, align=align,
                   positions_per_document=per_document, max_positions=cap,
                   random_state=seed, batch_size=7)
    if not candidates:
        with pytest.raises(ValueError, match=f"at least context_length.*{context_length + n_max}"
                           ):
            brier_scores(Recording(), documents, **options)
        return
    recording = Recording()
    scores = brier_scores(recording, documents, **options)
    chosen = sorted((row[0] // 1000, row[0] % 1000 + context_length)
                    for row in recording.contexts)
    assert set(chosen) <= set(candidates)
    per_doc = {d: sum(1 for c in candidates if c[0] == d) for d in range(len(documents))}
    expected = sum(per_doc.values()) if per_document is None else sum(
        min(k, per_document) for k in per_doc.values())
    if cap is not None:
        expected = min(expected, cap)
    assert scores["positions"] == len(chosen) == expected
    if per_document is not None:
        assert all(sum(1 for c in chosen if c[0] == d) <= per_document for d in per_doc)
    again = Recording()
    brier_scores(again, documents, **options)
    assert again.contexts == recording.contexts  # deterministic in random_state


def test_random_state_changes_the_subset_of_positions():
    documents = [list(range(200))]
    picked = []
    for seed in (0, 1):
        recording = Recording()
        brier_scores(recording, documents, context_length=2, max_positions=10,
                     random_state=seed)
        picked.append(recording.contexts)
    assert picked[0] != picked[1]


# ---------------------------------------------------------------- a network that learns


def test_training_raises_brier_lm_and_lowers_bits_per_byte():
    torch.manual_seed(0)
    rng = random.Random(0)
    phrases = ["the cat sat", "on the mat", "a dog ran", "to the park", "and back"]

    def text():
        return " ".join(rng.choice(phrases) for _ in range(10)) + "."

    tokenizer = ByteTokenizer()
    train, held_out = [text() for _ in range(200)], [text() for _ in range(6)]
    stream = torch.tensor([i for t in train for i in [tokenizer.bos_id, *tokenizer.encode(t)]])
    documents = [[tokenizer.bos_id, *tokenizer.encode(t)] for t in held_out]
    model = GPT(GPTConfig(vocab_size=259, block_size=64, n_layer=1, n_head=2, n_embd=32))

    def measure():
        model.eval()
        scores = brier_scores(LogitsPredictor(model), documents, context_length=16,
                              positions_per_document=20, batch_size=64)
        return scores, bits_per_byte(model, tokenizer, held_out)

    before, bpb_before = measure()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batches = torch.Generator().manual_seed(0)
    for _ in range(80):
        starts = torch.randint(0, len(stream) - 33, (16,), generator=batches)
        rows = torch.stack([stream[s:s + 33] for s in starts.tolist()])
        _, loss = model(rows[:, :-1], rows[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after, bpb_after = measure()

    assert bpb_after < bpb_before
    assert after["brier_lm"] > before["brier_lm"]
    assert all(after[f"brier_{n}"] > before[f"brier_{n}"] for n in range(1, 5))


# ---------------------------------------------------------------- argument errors


@pytest.mark.parametrize("options, error, match", [
    (dict(context_length=0), ValueError, "context_length must be >= 1, got 0"),
    (dict(context_length=2.5), TypeError, "context_length must be an integer"),
    (dict(n_max=0), ValueError, "n_max must be >= 1"),
    (dict(align=0), ValueError, "align must be >= 1"),
    (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
    (dict(samples=0), ValueError, "samples must be >= 1"),
    (dict(random_state=-1), ValueError, "random_state must be >= 0"),
    (dict(positions_per_document=0), ValueError, "positions_per_document must be >= 1"),
    (dict(max_positions=0), ValueError, "max_positions must be >= 1"),
    (dict(use_probabilities="yes"), TypeError, "use_probabilities must be None, True or"),
    (dict(context_length=20), ValueError,
     "needs at least context_length \\+ n_max = 20 \\+ 4 = 24 tokens.*has 10"),
])
def test_bad_arguments_name_the_argument(options, error, match):
    options = {"context_length": 2, **options}
    with pytest.raises(error, match=match):
        brier_scores(Uniform(3), [[0] * 10, [1] * 5], **options)


@pytest.mark.parametrize("predictor, documents, error, match", [
    (Uniform(3), [], ValueError, "documents is empty"),
    (Uniform(3), "abc", TypeError, "documents must be a sequence"),
    (Uniform(3), ["abc"], TypeError, r"documents\[0\] must be a sequence of token ids"),
    (Uniform(3), [[0, 1], [[1, 2]]], ValueError, r"documents\[1\] must be a flat"),
    (Uniform(3), [[0.5, 1.0]], TypeError, r"documents\[0\] must hold integer token ids"),
    (Uniform(3), [[0, -1]], ValueError, "negative token id"),
    (object(), [[0] * 10], TypeError, "predictor must have a sample"),
])
def test_bad_documents_and_predictors_are_named(predictor, documents, error, match):
    with pytest.raises(error, match=match):
        brier_scores(predictor, documents, context_length=2)


def test_probabilities_need_log_prob_and_outputs_are_checked():
    documents = [[0] * 10]
    with pytest.raises(TypeError, match=r"use_probabilities=True needs .* log_prob"):
        brier_lm(SampleOnly(Uniform(3)), documents, context_length=2, use_probabilities=True)

    class WrongShape(Uniform):
        def sample(self, contexts, n, generator=None):
            return super().sample(contexts, n + 1, generator)

    with pytest.raises(ValueError, match=r"predictor.sample.*must return integer token ids"):
        brier_lm(WrongShape(3), documents, context_length=2)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        LogitsPredictor(lambda ids: ids, temperature=0)
    with pytest.raises(TypeError, match="temperature must be a real number"):
        LogitsPredictor(lambda ids: ids, temperature="1")
    with pytest.raises(ValueError, match="logits_fn must map ids"):
        brier_lm(LogitsPredictor(lambda ids: torch.zeros(ids.shape[0], 3)), documents,
                 context_length=2)
