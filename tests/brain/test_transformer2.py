"""Transformer² on the language-model seam: experts, training, dispatch, CEM mixtures,
two-pass generation, persistence and the `cerebrum adapt` command."""

import pytest
import torch

from cerebrum import Cerebrum
from cerebrum.brain.gpt import GPTLanguageModel
from cerebrum.brain.language_model import from_checkpoint
from cerebrum.brain.neat import NEATLanguageModel
from cerebrum.brain.transformer2 import TaskBatches, transformer2_of
from cerebrum.cli import main as cli_main
from cerebrum.data.tasks import parse_task
from cerebrum.nn.svf import scale_of

ADD, REV = parse_task("add", "add"), parse_task("rev", "reverse")


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPTLanguageModel(n_layer=2, n_head=2, n_embd=32, block_size=48)


def ids_of(model, texts):
    rows = [[model.tokenizer.bos_id, *model.tokenizer.encode(t)] for t in texts]
    width = max(map(len, rows))
    return torch.tensor([r + [model.tokenizer.pad_id] * (width - len(r)) for r in rows])


def test_a_zero_expert_gives_the_base_logits_exactly():
    model = tiny_gpt()
    t2 = transformer2_of(model)
    t2.experts["zero"] = [torch.zeros(r) for r in t2.basis.ranks]
    ids = ids_of(model, ["12+34=", "rev abc="])
    base = model.token_logits(ids)
    with t2.using("zero"):
        assert torch.equal(model.token_logits(ids), base)


def test_training_gives_gradients_to_z_only_and_leaves_the_base_unchanged():
    model = tiny_gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    t2 = transformer2_of(model)
    history = t2.train_expert(ADD, steps=4, batch_size=4, lr=0.1)
    assert len(history["train"]["loss"]) == 4
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())  # no gradient reached the base
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert any(z.abs().max() > 0 for z in t2.experts["add"])  # z did learn
    assert [z.shape[0] for z in t2.experts["add"]] == t2.basis.ranks


def test_next_token_loss_is_on_the_answers_only():
    model = tiny_gpt()
    batch = next(TaskBatches(ADD, model.tokenizer, batch_size=3, context=48))
    for ids, targets in zip(batch["ids"], batch["targets"], strict=True):
        text = model.tokenizer.decode([int(t) for t in targets if t >= 0])
        prompt = model.tokenizer.decode(ids[1:].tolist()).split("=")[0]
        a, b = prompt.split("+")
        assert text == f"{int(a) + int(b)}\n"


def test_reinforce_starts_with_zero_kl_and_reports_the_reward():
    model = tiny_gpt()
    t2 = transformer2_of(model)
    history = t2.train_expert(ADD, method="reinforce", steps=2, batch_size=4, lr=0.1,
                              max_answer_tokens=4)
    assert history["train"]["kl"][0] == pytest.approx(0.0, abs=1e-6)  # z = 0 is the base
    assert 0.0 <= history["train"]["reward"][0] <= 1.0
    with pytest.raises(ValueError, match="reinforce"):
        t2.train_expert(parse_task("d", "corpus:README.md"), method="reinforce", steps=1)
    with pytest.raises(ValueError, match="method"):
        t2.train_expert(ADD, method="evolve", steps=1)


def test_a_one_hot_mixture_reproduces_its_expert_exactly():
    model = tiny_gpt()
    t2 = transformer2_of(model)
    torch.manual_seed(3)
    for name in ("a", "b"):
        t2.experts[name] = [torch.randn(r) for r in t2.basis.ranks]
    t2.mixtures["just-b"] = {"experts": ["a", "b"], "alpha": torch.tensor([0.0, 1.0])}
    ids = ids_of(model, ["sort 3 1 2="])
    with t2.using("b"):
        expert = model.token_logits(ids)
    with t2.using("just-b"):
        assert torch.equal(model.token_logits(ids), expert)
    assert not torch.equal(expert, model.token_logits(ids))


def test_adapted_weights_are_cached_and_follow_base_changes():
    model = tiny_gpt()
    t2 = transformer2_of(model)
    t2.experts["a"] = [torch.full((r,), 0.5) for r in t2.basis.ranks]
    first = t2.weights("a")
    assert t2.weights("a") is first
    with torch.no_grad():
        t2.basis.modules[0].weight.mul_(0.5)
    second = t2.weights("a")
    assert second is not first
    U, s, Vh = torch.linalg.svd(t2.basis.modules[0].weight.detach(), full_matrices=False)
    torch.testing.assert_close(second[0], U @ torch.diag(s * scale_of(torch.tensor(0.5))) @ Vh,
                               atol=1e-5, rtol=1e-5)


def test_dispatchers_and_two_pass_generation():
    model = tiny_gpt()
    t2 = transformer2_of(model)
    for task in (ADD, REV):
        t2.train_expert(task, steps=2, batch_size=4)
    assert t2.fit_classifier([ADD, REV], n_per_task=24, steps=100) == 1.0
    prompts = [p for p, _ in ADD.examples(5, seed=9)] + [p for p, _ in REV.examples(5, seed=9)]
    assert t2.dispatch(prompts, "classifier") == ["add"] * 5 + ["rev"] * 5
    t2.train_classification_expert([ADD, REV], steps=2, batch_size=4)
    assert set(t2.dispatch(prompts, "expert")) <= {"add", "rev"}
    features = t2.prompt_features(prompts)
    assert features.shape == (10, 32)
    auto = model.generate("12+34=", 4, temperature=0, adapt="auto")
    assert auto == model.generate("12+34=", 4, temperature=0, adapt="add")
    with t2.using("add"):
        assert auto == model.generate("12+34=", 4, temperature=0)
    with pytest.raises(ValueError, match="adapt"):
        model.generate("12+34=", 4, adapt="nope")
    with pytest.raises(ValueError, match="strategy"):
        t2.dispatch(prompts, "vote")


def test_generate_with_adapt_needs_experts():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="adapt"):
        model.generate("1+1=", 2, adapt="auto")
    transformer2_of(model).experts["a"] = [torch.zeros(r) for r in
                                           transformer2_of(model).basis.ranks]
    with pytest.raises(ValueError, match="dispatcher"):
        model.generate("1+1=", 2, adapt="auto")


def test_cem_mixture_is_stored_and_never_worse_than_the_uniform_start():
    model = tiny_gpt()
    t2 = transformer2_of(model)
    for task in (ADD, REV):
        t2.train_expert(task, steps=2, batch_size=4)
    examples = parse_task("a3", "add:digits=3").examples(4)
    result = t2.search_mixture(examples, name="a3-mix", population=4, elites=2,
                               generations=2)
    assert all(b >= a for a, b in zip(result["history"], result["history"][1:], strict=False))
    t2.mixtures["uniform"] = {"experts": ["add", "rev"], "alpha": torch.tensor([0.5, 0.5])}
    with t2.using("uniform"):
        logp, count = t2.answer_logprobs(examples)
    assert result["fitness"] >= float(logp.sum() / count.sum()) - 1e-6  # the start
    with t2.using("a3-mix"):
        logp, count = t2.answer_logprobs(examples)
    assert float(logp.sum() / count.sum()) == pytest.approx(result["fitness"], abs=1e-5)
    with pytest.raises(ValueError, match="experts"):
        t2.search_mixture(examples, name="x", experts=["zzz"])
    with pytest.raises(ValueError, match="name"):
        t2.search_mixture(examples, name="auto")


def test_experts_round_trip_exactly_through_a_file(tmp_path):
    model = tiny_gpt()
    t2 = transformer2_of(model)
    t2.train_expert(ADD, steps=2, batch_size=4)
    t2.train_expert(REV, steps=2, batch_size=4)
    t2.fit_classifier([ADD, REV], n_per_task=8, steps=10)
    t2.train_classification_expert([ADD, REV], steps=1, batch_size=4)
    t2.search_mixture(ADD.examples(2), name="mix", population=2, elites=1, generations=1)
    brain = Cerebrum()
    brain.add_model(model, "lm")
    brain.save(tmp_path / "b.cbm")
    loaded = Cerebrum.load(tmp_path / "b.cbm").models["lm"]
    assert loaded.adaptation_ == model.adaptation_
    u2 = transformer2_of(loaded, create=False)
    for name in ("add", "rev"):
        assert all(torch.equal(a, b) for a, b in zip(u2.experts[name], t2.experts[name],
                                                      strict=True))
    ids = ids_of(model, ["12+34=", "rev abc="])
    for name in ("add", "mix"):
        with t2.using(name):
            want = model.token_logits(ids)
        with u2.using(name):
            assert torch.equal(loaded.token_logits(ids), want)
    assert u2.dispatch(["1+2=", "rev ab="]) == t2.dispatch(["1+2=", "rev ab="])


def test_a_state_that_does_not_fit_is_refused():
    model = tiny_gpt()
    t2 = transformer2_of(model)
    t2.experts["a"] = [torch.zeros(r) for r in t2.basis.ranks]
    state = model.adaptation_
    state["experts"]["a"][0] = state["experts"]["a"][0][:-1]
    with pytest.raises(ValueError, match="expert 'a'"):
        tiny_gpt().adaptation_ = state


def test_experts_work_on_the_neat_family():
    torch.manual_seed(0)
    model = NEATLanguageModel(n_layer=1, n_head=2, n_embd=16, block_size=32)
    t2 = transformer2_of(model)
    assert all("mlp" in n for n in t2.basis.names)
    t2.experts["zero"] = [torch.zeros(r) for r in t2.basis.ranks]
    ids = ids_of(model, ["1+2="])
    base = model.token_logits(ids)
    with t2.using("zero"):
        assert torch.equal(model.token_logits(ids), base)
    t2.train_expert(ADD, steps=2, batch_size=2)
    assert model.generate("1+2=", 3, temperature=0, adapt="add") is not None


def test_cerebrum_adapt_command(tmp_path, capsys):
    model = tiny_gpt()
    (tmp_path / "mix.txt").write_text("12+34=46\nrev abc=cba\n" * 50)
    model.fit(str(tmp_path / "mix.txt"), steps=2, batch_size=2, seq_len=32,
              out_dir=tmp_path / "run", eval_every=None)
    out = tmp_path / "adapted.cbm"
    assert cli_main(["adapt", str(tmp_path / "run"), "--task", "add=add", "--task",
                     "rev=reverse", "--held-out", "a3=add:digits=3", "--steps", "2",
                     "--batch-size", "4", "--population", "2", "--elites", "1",
                     "--generations", "1", "--n-eval", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rank-4 LoRA" in printed and "mixture a3" in printed
    brain = Cerebrum()
    brain.import_model("m", out)
    t2 = transformer2_of(brain.models["m"], create=False)
    assert set(t2.experts) == {"add", "rev"} and set(t2.mixtures) == {"a3"}
    assert t2.classifier is not None and t2.classification_expert is not None
    assert cli_main(["adapt", str(out), "--prompt", "12+34=", "--adapt", "auto", "-n",
                     "3"]) == 0
    assert "pass one dispatched to: add" in capsys.readouterr().out
    assert cli_main(["adapt", str(out), "--task", "add"]) == 2
    assert "--task" in capsys.readouterr().err
    assert cli_main(["adapt", str(out), "--task", "x=divide"]) == 2
    assert "spec" in capsys.readouterr().err
    assert cli_main(["adapt", str(tmp_path / "run"), "--task", "a=add"]) == 2
    assert "--out" in capsys.readouterr().err


NEAT_TINY = dict(block_size=32, n_layer=1, n_head=2, n_embd=16, local_dim=16, local_heads=2,
                 ngram_buckets=32, entropy_layers=1, entropy_dim=16, attention_window=8,
                 n_persistent=2, memory_dim=8, memory_hidden=8, memory_chunk=4,
                 patch_size=3.0, max_patch_length=6, adaptation_tasks="add;max",
                 adaptation_steps=2)


@pytest.fixture
def neat_corpus(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"f{i}.txt").write_text(f"{i}+{i}={2 * i}\nmax 1 {i % 10} 3={max(3, i % 10)}\n")
    return corpus


@pytest.mark.parametrize(("blt", "titans"), [(False, False), (True, True)])
def test_the_neat_switch_trains_experts_and_dispatches(neat_corpus, tmp_path, blt, titans):
    torch.manual_seed(0)
    model = NEATLanguageModel(**NEAT_TINY, use_transformer2_adaptation=True,
                              use_blt_processor=blt, use_titans_memory=titans,
                              patching="fixed")
    model.fit(str(neat_corpus), steps=2, batch_size=2, seq_len=16, eval_every=None,
              shuffle_rows=0, out_dir=tmp_path / "run")
    t2 = transformer2_of(model, create=False)
    assert set(t2.experts) == {"add", "max"} and t2.classifier is not None
    assert all(not n.startswith("net.entropy_model") for n in t2.basis.names)
    assert isinstance(model.generate("1+2=", 3, temperature=0, adapt="auto"), str)
    loaded = from_checkpoint(tmp_path / "run")  # the final checkpoint records the experts
    assert loaded.adaptation_ == model.adaptation_
    rows = dict(model.evaluation_rows([]))
    assert "base" in rows["Transformer² accuracy on add (100 examples)"]


def test_the_neat_command_lines_with_the_transformer2_switch(neat_corpus, tmp_path, capsys):
    import argparse
    import json

    from cerebrum import cli_neat

    def neat_cli(*argv):
        parser = argparse.ArgumentParser()
        cli_neat.add_command(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["neat", *argv])
        return args.handler(args)

    sets = [x for k, v in NEAT_TINY.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    out = tmp_path / "outputs"
    assert neat_cli("--mode", "train", "--use_transformer2_adaptation", "--use_blt_processor",
                    "--use_titans_memory", "--batch_size", "2", "--max_steps", "3",
                    "--output_dir", str(out), "--corpus", str(neat_corpus), "--validation",
                    "0.2", *sets, "--set", "seq_len=16", "--set", "shuffle_rows=0",
                    "--set", "verbose=false", "--set", "eval_every=null") == 0
    capsys.readouterr()
    assert neat_cli("--mode", "eval", "--model_path", str(out / "best_model"),
                    "--max_documents", "2") == 0
    assert "Transformer² accuracy on max" in capsys.readouterr().out
    assert neat_cli("--mode", "profile", "--use_transformer2_adaptation", "--use_blt_processor",
                    "--json", "--batch_size", "2", "--repeats", "1", *sets) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["byte transformer", "blt_processor",
                                         "transformer2_adaptation",
                                         "blt_processor+transformer2_adaptation"]
    assert all(r["flops_per_byte"] > 0 for r in rows)


def test_all_four_neat_switches_train_generate_and_profile(tmp_path):
    from cerebrum.cli_neat import measure

    settings = dict(block_size=160, n_layer=1, n_head=2, n_embd=16, local_dim=16,
                    local_heads=2, attention_window=16, memory_dim=8, memory_hidden=8,
                    memory_chunk=8, patching="fixed", adaptation_tasks="add;max",
                    adaptation_steps=2, vqvae_steps=2, use_mvot_processor=True,
                    use_transformer2_adaptation=True, use_blt_processor=True,
                    use_titans_memory=True)
    torch.manual_seed(0)
    model = NEATLanguageModel(**settings)
    model.fit(None, steps=4, batch_size=2, seq_len=150, eval_every=None, shuffle_rows=0,
              out_dir=tmp_path / "run")
    assert set(transformer2_of(model, create=False).experts) == {"add", "max"}
    assert isinstance(model.generate("1+2=", 2, temperature=0, adapt="auto"), str)
    assert from_checkpoint(tmp_path / "run").adaptation_ == model.adaptation_
    row = measure("all four", settings, batch_size=2, repeats=1)
    assert row["flops_per_byte"] > 0 and row["mean_patch_size"] > 1
