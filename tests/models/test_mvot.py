"""MVoT: the token discrepancy loss against hand computations, the interleaved layout,
constrained decoding of image spans, and the "neat" family with `use_mvot_processor`:
phases (codebook first, then frozen), every switch combination, save / load, the command
lines, clear errors."""

import argparse
import json
import math

import pytest
import torch

from cerebrum import Cerebrum, cli_neat
from cerebrum._util.png import read_png
from cerebrum.brain.neat import NEATLanguageModel
from cerebrum.data.gridworld import MOVES, OUTCOMES
from cerebrum.models.mvot import (
    BOS,
    CODE_OFFSET,
    EOS,
    IMAGE_END,
    IMAGE_START,
    MVoTConfig,
    MVoTProcessor,
    SpanConstraint,
    codebook_distances,
    image_discrepancy,
    image_spans,
    token_discrepancy_loss,
)

CODES = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
#: MSE distances of CODES: (0,1) 0.5, (0,2) 2.0, (1,2) 2.5; normalised by 2.5
S_MSE = torch.tensor([[0.0, 0.2, 0.8], [0.2, 0.0, 1.0], [0.8, 1.0, 0.0]])
SMALL = dict(grid_size=3, grid_moves=2, cell_pixels=2, vq_patch=2, codebook_size=8,
             code_dim=4, vq_hidden=8)
TINY = dict(block_size=48, n_layer=1, n_head=2, n_embd=16, local_dim=16, local_heads=2,
            ngram_buckets=32, entropy_layers=1, entropy_dim=16, attention_window=8,
            n_persistent=2, memory_dim=8, memory_hidden=8, memory_chunk=4, patch_size=3.0,
            max_patch_length=6, use_mvot_processor=True, vqvae_steps=2, **SMALL)
FIT = dict(batch_size=3, warmup_steps=1, lr=0.01, eval_every=None, log_every=1,
           random_state=0)


def test_codebook_distances_by_hand():
    assert torch.allclose(codebook_distances(CODES, "mse"), S_MSE)
    root5 = math.sqrt(5)
    euclid = torch.tensor([[0, 1, 2], [1, 0, root5], [2, root5, 0]]) / root5
    assert torch.allclose(codebook_distances(CODES, "euclidean"), euclid)


def test_the_discrepancy_loss_on_a_three_code_case():
    # target 0 with P = (0.5, 0.25, 0.25): 0.2 * 0.25 + 0.8 * 0.25 = 0.25
    # target 2 with a uniform P: (0.8 + 1.0 + 0.0) / 3 = 0.6
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]))
    loss = token_discrepancy_loss(logits, torch.tensor([0, 2]), S_MSE)
    assert loss.item() == pytest.approx((0.25 + 0.6) / 2)


def test_the_discrepancy_is_zero_for_a_one_hot_prediction_of_the_true_code():
    logits = torch.full((3, 3), float("-inf"))
    logits[torch.arange(3), torch.arange(3)] = 0.0
    assert token_discrepancy_loss(logits, torch.arange(3), S_MSE).item() == 0.0


def test_a_uniform_prediction_costs_the_mean_distance_row():
    logits = torch.zeros(3, 3)
    for t in range(3):
        loss = token_discrepancy_loss(logits[t:t + 1], torch.tensor([t]), S_MSE)
        assert loss.item() == pytest.approx(S_MSE[t].mean().item())


def test_text_logits_get_no_gradient_from_the_discrepancy():
    vocab = CODE_OFFSET + 3
    logits = torch.randn(2, 5, vocab, requires_grad=True)
    targets = torch.tensor([[65, CODE_OFFSET + 1, IMAGE_END, -100, CODE_OFFSET],
                            [CODE_OFFSET + 2, 66, EOS, 67, 68]])
    loss, code_logits, code_targets = image_discrepancy(logits, targets, S_MSE)
    assert code_logits.shape == (3, 3) and code_targets.tolist() == [1, 0, 2]
    loss.backward()
    assert logits.grad[..., :CODE_OFFSET].abs().sum() == 0  # text and marker logits
    assert logits.grad[..., CODE_OFFSET:].abs().sum() > 0
    assert logits.grad[0, 2].abs().sum() == 0  # a text position's code logits too


def processor(task="mvot", **kw):
    torch.manual_seed(0)
    return MVoTProcessor(MVoTConfig(mvot_task=task, **{**SMALL, **kw}))


def test_the_interleaved_layout():
    p = processor()
    batch = p.sample_batch(4, seed=1)
    ids = p.sequences(batch)
    c = p.config
    N = c.tokens_per_image
    assert ids.shape == (4, c.sequence_length) and N == 9
    codes = p.vqvae.encode(batch["frames"].flatten(0, 1)).view(4, 3, N) + CODE_OFFSET
    assert (ids[:, 0] == BOS).all() and (ids[:, 1] == IMAGE_START).all()
    assert torch.equal(ids[:, 2:2 + N], codes[:, 0])
    moves = "".join(MOVES[m] for m in batch["moves"][0].tolist())
    assert bytes(ids[0, 3 + N:3 + N + 3].tolist()).decode() == moves + "?"
    # step i: move_i <img> v_i </img>
    step = ids[:, c.prompt_length:c.prompt_length + 2 * (N + 3)].view(4, 2, N + 3)
    assert torch.equal(step[:, :, 2:2 + N], codes[:, 1:])
    assert (step[:, :, 1] == IMAGE_START).all() and (step[:, :, -1] == IMAGE_END).all()
    answer = bytes(ids[0, -6:-1].tolist()).decode()
    assert answer == "=" + OUTCOMES[int(batch["outcome"][0])] and ids[0, -1] == EOS
    _, targets = p.training_pair(batch)
    assert (targets[:, :c.prompt_length - 1] == -100).all()
    assert torch.equal(targets[:, c.prompt_length - 1:], ids[:, c.prompt_length:])
    cot = processor("text_cot").sequences(batch)
    assert torch.equal(cot[:, :c.prompt_length], ids[:, :c.prompt_length])
    row, col = batch["positions"][0, 1].tolist()
    assert bytes(cot[0, c.prompt_length:c.prompt_length + 4].tolist()).decode() == (
        f"{moves[0]}{row}{col} ")
    assert processor("direct").sequences(batch).shape[1] == c.prompt_length + 6


def test_every_generated_image_span_has_the_codebook_token_count():
    p = processor()
    batch = p.sample_batch(5, seed=2)
    generator = torch.Generator().manual_seed(0)

    def random_logits(ids):  # favours <img> and </img> so spans open and try to close early
        logits = torch.randn(ids.shape[0], ids.shape[1], p.vocab_size, generator=generator)
        logits[..., IMAGE_START] += 3
        logits[..., IMAGE_END] += 3
        return logits

    result = p.solve(random_logits, batch, max_new_tokens=60)
    assert result["spans_ok"]
    for tokens in result["tokens"]:
        assert tokens.count(IMAGE_START) >= 1
        i = 0
        while i < len(tokens):
            if tokens[i] == IMAGE_START and i + 10 < len(tokens):
                body = tokens[i + 1:i + 10]
                assert all(t >= CODE_OFFSET for t in body) and tokens[i + 10] == IMAGE_END
                i += 11
            else:  # outside a span: no code, no </img> (a span cut by the limit aside)
                assert (tokens[i] < CODE_OFFSET and tokens[i] != IMAGE_END) or (
                    i + 10 >= len(tokens))
                i += 1
    assert 0 <= result["task_accuracy"] <= 1 and 0 <= result["visualization_accuracy"] <= 1


def test_the_constraint_state_machine():
    prefix = torch.tensor([[BOS, IMAGE_START, CODE_OFFSET], [BOS, 65, 66]])
    constraint = SpanConstraint(prefix, tokens_per_image=2, vocab_size=CODE_OFFSET + 4)
    allowed = constraint.mask(torch.zeros(2, CODE_OFFSET + 4)).isfinite()
    assert allowed[0].nonzero().flatten().tolist() == list(range(CODE_OFFSET, CODE_OFFSET + 4))
    assert allowed[1, IMAGE_START] and allowed[1, 65] and allowed[1, EOS]
    assert not allowed[1, CODE_OFFSET:].any() and not allowed[1, IMAGE_END]
    constraint.update(torch.tensor([CODE_OFFSET + 1, IMAGE_START]))
    allowed = constraint.mask(torch.zeros(2, CODE_OFFSET + 4)).isfinite()
    assert allowed[0].nonzero().flatten().tolist() == [IMAGE_END]
    assert image_spans([IMAGE_START, CODE_OFFSET, CODE_OFFSET + 3, IMAGE_END, 65], 2) == [[0, 3]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A one-file corpus: MVoT trains on puzzles and ignores it (the default corpus would
    cost seconds to list)."""
    path = tmp_path_factory.mktemp("corpus") / "a.txt"
    path.write_text("puzzles, not text\n")
    return str(path)


def mvot_model(**kw):
    torch.manual_seed(0)
    return NEATLanguageModel(**{**TINY, **kw})


def test_phases_train_what_they_should(corpus):
    model = mvot_model(vqvae_steps=3)
    with pytest.raises(ValueError, match="must exceed vqvae_steps"):
        model.fit(corpus, steps=3, **FIT)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    phases = model.phases(model.fit_config(steps=5))
    assert [p.name for p in phases] == ["vqvae", "main"]
    assert phases[0].trainable == ("mvot.vqvae.",) and phases[1].trainable == ("net.",)
    model.fit(corpus, steps=5, **FIT)
    after = model.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in start.items() if k.startswith("mvot."))
    assert any(not torch.equal(after[k], v) for k, v in start.items() if k.startswith("net."))
    history = model.history_["train"]
    assert all(math.isfinite(x) for x in history["reconstruction"][:3])
    assert all(math.isnan(x) for x in history["discrepancy"][:3])
    assert all(x >= 0 for x in history["discrepancy"][3:])
    # the codebook is frozen after its phase: training "main" further leaves it as it is
    codebook = model.mvot.vqvae.codebook.clone()
    model.loss(model, model.mvot.sample_batch(3), None)[0].backward()
    assert all(p.grad is None for p in model.mvot.parameters())
    assert torch.equal(model.mvot.vqvae.codebook, codebook)


@pytest.mark.parametrize("switches", [dict(), dict(use_blt_processor=True,
                                                   use_titans_memory=True),
                                      dict(use_blt_processor=True, patching="fixed")])
def test_every_combination_trains_solves_and_generates(switches, corpus):
    model = mvot_model(**switches)
    model.fit(corpus, steps=4, **FIT)
    report = model.mvot_report(3, batch_size=3)
    assert report["spans_ok"] and 0 <= report["task_accuracy"] <= 1
    text = model.generate("R", max_new_tokens=30, temperature=1.0, random_state=0)
    assert isinstance(text, str)


def test_save_and_load_keep_the_codebook_exactly(tmp_path, corpus):
    brain = Cerebrum()
    torch.manual_seed(0)
    brain.fit_and_add(corpus, "neat", model_id="m", steps=4, **TINY, **FIT)
    brain.save(tmp_path / "m.cbm")
    loaded = Cerebrum.load(tmp_path / "m.cbm")
    a, b = brain.models["m"], loaded.models["m"]
    assert torch.equal(a.mvot.vqvae.codebook, b.mvot.vqvae.codebook)
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, rtol=0, atol=0, equal_nan=True)
    batch = a.mvot.sample_batch(2, seed=3)
    assert a.mvot.solve(a.token_logits, batch, context=48)["tokens"] == b.mvot.solve(
        b.token_logits, batch, context=48)["tokens"]


def neat_cli(*argv):
    parser = argparse.ArgumentParser()
    cli_neat.add_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["neat", *argv])
    return args.handler(args)


def test_the_command_lines(tmp_path, capsys, corpus):
    sets = [x for k, v in TINY.items() if k != "use_mvot_processor"
            for x in ("--set", f"{k}={json.dumps(v)}")]
    out = tmp_path / "outputs"
    assert neat_cli("--mode", "train", "--use_mvot_processor", "--use_blt_processor",
                    "--use_titans_memory", "--batch_size", "3", "--max_steps", "4",
                    "--output_dir", str(out), "--corpus", corpus, *sets, "--set", "verbose=false",
                    "--set", "eval_every=null") == 0
    assert "done: step 4" in capsys.readouterr().out
    assert neat_cli("--mode", "eval", "--model_path", str(out / "best_model"), "--puzzles", "3",
                    "--images", str(tmp_path / "png")) == 0
    printed = capsys.readouterr().out
    assert "task accuracy" in printed and "visualisation accuracy" in printed
    strips = sorted((tmp_path / "png").glob("*.png"))
    assert len(strips) == 3
    assert read_png(strips[0]).shape == (2 * 6 + 2, 3 * 6 + 2 * 2, 3)
    assert neat_cli("--mode", "profile", "--use_mvot_processor", "--json", "--batch_size", "2",
                    "--repeats", "1", *sets) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["byte transformer", "mvot_processor"]
    assert all(r["flops_per_byte"] > 0 for r in rows)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(mvot_task="caption"), "mvot_task must be one of"),
    (dict(discrepancy_distance="cosine"), "discrepancy_distance must be one of"),
    (dict(vq_patch=4), r"vq_patch \(4\) must divide"),
    (dict(discrepancy_weight=-1.0), "discrepancy_weight must be"),
    (dict(codebook_size=1), "codebook_size must be >= 2"),
    (dict(grid_moves=30), r"block_size \(48\) must be >="),
])
def test_bad_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NEATLanguageModel(**{**TINY, **kwargs})


def test_bad_calls_are_clear_errors():
    with pytest.raises(ValueError, match="needs use_mvot_processor"):
        NEATLanguageModel(block_size=16).mvot_report(2)
    with pytest.raises(ValueError, match="n_puzzles"):
        mvot_model().mvot_report(0)
    with pytest.raises(ValueError, match=r"code_logits must be \(M, 3\)"):
        token_discrepancy_loss(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), S_MSE)
    with pytest.raises(ValueError, match="distance must be one of"):
        codebook_distances(CODES, "cosine")
