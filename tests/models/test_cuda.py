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
    assert np.isfinite(model.history_["train_loss"]).all()
    # same seed, same initial weights as on the CPU (the latent noise streams differ by device)
    cpu = Cerebrum()
    cpu.fit_and_add(X, family, epochs=1, lr=1e-12, random_state=0, **SMALL)
    again = Cerebrum()
    again.fit_and_add(X, family, device="cuda", epochs=1, lr=1e-12, random_state=0, **SMALL)
    (cpu_id,), (gpu_id,) = cpu.models.keys(), again.models.keys()
    for (name, a), b in zip(cpu.models[cpu_id].state_dict().items(),
                            again.models[gpu_id].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-4, atol=1e-6, msg=name)
