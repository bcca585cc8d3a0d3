"""The "mgm" family (cerebrum.brain.mgm) on the seam: five stages that train only their
parameters, checkpoints at each stage's end, resume across a stage boundary equal to the
straight run, save / load through Cerebrum, the seed's example settings, the ablation and the
switches, and clear errors for bad settings."""

import shutil

import pytest
import torch

from cerebrum import Cerebrum
from cerebrum.brain.language_model import from_checkpoint, language_families
from cerebrum.brain.mgm import STAGES, MGMLanguageModel, MGMTrainConfig
from cerebrum.data import Corpus

TINY = dict(seq_len=32, n_layer=1, hidden_dim=16, num_heads=2, experts_num=8, k_experts=2,
            expert_dim=8, memory_slots=2, memory_width=8)
FIT = dict(batch_size=4, seq_len=16, warmup_steps=1, lr=0.02, eval_every=None,
           shuffle_rows=0, log_every=1, random_state=0, checkpoint_every=1000)


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(60):
        (root / f"f{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 4)
    return Corpus(str(root), validation=0.1)


def tiny(**kwargs):
    torch.manual_seed(0)
    return MGMLanguageModel(**{**TINY, **kwargs})


def test_mgm_is_a_registered_text_family():
    assert "mgm" in language_families()


def test_each_stage_trains_only_its_parameters(corpus, tmp_path):
    model = tiny()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    model.fit(corpus, stage_steps=2, out_dir=tmp_path / "run", **FIT)
    assert model.history_["train"]["step"] == list(range(1, 11))
    prefixes = model.stage_prefixes()
    before = start
    for name, end in zip(STAGES, (2, 4, 6, 8, 10), strict=True):
        after = from_checkpoint(tmp_path / "run" / f"checkpoint-{end:08d}.safetensors")
        after = {n: p for n, p in after.named_parameters()}
        trained = prefixes[name]
        for key, value in after.items():
            moved = not torch.equal(value, before[key])
            allowed = trained is None or key.startswith(trained)
            if not allowed:
                assert not moved, f"{name} changed {key}"
        if trained is not None:  # and what it trains did move
            assert any(not torch.equal(after[k], before[k]) for k in after
                       if k.startswith(trained)), name
        before = {k: v.clone() for k, v in after.items()}
    assert prefixes["curvature_calibration"] and all(
        p.endswith("raw_curvature") for p in prefixes["curvature_calibration"])


def test_resume_across_a_stage_boundary_equals_the_straight_run(corpus, tmp_path):
    straight = tiny().fit(corpus, stage_steps=2, out_dir=tmp_path / "a",
                          **{**FIT, "checkpoint_every": 3})
    run = tmp_path / "b"
    run.mkdir()
    # step 3 is inside stage 2; step 4 its end: resume from both
    for step in (3, 4):
        shutil.rmtree(run)
        run.mkdir()
        shutil.copy(tmp_path / "a" / f"checkpoint-{step:08d}.safetensors", run)
        resumed = from_checkpoint(run)
        resumed.fit(corpus, stage_steps=2, out_dir=run, resume=True, **FIT)
        assert resumed.history_["train"]["loss"] == straight.history_["train"]["loss"]
        for key, value in straight.state_dict().items():
            assert torch.equal(resumed.state_dict()[key], value), key


def test_save_and_load_through_cerebrum(corpus, tmp_path):
    brain = Cerebrum()
    # seq_len is a model field (the context) and a fit field: one key sets both
    brain.fit_and_add(corpus, "mgm", model_id="m", stage_steps=1, **{**TINY, **FIT})
    assert brain.models["m"].context_length == 16
    text = ["def f3(x):\n    return x + 3\n"]
    score = brain.score("m", text)
    assert 0 < score < 20
    brain.save(tmp_path / "b.cbm")
    loaded = Cerebrum.load(tmp_path / "b.cbm")
    assert loaded.score("m", text) == score
    assert loaded.generate("m", "def", max_new_tokens=6, temperature=0) == brain.generate(
        "m", "def", max_new_tokens=6, temperature=0)
    assert loaded.models["m"].config == brain.models["m"].config


def test_the_seeds_example_settings_train(corpus):
    model = MGMLanguageModel(seq_len=16, hidden_dim=128, experts_num=16, k_experts=4,
                             num_heads=12, n_layer=1, memory_slots=4, memory_width=16)
    model.fit(corpus, **{**FIT, "seq_len": 8, "batch_size": 2}, steps=5)
    assert len(model.history_["train"]["loss"]) == 5
    total, active = model.parameter_counts()
    assert active < total


def test_the_ablation_skip_setup_and_amp_off(corpus):
    model = tiny()
    config = model.fit_config(steps=20, staged=False, amp_off=True)
    assert config.precision == "fp32"
    assert [p.name for p in model.phases(config)] == ["joint"]
    staged = model.phases(model.fit_config(steps=20))
    assert [p.name for p in staged] == list(STAGES)
    assert sum(p.steps for p in staged) == 20
    skipped = model.phases(model.fit_config(stage_steps=[1, 2, 3, 4, 5], skip_setup=True))
    assert [(p.name, p.steps) for p in skipped] == list(zip(STAGES[1:], [2, 3, 4, 5],
                                                            strict=True))
    flat = tiny(manifolds=("euclidean", "simplex"))  # nothing to calibrate
    assert flat.phases(flat.fit_config(steps=10))[0].name == "reasoning_warmup"


def test_gate_training_anneals_the_temperature(corpus):
    model = tiny()
    model.fit(corpus, stage_steps=3, gate_temperature=2.0, **FIT)
    temps = model.history_["train"]["gate_temperature"]
    gate = [t for t in temps if t == t]  # NaN outside the gate stage
    assert gate == pytest.approx([2.0, 1.5, 1.0])


def test_metrics_report_loads_and_curvatures(corpus):
    model = tiny(nuanced_routing=True)
    model.fit(corpus, stage_steps=1, **FIT)
    train = model.history_["train"]
    loads = [train[f"load_e{j}"][-1] for j in range(8)]
    assert sum(loads) == pytest.approx(1.0)
    assert train["curv_e1"][-1] < 0 < train["curv_e2"][-1]
    assert train["curv_e7_sphere"][-1] > 0
    assert len(model.curvatures()) == 1 and len(model.curvatures()[0]) == 8


def test_parameter_counts():
    model = tiny(manifolds=("euclidean",))
    total, active = model.parameter_counts()
    expert = sum(p.numel() for p in model.mgm.blocks[0].moe.experts[0].parameters())
    assert total == sum(p.numel() for p in model.parameters())
    assert total - active == (8 - 2) * expert


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    (dict(k_experts=9), ValueError, r"k_experts must be <= experts_num \(8\)"),
    (dict(manifolds=["euclidean", "torus"]), ValueError, "unknown manifold 'torus'"),
    (dict(curvature_range=[2.0, -1.0]), ValueError, "curvature_range must be"),
    (dict(tokenizer="words"), ValueError, "tokenizer must be one of"),
])
def test_bad_model_settings_are_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        tiny(**kwargs)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    (dict(stage_steps=[1, 2]), ValueError, "stage_steps must be a positive int or a list of 5"),
    (dict(stage_steps=0), ValueError, "stage_steps must be"),
    (dict(amp_off="yes"), TypeError, "amp_off must be a bool"),
    (dict(gate_temperature=0), ValueError, "gate_temperature must be a number > 0"),
])
def test_bad_fit_settings_are_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        MGMTrainConfig(**kwargs)


def test_too_few_steps_for_five_stages():
    model = tiny()
    with pytest.raises(ValueError, match="five training stages need steps >= 5"):
        model.phases(model.fit_config(steps=3))


def test_the_block_options_keep_causality():
    """qk_norm, zero_init_residual and tangent_radius (the study's options): the residual
    projections start at zero, the squash keeps sqrt(c)|u| below the radius, and an earlier
    position's logits do not see a later token."""
    torch.manual_seed(0)
    model = tiny(qk_norm=True, zero_init_residual=True, tangent_radius=2.0).double()
    assert all(not p.any() for n, p in model.named_parameters()
               if n.endswith(("attn.proj.weight", "down.weight")))
    for p in model.parameters():  # leave the identity so that the check means something
        p.data.add_(torch.randn_like(p) * 0.05)
    expert = next(e for e in model.mgm.blocks[0].moe.experts if e.kind == "spherical")
    u = torch.randn(5, expert.up.out_features, dtype=torch.float64) * 100
    m = expert.manifold
    assert (m.c.sqrt() * expert.squash(u).norm(dim=-1) <= 2.0 + 1e-9).all()
    ids = torch.randint(0, 259, (2, 12))
    changed = ids.clone()
    changed[:, 8:] = torch.randint(0, 259, (2, 4))
    a, b = model.mgm(ids)[0], model.mgm(changed)[0]
    torch.testing.assert_close(a[:, :8], b[:, :8], atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="tangent_radius must be >= 0"):
        tiny(tangent_radius=-1.0)
