"""The hybrids on CUDA, where there is one: same code, parameters and results on the GPU."""

import numpy as np
import pytest
import torch

from cerebrum import Cerebrum

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SMALL = dict(hidden_dim=16, z_dim=2, rnn_hidden=16, num_states=2, n_mix=1, trans_d_model=8,
             trans_nhead=2)


@pytest.mark.parametrize("family", ["vrmgt", "mmm"])
def test_hybrids_fit_and_score_on_cuda(family):
    X = np.random.default_rng(0).normal(size=(8, 6, 2)).astype(np.float32)
    brain = Cerebrum()
    model_id = brain.fit_and_add(X, family, device="cuda", epochs=2, random_state=0, **SMALL)
    model = brain.models[model_id]
    assert all(p.device.type == "cuda" for p in model.parameters())
    scores = brain.get_log_likelihoods(model_id, X, n_samples=4)
    assert np.isfinite(scores).all()
    cpu = Cerebrum()
    cpu.fit_and_add(X, family, epochs=2, random_state=0, **SMALL)
    (cpu_id,) = cpu.models.keys()
    assert cpu.models[cpu_id].history_["train_loss"][0] == pytest.approx(
        model.history_["train_loss"][0], rel=1e-3)
