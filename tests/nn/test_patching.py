"""BLT patching and hash n-gram embeddings against hand-computed cases and brute force."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cerebrum.nn.hash_ngrams import BASE, MODULUS, HashNgramEmbedding, ngram_hashes
from cerebrum.nn.patching import (
    calibrate_threshold,
    entropy_from_logits,
    mean_patch_size,
    next_token_entropies,
    patch_ids,
    patch_lengths,
    patch_starts,
)

INF = math.inf
#: A hand-made entropy sequence (nats); position 0 has no prediction (+inf).
ENTROPIES = torch.tensor([[INF, 0.5, 2.5, 1.0, 1.2, 3.0, 0.1, 0.2, 2.1, 2.2]])


def starts_of(**kwargs):
    return patch_starts(**kwargs)[0].nonzero().flatten().tolist()


def test_global_threshold_starts_where_the_entropy_exceeds_theta():
    assert starts_of(scheme="entropy", entropies=ENTROPIES, threshold=2.0) == [0, 2, 5, 8, 9]
    assert starts_of(scheme="entropy", entropies=ENTROPIES, threshold=2.15) == [0, 2, 5, 9]


def test_monotonic_rule_starts_where_the_entropy_rises_by_more_than_theta():
    # rises: 1->2: +2.0, 3->4: +0.2, 4->5: +1.8, 6->7: +0.1, 7->8: +1.9, 8->9: +0.1
    assert starts_of(scheme="monotonic", entropies=ENTROPIES, threshold=1.0) == [0, 2, 5, 8]
    assert starts_of(scheme="monotonic", entropies=ENTROPIES, threshold=0.15) == [0, 2, 4, 5,
                                                                                  8]


def test_space_patching_starts_after_spaces():
    ids = torch.tensor([list(b"ab cd  ef\ng")])
    assert starts_of(scheme="space", ids=ids) == [0, 3, 7, 10]


def test_fixed_stride_and_the_length_cap():
    ids = torch.zeros(1, 10, dtype=torch.long)
    assert starts_of(scheme="fixed", ids=ids, stride=4) == [0, 4, 8]
    assert starts_of(scheme="fixed", ids=ids, stride=4, max_patch_length=3) == [0, 3, 4, 7, 8]
    # the cap counts from the last start, whatever made it
    assert starts_of(scheme="entropy", entropies=ENTROPIES, threshold=2.0,
                     max_patch_length=2) == [0, 2, 4, 5, 7, 8, 9]


def test_patch_lengths_sum_to_the_input_length():
    gen = torch.Generator().manual_seed(0)
    entropies = torch.rand(4, 50, generator=gen) * 3
    for theta in (0.5, 1.5, 2.9):
        starts = patch_starts(scheme="entropy", entropies=entropies, threshold=theta,
                              max_patch_length=7)
        lengths = patch_lengths(starts)
        assert lengths.sum(1).tolist() == [50] * 4
        assert lengths.max() <= 7
        ids = patch_ids(starts)
        assert (ids[:, 1:] - ids[:, :-1]).ge(0).all() and ids[:, 0].eq(0).all()


@given(st.lists(st.floats(0, 5), min_size=2, max_size=40), st.integers(1, 39),
       st.sampled_from(["entropy", "monotonic", "space", "fixed"]), st.integers(1, 6))
def test_patching_is_incremental(values, cut, scheme, cap):
    """The boundaries of a prefix never change when more bytes arrive."""
    cut = min(cut, len(values) - 1)
    entropies = torch.tensor([[INF, *values[1:]]])
    ids = (torch.tensor([values]) * 20).long() % 40 + 1  # some are spaces (32)
    full = patch_starts(scheme=scheme, entropies=entropies, ids=ids, threshold=2.0, stride=3,
                        max_patch_length=cap)
    prefix = patch_starts(scheme=scheme, entropies=entropies[:, :cut], ids=ids[:, :cut],
                          threshold=2.0, stride=3, max_patch_length=cap)
    assert torch.equal(full[:, :cut], prefix)


def test_uniform_logits_give_entropy_ln_256():
    assert float(entropy_from_logits(torch.zeros(256))) == pytest.approx(math.log(256))
    h = next_token_entropies(torch.zeros(2, 5, 256))
    assert h.shape == (2, 5) and h[:, 0].isinf().all()
    torch.testing.assert_close(h[:, 1:], torch.full((2, 4), math.log(256)))


@pytest.mark.parametrize("scheme", ["entropy", "monotonic"])
@pytest.mark.parametrize("target", [1.0, 2.5, 4.0, 6.0])
def test_calibration_reaches_the_target_mean_patch_size(scheme, target):
    gen = torch.Generator().manual_seed(1)
    entropies = torch.rand(8, 256, generator=gen) * 4
    theta = calibrate_threshold(entropies, target, scheme=scheme, max_patch_length=16)
    starts = patch_starts(scheme=scheme, entropies=entropies, threshold=theta,
                          max_patch_length=16)
    assert mean_patch_size(starts) == pytest.approx(target, rel=0.02)


def test_the_rolling_hash_equals_brute_force_and_stays_in_its_tables():
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 259, (3, 30), generator=gen)
    hashes = ngram_hashes(ids)
    for n, h in hashes.items():
        for b in range(3):
            for i in range(30):
                expected = sum((int(ids[b, i - j]) + 1 if i - j >= 0 else 0) * BASE**j
                               for j in range(n)) % MODULUS
                assert int(h[b, i]) == expected
    embedding = HashNgramEmbedding(4, buckets=(5, 7, 11, 13, 17, 19))
    for (n, rows), size in zip(embedding.buckets(ids).items(), embedding.sizes, strict=True):
        assert rows.min() >= 0 and rows.max() < size, n
    out = embedding(ids)
    assert out.shape == (3, 30, 4)
    # position i depends on ids[i-7 .. i] only
    changed = ids.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 259
    diff = (embedding(changed) - out).abs().sum(-1)[0]
    assert diff[:10].eq(0).all() and diff[18:].eq(0).all() and diff[10:18].gt(0).all()


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    (dict(scheme="words", ids=torch.zeros(1, 3, dtype=torch.long)), ValueError,
     "patching scheme must be one of"),
    (dict(scheme="entropy", entropies=torch.zeros(1, 3)), ValueError, "needs a numeric"),
    (dict(scheme="fixed", ids=torch.zeros(1, 3, dtype=torch.long), stride=0), ValueError,
     "stride must be >= 1"),
    (dict(scheme="fixed", ids=torch.zeros(1, 3, dtype=torch.long), stride=2,
          max_patch_length=0), ValueError, "max_patch_length must be >= 1"),
])
def test_bad_patching_settings_are_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        patch_starts(**kwargs)


def test_a_target_patch_size_below_one_is_an_error():
    with pytest.raises(ValueError, match="target mean patch size must be a number >= 1"):
        calibrate_threshold(torch.rand(1, 10), 0.5)
