"""The "calm" family (seed 002) on the language-model seam: two phases through the engine,
metrics in the log, the managers and files, exact resume in each phase, generation, BrierLM
and the autoencoder report."""

import json
import shutil

import numpy as np
import pytest
import torch

from cerebrum import Cerebrum
from cerebrum.brain.calm import CALMLanguageModel, CALMTrainConfig
from cerebrum.brain.language_model import from_checkpoint, language_families
from cerebrum.data import Corpus

MODEL = dict(K=2, seq_z_steps=8, latent_dim=8, ae_width=32, ae_depth=1, d_model=32,
             n_layer=1, ssm_kernel=3, hop_mem_slots=8, head_width=32, head_depth=1,
             n_samples=4, n_targets=4)
FIT = dict(steps=8, ae_steps=4, batch_size=4, warmup_steps=1, lr=3e-3, eval_every=None,
           shuffle_rows=0, log_every=1, checkpoint_every=2, random_state=0)
TEXT = "def f3(x):\n    return x + 3\n" * 6


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(60):
        (folder / f"f{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 4)
    return Corpus(str(folder), validation=0.1)


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_family_is_registered():
    assert "calm" in language_families()


def test_two_phases_train_their_own_part_and_log_their_metrics(corpus, tmp_path):
    torch.manual_seed(0)
    model = CALMLanguageModel(**MODEL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.fit(corpus, out_dir=tmp_path / "run", **FIT)
    halfway = from_checkpoint(tmp_path / "run" / "checkpoint-00000004.safetensors")
    changed = {k for k, v in halfway.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("autoencoder.") for k in changed)
    changed = {k for k, v in model.state_dict().items()
               if not torch.equal(v, halfway.state_dict()[k])}
    assert changed and all(k.startswith("latent_model.") for k in changed)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert {"recon", "kl", "ae_acc"} <= logged[0].keys()
    assert {"d_fid", "d_div", "energy", "rf", "gate_mean", "fid_q0", "fid_q3"} <= \
        logged[-1].keys()
    assert len(model.history_["train"]["d_fid"]) == 8
    curves = dict(np.load(tmp_path / "run" / "curves.npz"))
    assert curves["train_gate_mean"].shape == (8,)


@pytest.mark.parametrize("stop", [2, 6])  # inside the autoencoder phase, inside the latent one
def test_resume_is_exact_in_either_phase(corpus, tmp_path, stop):
    torch.manual_seed(0)
    straight = CALMLanguageModel(**MODEL).fit(corpus, out_dir=tmp_path / "a", **FIT)
    run = tmp_path / "b"
    run.mkdir()
    shutil.copy(tmp_path / "a" / f"checkpoint-{stop:08d}.safetensors", run)
    resumed = from_checkpoint(run)
    resumed.fit(corpus, out_dir=run, resume=True, **FIT)
    assert _same_state(resumed, straight)
    assert resumed.history_["train"]["loss"] == straight.history_["train"]["loss"]


def test_the_managers_save_load_and_generate_reproducibly(corpus, tmp_path):
    torch.manual_seed(0)
    brain = Cerebrum()
    brain.fit_and_add(corpus, "calm", model_id="z", **MODEL, **FIT)
    a = brain.generate("z", "def f", max_new_tokens=9, random_state=3)
    assert a == brain.generate("z", "def f", max_new_tokens=9, random_state=3)
    new = brain.models["z"].generate_ids([0, 1, 2], 9, temperature=1.0, top_k=None,
                                         top_p=None, generator=None)
    assert len(new) == 9  # chunks of K = 2 cut to the length asked for
    brain.save(tmp_path / "b.cbm")
    loaded = Cerebrum.load(tmp_path / "b.cbm")
    assert _same_state(loaded.models["z"], brain.models["z"])
    assert loaded.generate("z", "def f", max_new_tokens=9, random_state=3) == a
    for temperature in (0.0, 0.5):
        b = brain.generate("z", "def f", max_new_tokens=6, temperature=temperature,
                           random_state=1)
        assert b == loaded.generate("z", "def f", max_new_tokens=6, temperature=temperature,
                                    random_state=1)
    score = brain.score("z", [TEXT], max_positions=32)
    assert score == loaded.score("z", [TEXT], max_positions=32)
    assert 0 <= score <= 100


def _always_a_model():
    """An autoencoder trained on chunks of one byte, 'a', decodes every z to 'aa': a model
    certain of the next tokens whatever its latent model samples."""
    torch.manual_seed(0)
    model = CALMLanguageModel(**{**MODEL, "token_dropout": 0.0, "z_dropout": 0.0})
    a = model.tokenizer.encode("a")[0]
    optimizer = torch.optim.Adam(model.autoencoder.parameters(), lr=1e-2)
    for _ in range(30):
        loss, _ = model(torch.full((4, 16), a), phase="autoencoder",
                        generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def test_brier_lm_of_a_model_certain_of_the_truth_is_100_and_0_when_certainly_wrong():
    model = _always_a_model()
    assert model.brier_scores(["a" * 40], max_positions=16)["brier_lm"] == 100.0
    scores = model.brier_scores(["b" * 40], max_positions=16)
    # never right: every Brier-n is minus the rate at which the two draws agree
    assert scores["brier_lm"] == 0.0 and -1 <= scores["brier_1"] < 0


def test_the_autoencoder_report(corpus):
    model = _always_a_model()
    report = model.autoencoder_accuracy(["a" * 40], noise_scales=(0.0, 1.0))
    # <bos> a x 40 <eos> in chunks of 2: the first and last chunks hold <bos> / <eos>
    assert report["chunks"] == 21
    assert report[0.0]["token_accuracy"] == pytest.approx(40 / 42)
    assert report[0.0]["chunk_accuracy"] == pytest.approx(19 / 21)
    rows = model.evaluation_rows(["a" * 40])
    assert rows[0][0] == "AE accuracy (noise 0)" and "95.24% tokens" in rows[0][1]
    fidelity = model.per_position_fidelity(["a" * 60])
    assert fidelity.shape == (8,) and torch.isfinite(fidelity).all()
    report = model.latent_report(["a" * 60])
    assert report["fidelity_by_position"] == pytest.approx(fidelity.tolist())
    assert report["energy"] == pytest.approx(2 * report["d_fid"] - report["d_div"], rel=1e-5)
    assert 0 < report["gate_mean"] < 1


def test_temperature_picks_chunks_by_the_agreement_of_samples(monkeypatch):
    """With S = 16 head samples of which 10 decode to chunk A and 6 to chunk B: T = 0 takes
    A; T = 1/2 takes A with probability binom(10, 2) / (binom(10, 2) + binom(6, 2)) = 3/4
    (12,000 draws: standard error 0.004; the plug-in p^2 normalised, 100 / 136 = 0.735, and
    p itself, 0.625, are both outside the tolerance); T = 1 decodes a single sample."""
    torch.manual_seed(0)
    model = CALMLanguageModel(**MODEL).eval()
    A, B = torch.tensor([5, 6]), torch.tensor([7, 8])

    def sample(h, n, generator):  # z[..., 0] = the sample's index
        z = torch.arange(n, dtype=torch.float32).expand(*h.shape[:-1], n)
        return z.unsqueeze(-1).expand(*z.shape, 8), None, None

    def decode(z):
        chunk = torch.where((z[..., :1] < 10), A, B)  # (..., K)
        return torch.nn.functional.one_hot(chunk, 259).float()

    monkeypatch.setattr(model.latent_model, "sample", sample)
    monkeypatch.setattr(model.autoencoder, "decode", decode)
    monkeypatch.setattr(CALMLanguageModel, "temperature_samples", 16)
    ids = torch.randint(0, 259, (12000, 6))
    g = torch.Generator().manual_seed(0)
    assert (model.next_chunks(ids, temperature=0.0, generator=g) == A).all()
    picked = model.next_chunks(ids, temperature=0.5, generator=g)
    share = (picked == A).all(-1).float().mean().item()
    assert ((picked == A).all(-1) | (picked == B).all(-1)).all()
    assert share == pytest.approx(0.75, abs=0.01)
    assert (model.next_chunks(ids, temperature=1.0, generator=g) == A).all()  # sample 0


@pytest.mark.parametrize(("lm_input", "temperature"), [("z", 1.0), ("tokens", 0.5)])
def test_recurrent_generation_equals_recomputing_the_window(lm_input, temperature):
    """generate_ids steps the latent model once per chunk; with the conv SSM that equals
    next_chunks on the growing text, also past the window of seq_z_steps - 1 chunks."""
    torch.manual_seed(0)
    model = CALMLanguageModel(**{**MODEL, "lm_input": lm_input}).eval()
    ids = [model.tokenizer.bos_id, *model.tokenizer.encode("def f(x")]  # 8 ids: 4 chunks
    new = model.generate_ids(ids, 24, temperature=temperature, top_k=None, top_p=None,
                             generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    text = torch.tensor([ids])
    while text.shape[1] < len(ids) + 24:
        text = torch.cat([text, model.next_chunks(text, temperature=temperature,
                                                  generator=g)], 1)
    assert new == text[0, len(ids):].tolist()
    assert len(model.generate_ids([model.tokenizer.bos_id], 3, temperature=1.0, top_k=None,
                                  top_p=None, generator=None)) == 3  # a prompt under K


def test_a_latent_phase_alone_keeps_the_autoencoder(corpus):
    torch.manual_seed(0)
    model = CALMLanguageModel(**MODEL)
    before = {k: v.clone() for k, v in model.autoencoder.state_dict().items()}
    model.fit(corpus, **{**FIT, "steps": 3, "ae_steps": 0})
    assert all(torch.equal(v, before[k]) for k, v in model.autoencoder.state_dict().items())
    assert "recon" not in model.history_["train"] and len(model.history_["train"]["d_fid"]) == 3


def test_bad_settings_are_clear_errors(corpus):
    model = CALMLanguageModel(**MODEL)
    assert model.fit_config(steps=9).seq_len == 16  # the whole context by default
    with pytest.raises(ValueError, match="seq_len 18 exceeds the model's context"):
        model.fit_config(steps=4, seq_len=18)
    with pytest.raises(ValueError, match="seq_len must be a multiple of K=2"):
        model.fit_config(steps=4, seq_len=7)
    with pytest.raises(ValueError, match="ae_steps \\+ lm_steps must equal steps"):
        CALMTrainConfig(steps=5, ae_steps=2, lm_steps=2)
    config = CALMTrainConfig(steps=9)
    assert (config.ae_steps, config.lm_steps) == (3, 6)
    assert CALMTrainConfig().steps == 6000  # the seed's 2000 + 4000
    with pytest.raises(ValueError, match="top_k and top_p do not apply"):
        model.generate("def", 4, top_k=5)
    with pytest.raises(ValueError, match=r"temperature must be in \[0, 1\]"):
        model.generate("def", 4, temperature=1.5)
    with pytest.raises(ValueError, match="K must be >= 1"):
        Cerebrum().fit_and_add(corpus, "calm", **{**MODEL, "K": 0}, **FIT)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        CALMLanguageModel(**MODEL, loss_type="kl")
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        CALMLanguageModel(**MODEL, tokenizer="words")


def test_the_autoencoder_phase_has_its_own_peak_learning_rate(corpus):
    """ae_lr scales phase 1's schedule (the latent phase keeps lr); None is lr."""
    model = CALMLanguageModel(**MODEL)
    settings = {**FIT, "min_lr_ratio": 1.0}  # a flat schedule after the one warm-up step
    model.fit(corpus, **{**settings, "ae_lr": 1e-2})
    lrs = model.history_["train"]["lr"]
    assert lrs[:4] == pytest.approx([1e-2] * 4) and lrs[4:] == pytest.approx([3e-3] * 4)
    assert [p.lr_scale for p in model.phases(model.fit_config(steps=4))] == [1.0, 1.0]
    for bad in (0, -1e-3, float("nan"), True, "1e-3"):
        with pytest.raises(ValueError, match="ae_lr must be a positive finite number"):
            CALMTrainConfig(steps=4, ae_lr=bad)
