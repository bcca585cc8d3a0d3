"""MM, MMMan and Cerebrum: selection semantics, ids, errors and classification."""

import re

import numpy as np
import pytest
import torch
from torch import nn

from cerebrum import MM, Cerebrum, GaussianMixture, HiddenMarkov, MMMan
from cerebrum.brain import registry

pytestmark = pytest.mark.filterwarnings("ignore::cerebrum.ConvergenceWarning")


def blobs(seed=0, n=120, shift=3.0, d=2):
    rng = np.random.default_rng(seed)
    return np.vstack([rng.normal(size=(n, d)), rng.normal(size=(n, d)) + shift])


@pytest.fixture
def manager():
    mmman = MMMan()
    for data_id in (0, 1, "x"):
        mmman.fit(blobs(hash(str(data_id)) % 100), "gmm", data_id=data_id, n_components=2,
                  random_state=0)
    return mmman


@pytest.mark.parametrize("getter", ["get_means", "get_variances", "get_weights"])
def test_bulk_getters_return_a_value_for_one_id_and_dicts_otherwise(manager, getter):
    one = getattr(manager, getter)(1)
    everything = getattr(manager, getter)()
    some = getattr(manager, getter)([0, "x"])
    model = manager.export_model(1)
    np.testing.assert_array_equal(one, getattr(model, getter)())
    assert set(everything) == {0, 1, "x"} and set(some) == {0, "x"}
    np.testing.assert_array_equal(everything[1], one)


def test_score_and_log_likelihoods_follow_the_models(manager):
    X = blobs(5)[:50]
    scores = manager.score(X)
    lls = manager.get_log_likelihoods(X, data_ids=[1])
    for data_id, value in scores.items():
        assert value == pytest.approx(manager.export_model(data_id).score(X))
    np.testing.assert_allclose(lls[1], manager.export_model(1).score_samples(X))
    assert lls[1].shape == (50,)


def test_generated_ids_are_ints_for_gmms_and_unique_letters_otherwise():
    mmman = MMMan()
    assert [mmman.fit(GaussianMixture(1, 2), "gmm") for _ in range(3)] == [0, 1, 2]
    mmman.unfit(1)
    assert mmman.fit(GaussianMixture(1, 2), "gmm") == 3  # never reuses a smaller free id
    letters = [mmman.fit(HiddenMarkov(1, 2), "hmm") for _ in range(400)]
    assert len(set(letters)) == 400
    assert all(re.fullmatch("[a-z]{6}", i) for i in letters)


def test_generated_ids_skip_taken_ones(monkeypatch):
    """Force the random draws to repeat: the taken id is skipped, not overwritten."""
    from cerebrum.brain import managers

    draws = iter(["abcdef", "abcdef", "ghijkl"])
    monkeypatch.setattr(managers.random.Random, "choices", lambda self, seq, k: next(draws))
    mmman = MMMan()
    assert mmman.fit(HiddenMarkov(1, 2), "hmm") == "abcdef"
    assert mmman.fit(HiddenMarkov(1, 2), "hmm") == "ghijkl"


def test_mm_keeps_its_fits_and_uses_the_latest():
    X1, X2 = blobs(1), blobs(2, shift=6.0)
    mm = MM("gmm", n_features=2, n_components=2)
    first = mm.fit(X1, random_state=0)
    second = mm.fit(X2, random_state=0)
    assert mm.check_data() == {first: "gmm", second: "gmm"}
    assert mm.gmm is mm.export_model() and mm.score(X2) == mm.export_model().score(X2)
    np.testing.assert_array_equal(mm.get_means(first), mm.export_model(data_id=first).get_means())
    mm.unfit(second)
    assert mm.model is mm.export_model(data_id=first)


def test_mm_gradient_fit_is_close_to_em():
    X = blobs(3)
    em = MM("gmm", n_features=2, n_components=2)
    em.fit(X, random_state=0)
    grad = MM("gmm", n_features=2, n_components=2)
    grad.fit(X, method="gradient", max_iter=300, random_state=0)
    assert grad.score(X) == pytest.approx(em.score(X), rel=0.02)


def test_mm_export_and_import_a_file(tmp_path):
    X = blobs(4)
    mm = MM("gmm", n_features=2, n_components=2, covariance_type="full")
    mm.fit(X, random_state=0)
    mm.export_model(tmp_path / "one.cbm")
    again = MM("gmm", n_features=2, n_components=2, covariance_type="full")
    again.import_model(tmp_path / "one.cbm")
    assert again.score(X) == mm.score(X)
    fresh = MM("gmm", n_features=2, n_components=2, covariance_type="full")
    fresh.import_model(mm.model.state_dict())
    assert fresh.score(X) == mm.score(X)
    with pytest.raises(ValueError, match="holds a gmm model, but this MM wraps hmm"):
        MM("hmm", n_features=2, n_components=2).import_model(tmp_path / "one.cbm")


def test_a_failed_fit_adds_nothing():
    brain, mmman = Cerebrum(), MMMan()
    bad = blobs(0)
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        brain.fit_and_add(bad, "gmm", n_components=2, model_id="a")
    with pytest.raises(ValueError, match="NaN"):
        mmman.fit(bad, "gmm", n_components=2, data_id=0)
    assert len(brain.models) == 0 and len(mmman) == 0


# ---------------------------------------------------------------------------- errors


def test_unknown_family_lists_the_registered_ones():
    with pytest.raises(ValueError, match="unknown model_type 'svm'; registered families: "
                                         "gmm, hmm"):
        Cerebrum().fit_and_add(blobs(), "svm")
    assert registry.names()[:2] == ["gmm", "hmm"]


def test_unknown_argument_names_itself_and_the_accepted_ones():
    with pytest.raises(TypeError, match=r"unknown argument n_states for model_type='hmm'.*"
                                        r"n_components.*max_iter"):
        Cerebrum().fit_and_add([blobs()], "hmm", n_states=3)


def test_unknown_and_duplicate_ids():
    brain = Cerebrum()
    brain.fit_and_add(blobs(), "gmm", n_components=2, model_id="a", random_state=0)
    with pytest.raises(ValueError, match="model_id 'a' is already in use"):
        brain.fit_and_add(blobs(), "gmm", n_components=2, model_id="a")
    with pytest.raises(ValueError, match=r"unknown model_id 'b'; stored ids: \['a'\]"):
        brain.score("b", blobs())
    with pytest.raises(ValueError, match="unknown data_id 7"):
        brain.get_means("a", data_ids=7)
    with pytest.raises(ValueError, match=r"without '\.'"):
        brain.add_model(nn.Linear(1, 1), "a.b")
    with pytest.raises(TypeError, match=r"must be an nn\.Module"):
        brain.add_model(object(), "c")
    mmman = MMMan()
    mmman.fit(GaussianMixture(1, 2), "gmm", data_id=0)
    with pytest.raises(ValueError, match="data_id 0 is already in use"):
        mmman.fit(blobs(), "gmm", data_id=0, n_components=1)
    with pytest.raises(TypeError, match="not a HiddenMarkov"):
        mmman.fit(GaussianMixture(1, 2), "hmm")


def test_shape_mismatch_names_the_features():
    brain = Cerebrum()
    brain.fit_and_add(blobs(), "gmm", n_components=2, model_id="a", random_state=0)
    with pytest.raises(ValueError, match="3 features"):
        brain.score("a", np.zeros((4, 3)))
    with pytest.raises(ValueError, match="n_features"):
        brain.fit_and_add(object(), "gmm", n_components=2)


# ---------------------------------------------------------------------------- classify


def speaker_models():
    """Three 'speakers': HMMs with well separated means, and data sampled from each."""
    rng = np.random.default_rng(8)
    truths = []
    for k in range(3):
        truths.append(HiddenMarkov.from_params(
            [0.5, 0.5], [[0.8, 0.2], [0.3, 0.7]], [[1.0], [1.0]],
            rng.normal(scale=1.5, size=(2, 1, 4)) + k, np.ones((2, 1, 4)),
            covariance_type="diag", dtype=torch.float64))
    return truths


def test_classify_picks_the_speaker_and_returns_each_models_log_likelihood():
    truths = speaker_models()
    brain = Cerebrum()
    for k, truth in enumerate(truths):
        train, _ = truth.sample(80, n_sequences=10, random_state=k)
        brain.fit_and_add(list(train), "hmm", n_components=2, model_id=f"speaker{k}",
                          random_state=0)
    test, labels = [], []
    for k, truth in enumerate(truths):
        X, _ = truth.sample(40, n_sequences=5, random_state=100 + k)
        test += list(X)
        labels += [f"speaker{k}"] * 5
    predicted, scores, candidates = brain.classify(test)
    assert list(candidates) == ["speaker0", "speaker1", "speaker2"]
    assert (predicted == np.array(labels)).mean() >= 0.9
    for c, model_id in enumerate(candidates):
        np.testing.assert_allclose(scores[:, c], brain.get_log_likelihoods(model_id, test),
                                   rtol=1e-5)
    # one id is one id, not its characters
    one, one_scores, one_candidates = brain.classify(test, model_ids="speaker1")
    assert list(one_candidates) == ["speaker1"] and set(one) == {"speaker1"}
    np.testing.assert_array_equal(one_scores[:, 0], scores[:, 1])


def test_classify_compares_families_on_log_p_of_the_whole_sequence():
    truth = speaker_models()[0]
    X, _ = truth.sample(30, n_sequences=3, random_state=0)
    brain = Cerebrum()
    brain.fit_and_add(X.reshape(-1, 4), "gmm", n_components=2, model_id="g", random_state=0)
    brain.fit_and_add(list(X), "hmm", n_components=2, model_id="h", random_state=0)
    _, scores, _ = brain.classify(list(X))
    gmm = brain.models["g"].export_model("g")
    expected = [gmm.score_samples(x).astype(np.float64).sum() for x in X]
    np.testing.assert_allclose(scores[:, 0], expected, rtol=1e-5)
    # rows of an (N, D) array without lengths are samples, each on its own
    _, per_sample, _ = brain.classify(X[0])
    np.testing.assert_allclose(per_sample[:, 0], gmm.score_samples(X[0]), rtol=1e-5)
    hmm = brain.models["h"].export_model("h")
    np.testing.assert_allclose(per_sample[:, 1], hmm.log_likelihoods(X[0], [1] * 30), rtol=1e-5)


def test_classify_rejects_incomparable_models():
    brain = Cerebrum()
    brain.fit_and_add(blobs(d=2), "gmm", n_components=1, model_id="two", random_state=0)
    brain.fit_and_add(blobs(d=3), "gmm", n_components=1, model_id="three", random_state=0)
    with pytest.raises(ValueError, match=r"differ in n_features \(\[2, 3\]\)"):
        brain.classify(blobs())
    with pytest.raises(ValueError, match="brain is empty"):
        Cerebrum().classify(blobs())


@pytest.mark.parametrize("device", ["cuda:7", "tpu", "mps:3"])
def test_a_device_this_machine_lacks_is_named_with_the_ones_it_has(tmp_path, device):
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    brain = Cerebrum()
    with pytest.raises(ValueError, match=r"was asked for, but this machine has cpu|"
                                         r"must be a torch device"):
        brain.fit_and_add(np.zeros((10, 2)), "gmm", n_components=1, device=device)
    brain.fit_and_add(np.arange(20.0).reshape(10, 2), "gmm", model_id="g", n_components=1,
                      random_state=0)
    brain.save(tmp_path / "b.cbm")
    with pytest.raises(ValueError, match=r"was asked for|must be a torch device"):
        Cerebrum.load(tmp_path / "b.cbm", device=device)


def test_mm_prepare_tensor_casts_and_checks():
    """Seed 000's MM._prepare_tensor: arrays to tensors in the MM's dtype, checked."""
    mm = MM("gmm", n_features=2, n_components=1)
    tensor = mm._prepare_tensor(np.arange(6, dtype=np.int64).reshape(3, 2))
    assert tensor.dtype == torch.float32 and tensor.tolist() == [[0, 1], [2, 3], [4, 5]]
    assert MM("gmm", n_features=2, n_components=1, dtype="float64")._prepare_tensor(
        [[1.0, 2.0]]).dtype == torch.float64
    with pytest.raises(ValueError, match="X contains NaN"):
        mm._prepare_tensor([[np.nan, 1.0]])
    with pytest.raises(TypeError, match="X must be a numeric array"):
        mm._prepare_tensor([["a", "b"]])


def test_bad_arguments_found_by_the_sweep_are_named():
    """Cases bench/robustness_sweep.py reported as unhelpful or silent."""
    rng = np.random.default_rng(0)
    brain = Cerebrum()
    brain.fit_and_add(rng.normal(size=(40, 2)), "gmm", model_id="g", n_components=1,
                      random_state=0)
    with pytest.raises(TypeError, match="model_ids must be a model id"):
        brain.classify(rng.normal(size=(3, 2)), model_ids=3)
    with pytest.raises(TypeError, match=r"source must be a state dict or the path .* got int 42"):
        brain.import_model("x", 42)
    state = {k: torch.full_like(v, float("nan")) for k, v in brain.export_model("g").items()}
    X = rng.normal(size=(3, 2))
    before = brain.score("g", X)
    with pytest.raises(ValueError, match="has NaN in its parameter"):
        brain.import_model("g", state)
    assert brain.score("g", X) == before  # nothing was loaded


def test_a_new_classical_family_needs_no_edit_to_managers_or_cli(tmp_path):
    """Issue 22's family protocol: a family registered with its record (ids, data, sampling)
    is fitted, named, scored and sampled by Cerebrum, MMMan and the CLI unchanged."""
    import dataclasses

    from cerebrum import cli

    class ToyHMM(HiddenMarkov):
        pass

    hmm = registry.get("hmm")
    registry.register(dataclasses.replace(hmm, name="toyhmm", model_class=ToyHMM,
                                          id_scheme="integer",
                                          build=lambda c, device=None: ToyHMM(
                                              c.n_components, c.n_features, c.n_mix,
                                              c.covariance_type, device=device)))
    try:
        X = np.random.default_rng(0).normal(size=(3, 20, 2))
        manager = MMMan()
        assert manager.fit(X, "toyhmm", n_components=2, random_state=0) == 0  # integer ids
        assert isinstance(manager.export_model(0), ToyHMM)
        np.save(tmp_path / "x.npy", X)
        brain = tmp_path / "b.cbm"
        assert cli.main(["fit", "toyhmm", str(tmp_path / "x.npy"), "-k", "2", "--mix", "2",
                         "--seed", "0", "-o", str(brain)]) == 0
        (model_id,) = Cerebrum.load(brain).models
        assert Cerebrum.load(brain).check_data() == {model_id: {model_id: "toyhmm"}}
        assert cli.main(["sample", str(brain), "--id", model_id, "-n", "5", "--sequences", "2",
                         "-o", str(tmp_path / "s.npy")]) == 0
        assert np.load(tmp_path / "s.npy").shape == (2, 5, 2)
    finally:
        registry.unregister("toyhmm")
