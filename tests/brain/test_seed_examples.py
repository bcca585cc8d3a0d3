"""Every usage example of seeds 000 ("Example Usage Patterns" 1-4) and 001 ("Use Examples"
1-8), verbatim: the lines between the `# --- seed` markers are the seed's, character for
character. The seeds leave their data undefined (X_gmm, seq_data, ts_data, x_current, ...):
the fixtures supply it, and where a seed reads something it never made (a file, a pre-trained
model, a model id), the test supplies the missing line and says so."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cerebrum import (
    MMM,
    Cerebrum,
    HiddenMarkov,
    MMMan,
    NotFittedError,
    NotFittedWarning,
)
from cerebrum.models.multi_mixture_transformer import MultiMixtureTransformer
from cerebrum.models.vrmgt import VariationalRecurrentMarkovGaussianTransformer

pytestmark = pytest.mark.filterwarnings("ignore::cerebrum.ConvergenceWarning")


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    X_gmm = np.vstack([rng.normal(size=(150, 10)), rng.normal(size=(150, 10)) + 3])
    X_test = rng.normal(size=(40, 10))
    truth = HiddenMarkov.from_params(
        [0.6, 0.4], [[0.9, 0.1], [0.2, 0.8]], [[1.0], [1.0]],
        rng.normal(scale=3, size=(2, 1, 10)), np.ones((2, 1, 10)), covariance_type="diag",
        dtype=torch.float64)
    seq_data, _ = truth.sample(60, n_sequences=4, random_state=1)  # (4, 60, 10)
    return X_gmm, X_test, seq_data


def test_seed000_example1_basic_gmm_hmm_operations(data):
    X_gmm, X_test, seq_data = data
    brain = Cerebrum()
    gmm_id = brain.fit_and_add(data=X_gmm, model_type='gmm', n_components=4, model_id='my_gmm')
    gmm_score = brain.score('my_gmm', X_test)
    means = brain.get_means('my_gmm')
    variances = brain.get_variances('my_gmm')
    weights = brain.get_weights('my_gmm')
    hmm_id = brain.fit_and_add(data=seq_data, model_type='hmm', n_components=3, n_mix=2)
    lls = brain.get_log_likelihoods(hmm_id, seq_data)
    brain.models['my_gmm'].unfit('my_gmm')  # for MMMan-based managers

    assert gmm_id == 'my_gmm'
    model = brain.models[hmm_id].export_model(hmm_id)
    np.testing.assert_allclose(lls, model.log_likelihoods(seq_data))
    assert lls.shape == (4,)
    assert np.isfinite(gmm_score)
    assert means.shape == (4, 10) and variances.shape == (4, 10) and weights.shape == (4,)
    assert weights.sum() == pytest.approx(1.0, abs=1e-5)
    assert brain.check_data() == {'my_gmm': {}, hmm_id: {hmm_id: 'hmm'}}


def test_seed000_example2_managing_multiple_submodels(data):
    X_gmm, _, lh_seq = data
    seq_data_batch = lh_seq[:3]  # (3, 60, 10): a batch of sequences
    with pytest.warns(NotFittedWarning, match="construction values"):
        # --- seed 000, example 2
        # Directly use MMMan
        mmman = MMMan()
        # Absorb pre-trained GMM instance
        from cerebrum import GaussianMixture
        pre_gmm = GaussianMixture(5, 10)
        mmman.fit(data=pre_gmm, model_type='gmm', data_id=0)
        # Fit HMM and GMM together
        mmman.fit(data=lh_seq, model_type='hmm', n_components=2, n_mix=3, data_id='hmm_seq')

        # Bulk queries
        all_means = mmman.get_means()  # dict of all stored
        single_means = mmman.get_means(0)  # numpy array
        # --- end
    # the seed calls pre_gmm "pre-trained" but never trains it: its getters answer with its
    # construction values (warning above); scoring needs the training the seed presumes
    with pytest.raises(NotFittedError, match="model 0: This GaussianMixture is not fitted"):
        mmman.score(seq_data_batch)
    pre_gmm.fit(X_gmm, random_state=0)  # the missing line
    # --- seed 000, example 2 (continued)
    scores = mmman.score(seq_data_batch)  # dict of scores per model
    # --- end

    assert mmman.export_model(0) is pre_gmm
    assert set(all_means) == {0, 'hmm_seq'} and all_means['hmm_seq'].shape == (2, 3, 10)
    np.testing.assert_array_equal(single_means, all_means[0])
    assert single_means.shape == (5, 10)
    # sequences are scored by the sum of their log-likelihoods under every model: frames
    # independent under the GMM, the forward algorithm under the HMM
    frames = seq_data_batch.reshape(-1, 10)
    assert scores[0] == pytest.approx(float(pre_gmm.score_samples(frames).sum()), rel=1e-5)
    hmm = mmman.export_model('hmm_seq')
    assert scores['hmm_seq'] == pytest.approx(hmm.score(seq_data_batch), rel=1e-6)


@pytest.fixture
def hybrid_data():
    """Seed 000 example 3's undefined inputs, small: [batch, seq_len, input_dim] sequences."""
    g = torch.Generator().manual_seed(0)
    ts_data = np.random.default_rng(0).normal(size=(4, 6, 16)).astype(np.float32)
    return dict(ts_data=ts_data, x_current=torch.randn(2, 16, generator=g),
                context_sequence=torch.randn(2, 5, 16, generator=g),
                target_tokens=torch.randint(0, 256, (2, 8), generator=g),
                x_batch=torch.randn(3, 6, 16, generator=g))


def test_seed000_examples_3_and_4_hybrid(hybrid_data, tmp_path, monkeypatch):
    """Seed 000 examples 3 and 4 as written. Supplied: the data; 'other_brain.pt', which the
    seed assimilates without making. The seed's `brain.models['MMMan'].check_data()  # or
    brain.check_data()` names an entry this brain does not have (it holds one hybrid): the
    test runs the alternative the seed gives on the same line."""
    torch.manual_seed(0)
    ts_data, x_current = hybrid_data["ts_data"], hybrid_data["x_current"]
    context_sequence = hybrid_data["context_sequence"]
    target_tokens, x_batch = hybrid_data["target_tokens"], hybrid_data["x_batch"]
    brain = Cerebrum()
    other = Cerebrum()
    other.fit_and_add(np.random.default_rng(1).normal(size=(50, 16)), model_type='gmm',
                      n_components=2, random_state=0)
    other.save(tmp_path / 'other_brain.pt')

    # --- seed 000, example 3
    # Fit-and-add an end-to-end hybrid model
    mmm_id = brain.fit_and_add(
        data=ts_data,
        model_type='mmm',
        input_dim=16,
        hidden_dim=64,
        z_dim=32,
        rnn_hidden=128,
        num_states=4,
        n_mix=2,
        trans_d_model=32,
        trans_nhead=4,
        trans_layers=3,
        output_dim=16,
        epochs=200,
        kl_anneal_epochs=50,
        clip_norm=2.0,
        weight_decay=1e-4
    )
    # One-step prediction
    x_next = brain.models[mmm_id].predict(x_current)
    # Recognition toward a target latent z
    z_target = torch.randn_like(x_current)  # example
    reconstructed = brain.models[mmm_id].recognize(x_current, tgt_z=z_target)
    # Full sequence generation
    gen_seq = brain.models[mmm_id].generate(num_steps=10, batch_size=2)

    # Regression / CoRe² drafting
    logits, entropy_penalty = brain.models[mmm_id].regression(context_sequence)
    loss = brain.models[mmm_id].regression_loss(context_sequence, target_tokens)
    # --- end
    regression_loss = loss
    monkeypatch.chdir(tmp_path)  # the seed's relative file names land in the test's directory
    # --- seed 000, example 4
    # Rule-based auxiliary loss
    model = brain.models[mmm_id]
    model.add_rule(name='pred_balance', label='pred', reward_target=0.5, reward=10.0)
    # During training_step, back_loss incorporates these rules
    optimizer = torch.optim.Adam(model.parameters())
    loss = model.training_step(x_batch, optimizer)

    # Export & Import state
    state = brain.export_model(mmm_id)
    brain.import_model(mmm_id, state)

    # Check stored IDs
    ids_map = brain.check_data()

    # Assimilate another Cerebrum
    brain.assimilate('other_brain.pt')

    # Complete save/load
    brain.save('cerebrum_full.pt')
    new_brain = Cerebrum.load('cerebrum_full.pt')
    # --- end

    assert isinstance(model, MultiMixtureTransformer) and model.config.vocab_size == 256
    assert x_next.shape == (2, 16) and reconstructed.shape == (2, 16)
    assert gen_seq.shape == (2, 10, 16) and torch.isfinite(gen_seq).all()  # batch-first
    assert logits.shape == (2, 8, 256) and float(entropy_penalty.detach()) >= 0
    assert torch.isfinite(regression_loss) and np.isfinite(loss)
    assert ids_map == {mmm_id: "mmm"}
    assert len(new_brain.models) == 2
    assert new_brain.models[mmm_id].rules["pred_balance"] == ["pred", 0.5, 10.0]
    for key, value in brain.state_dict().items():
        assert torch.equal(value, new_brain.state_dict()[key]), key


def test_seed000_example4_classical_entries(data, tmp_path, monkeypatch):
    """Seed 000 example 4's persistence verbs on a brain of classical models."""
    X_gmm, X_test, seq_data = data
    brain = Cerebrum()
    gmm_id = brain.fit_and_add(X_gmm, model_type='gmm', n_components=3, random_state=0)
    other = Cerebrum()
    other.fit_and_add(seq_data, model_type='hmm', n_components=2, random_state=0)
    other.save(tmp_path / 'other_brain.pt')  # supplied: the seed assimilates it
    monkeypatch.chdir(tmp_path)
    # --- seed 000, example 4 (its model is the GMM here)
    state = brain.export_model(gmm_id)
    brain.import_model(gmm_id, state)
    ids_map = brain.check_data()
    brain.assimilate('other_brain.pt')
    brain.save('cerebrum_full.pt')
    new_brain = Cerebrum.load('cerebrum_full.pt')
    # --- end

    assert ids_map == {gmm_id: {gmm_id: 'gmm'}}
    (new_id,) = set(new_brain.models) - {gmm_id}
    assert new_brain.check_data()[new_id] == {new_id: 'hmm'}
    assert new_brain.score(gmm_id, X_test) == brain.score(gmm_id, X_test)
    (other_id,) = other.models.keys()
    assert new_brain.score(new_id, seq_data) == other.score(other_id, seq_data)


def test_seed001_examples_1_2_and_4_to_8(data, tmp_path, monkeypatch):
    """Seed 001 "Use Examples" 1, 2 and 4-8 as written. Supplied: the data (`data` is the
    GMM's samples in example 1 and the sequences in example 2); example 2's model is the one
    the later examples call 'speakerA', so it is added under that id; example 8 reads data ids
    'id1' and 'id2' of 'speakerA', which the seed never fits: the two fits are supplied."""
    X_gmm, X_test, seq_data = data
    monkeypatch.chdir(tmp_path)
    data = X_gmm
    # --- seed 001, example 1
    mmm = MMM()
    model_id = mmm.fit_and_add(data, model_type='gmm', n_components=5)
    # --- end
    gmm_id = model_id
    data = seq_data
    # --- seed 001, example 2 (model_id='speakerA' supplied)
    model_id = mmm.fit_and_add(data, model_type='hmm', n_components=4, covariance_type='diag',
                               model_id='speakerA')
    # --- end
    input_sequence = seq_data[0]
    # --- seed 001, example 4 (HMM score / log-likelihood)
    score = mmm.score(model_id, input_sequence)
    log_likelihoods = mmm.get_log_likelihoods(model_id, input_sequence)
    # --- seed 001, examples 5, 6, 7
    mmm.export_model(model_id='speakerA', filepath='speakerA.pth')
    mmm.import_model('speakerA', 'speakerA.pth')
    means = mmm.get_means(model_id='speakerA')
    variances = mmm.get_variances('speakerA')
    weights = mmm.get_weights('speakerA')
    mmm.save('mmm_full.pth')
    mmm = MMM.load('mmm_full.pth')
    # --- end
    test_data = X_test[:30]
    mmm.models['speakerA'].fit(seq_data[1:], model_type='hmm', n_components=2, data_id='id1')
    mmm.models['speakerA'].fit(seq_data[:2], model_type='hmm', n_components=2, data_id='id2')
    # --- seed 001, example 8
    loglik = mmm.get_log_likelihoods(model_id='speakerA', X=test_data, data_ids=['id1','id2'])
    # --- end

    assert model_id == 'speakerA'
    assert score == pytest.approx(float(log_likelihoods.sum()), rel=1e-6)
    assert mmm.score('speakerA', input_sequence) == pytest.approx(score, rel=1e-6)
    assert means.shape == (4, 1, 10) and variances.shape == (4, 1, 10)
    assert weights.shape == (4, 1)
    assert set(loglik) == {'id1', 'id2'} and loglik['id1'].shape == (1,)
    assert mmm.get_means(gmm_id).shape == (5, 10)


def test_seed001_example3_deep_mmm(monkeypatch):
    """Seed 001 example 3 as written, with the seed's sizes; the data is small so that 200
    epochs stay quick. 'mmm' on the MMM facade is seed 001's deep model, the VRMGT."""
    torch.manual_seed(0)
    data = np.random.default_rng(0).normal(size=(4, 3, 128)).astype(np.float32)
    mmm = MMM()
    # --- seed 001, example 3
    model_id = mmm.fit_and_add(
        data=data,
        model_type='mmm',
        input_dim=128,
        hidden_dim=256,
        z_dim=32,
        rnn_hidden=64,
        num_states=4,
        n_mix=5,
        trans_d_model=64,
        trans_nhead=4,
        trans_layers=2,
        output_dim=128,
        epochs=200,
        kl_anneal_epochs=50,
        lr=1e-4,
        clip_norm=5.0
    )
    # --- end
    model = mmm.models[model_id]
    assert isinstance(model, VariationalRecurrentMarkovGaussianTransformer)
    assert len(model.history_["train_loss"]) >= 1
    assert np.isfinite(mmm.get_log_likelihoods(model_id, data, n_samples=2)).all()


def two_speakers(n, T=12, seed=0):
    """Sequences of two 'speakers': different means and dynamics, D = 3."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (mean, a) in {"alice": (1.0, 0.8), "bob": (-1.0, -0.5)}.items():
        X = np.zeros((n, T, 3), np.float32)
        for t in range(1, T):
            X[:, t] = a * X[:, t - 1] + rng.normal(size=(n, 3)) * 0.3
        out[name] = X + mean
    return out


def test_seed001_example4_reconstruction_loss_classification():
    """Seed 001 example 4's loss comparison, as written, over a brain of per-speaker VRMGTs:
    it names the speaker of held-out sequences."""
    train, held_out = two_speakers(24), two_speakers(6, seed=1)
    mmm = MMM()
    for speaker, X in train.items():
        torch.manual_seed(0)
        mmm.fit_and_add(X, model_type='mmm', model_id=speaker, hidden_dim=16, z_dim=2,
                        rnn_hidden=16, num_states=2, n_mix=1, trans_d_model=8, trans_nhead=2,
                        epochs=40, lr=1e-2, random_state=0, validation_split=0.0)
    correct = 0
    for truth, X in held_out.items():
        for sequence in X:
            input_sequence = torch.as_tensor(sequence)
            torch.manual_seed(0)
            # --- seed 001, example 4
            losses = {
                model_id: F.mse_loss(mmm.models[model_id](input_sequence)['reconstruction'], input_sequence).item()  # noqa: E501
                for model_id in mmm.models
            }
            predicted = min(losses, key=losses.get)
            # --- end
            correct += predicted == truth
    assert correct == 12


def test_manager_entries_have_no_forward(data):
    X_gmm = data[0]
    mmm = MMM()
    mmm.fit_and_add(X_gmm, model_type='gmm', n_components=2, model_id='g', random_state=0)
    with pytest.raises(TypeError, match=r"holds gmm models, which have no forward pass.*"
                                        r"classify"):
        mmm.models['g'](torch.as_tensor(X_gmm))
