"""The training engine: schedule, exact resume (also after SIGINT), DDP equals one process,
checkpoint errors, logs."""

import itertools
import json
import os
import signal
import socket

import numpy as np
import pytest
import torch

from cerebrum import CerebrumFileError
from cerebrum.data import ByteTokenizer, Corpus
from cerebrum.models.gpt import GPT
from cerebrum.train.batches import TokenBatches
from cerebrum.train.engine import (
    Phase,
    TrainConfig,
    Trainer,
    count_tokens,
    lr_at,
    move_to,
    read_checkpoint,
)
from cerebrum.train.lm import next_token_loss


@pytest.fixture
def corpus_dir(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i}.txt").write_text(f"def function_{i}(x):\n    return x * {i}\n" * 4)
    return corpus


def build(corpus_dir, *, batch_size=4, rank=0, world_size=1):
    torch.manual_seed(0)
    model = GPT(vocab_size=259, block_size=32, n_layer=1, n_head=2, n_embd=16)
    corpus = Corpus(str(corpus_dir), validation=0, test=0)
    batches = TokenBatches(corpus, ByteTokenizer(), batch_size=batch_size, seq_len=16,
                           rank=rank, world_size=world_size)
    return model, batches


def config_for(steps, **kw):
    settings = dict(batch_size=4, seq_len=16, lr=1e-2, warmup_steps=2, checkpoint_every=100,
                    eval_every=100, log_every=1)
    return TrainConfig(steps=steps, **{**settings, **kw})


def test_warmup_then_cosine():
    config = TrainConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    rates = [lr_at(s, config, 20) for s in range(20)]
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0]
    assert rates[4] == pytest.approx(1.0) and rates[-1] > 0.1
    assert all(a >= b for a, b in itertools.pairwise(rates[4:]))
    assert lr_at(20, config, 20) == pytest.approx(0.1)


def test_warmup_stable_decay():
    config = TrainConfig(lr=1.0, warmup_steps=2, schedule="wsd", min_lr_ratio=0.0,
                         decay_fraction=0.25)
    rates = [lr_at(s, config, 20) for s in range(21)]
    assert rates[:2] == [0.5, 1.0]
    assert rates[2:16] == [1.0] * 14  # stable until the last quarter
    assert rates[15:] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_after_sigint_continues_the_same_loss_curve(corpus_dir, tmp_path, optimizer):
    model, batches = build(corpus_dir)
    straight = Trainer(model, next_token_loss, batches, config_for(6, optimizer=optimizer),
                       verbose=False).run()

    calls = {"n": 0}

    def interrupt_at_third_step(model, batch, context):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the step finishes, then a checkpoint
        return next_token_loss(model, batch, context)

    out = tmp_path / "run"
    model, batches = build(corpus_dir)
    first = Trainer(model, interrupt_at_third_step, batches,
                    config_for(6, optimizer=optimizer), out_dir=out, verbose=False).run()
    assert first["interrupted"] and first["train"]["step"] == [1, 2, 3]
    model, batches = build(corpus_dir)
    torch.manual_seed(123)  # the checkpoint restores the RNG, whatever happened since
    resumed = Trainer(model, next_token_loss, batches, config_for(6, optimizer=optimizer),
                      out_dir=out, verbose=False).run(resume=True)
    assert resumed["train"]["loss"] == straight["train"]["loss"]
    assert straight["train"]["loss"][-1] < straight["train"]["loss"][0]
    curves = np.load(out / "curves.npz")
    assert list(curves["train_step"]) == [1, 2, 3, 4, 5, 6]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("loss" in r or any(k.startswith("eval/") for k in r) for r in logged)


def test_gradient_accumulation_equals_the_large_batch(corpus_dir):
    model, batches = build(corpus_dir, batch_size=4)
    big = Trainer(model, next_token_loss, batches, config_for(3), verbose=False).run()
    model, batches = build(corpus_dir, batch_size=2)
    accumulated = Trainer(model, next_token_loss, batches,
                          config_for(3, grad_accum=2), verbose=False).run()
    np.testing.assert_allclose(accumulated["train"]["loss"], big["train"]["loss"], rtol=1e-5)


def test_denormals_are_flushed_while_training_and_only_then(corpus_dir):
    seen = []

    def loss_recording_denormals(net, batch, context):
        seen.append(float(torch.tensor([1e-39]) * 1.0))
        return next_token_loss(net, batch, context)

    model, batches = build(corpus_dir)
    Trainer(model, loss_recording_denormals, batches, config_for(2), verbose=False).run()
    assert float(torch.tensor([1e-39]) * 1.0) == pytest.approx(1e-39)  # the default again
    supported = torch.set_flush_denormal(True)
    torch.set_flush_denormal(False)
    assert seen == ([0.0, 0.0] if supported else pytest.approx([1e-39, 1e-39]))


def test_two_process_ddp_follows_one_process(corpus_dir, tmp_path):
    """gloo on CPU, the same global batch: the loss curves agree within 1e-5 relative
    (summation order differs between the all-reduce and one process)."""
    import torch.multiprocessing as mp

    from tests.train._ddp_worker import train_rank

    model, batches = build(corpus_dir, batch_size=4)
    single = Trainer(model, next_token_loss, batches, config_for(6), verbose=False).run()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out_file = tmp_path / "ddp.json"
    mp.spawn(train_rank, args=(2, str(corpus_dir), str(out_file), port), nprocs=2)
    ddp = json.loads(out_file.read_text())
    np.testing.assert_allclose(ddp, single["train"]["loss"], rtol=1e-5)


def test_corrupted_and_missing_checkpoints(corpus_dir, tmp_path):
    model, batches = build(corpus_dir)
    trainer = Trainer(model, next_token_loss, batches, config_for(1), out_dir=tmp_path / "r",
                      verbose=False)
    trainer.run()
    (path,) = (tmp_path / "r").glob("checkpoint-*.safetensors")
    header, _ = read_checkpoint(path)
    assert header["step"] == 1
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CerebrumFileError, match="not a readable checkpoint"):
        read_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        Trainer(model, next_token_loss, batches, config_for(1), out_dir=tmp_path / "empty",
                verbose=False).run(resume=True)


def test_a_checkpoint_of_another_optimizer_is_refused(corpus_dir, tmp_path):
    model, batches = build(corpus_dir)
    Trainer(model, next_token_loss, batches, config_for(1, optimizer="muon"),
            out_dir=tmp_path / "r", verbose=False).run()
    model, batches = build(corpus_dir)
    with pytest.raises(CerebrumFileError, match="optimiser state does not fit"):
        Trainer(model, next_token_loss, batches, config_for(2), out_dir=tmp_path / "r",
                verbose=False).run(resume=True)


def test_an_old_checkpoint_version_is_refused(corpus_dir, tmp_path):
    model, batches = build(corpus_dir)
    path = Trainer(model, next_token_loss, batches, config_for(1), verbose=False,
                   out_dir=tmp_path / "r").save_checkpoint()
    data = path.read_bytes()
    path.write_bytes(data.replace(b'\\"version\\": 2', b'\\"version\\": 1'))
    with pytest.raises(CerebrumFileError, match="version 1 checkpoint"):
        read_checkpoint(path)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(steps=0), "steps must be a positive integer"),
    (dict(precision="fp8"), "precision must be one of"),
    (dict(min_lr_ratio=2.0), "min_lr_ratio"),
    (dict(schedule="linear"), "schedule must be one of cosine, wsd"),
    (dict(decay_fraction=0.0), "decay_fraction"),
    (dict(optimizer="sgd"), "optimizer must be one of adamw, muon"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


# ---------------------------------------------------------------- phases, metrics, batches


class PairBatches:
    """Endless dict batches {"x": (4, 3) float, "y": (4,) int} from a seeded stream, with the
    state_dict / load_state_dict the engine asks of batches."""

    def __init__(self, seed=0):
        self.seed, self.drawn = seed, 0

    def __iter__(self):
        return self

    def __next__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.drawn)
        self.drawn += 1
        x = torch.randn(4, 3, generator=g)
        return {"x": x, "y": (x.sum(1) > 0).long()}

    def state_dict(self):
        return {"drawn": self.drawn}

    def load_state_dict(self, state):
        self.drawn = state["drawn"]


class TwoPart(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first = torch.nn.Linear(3, 3)
        self.second = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


def first_loss(model, batch, context):
    logits = model(batch["x"])
    return torch.nn.functional.cross_entropy(logits, batch["y"]), {"first_metric": 1.0}


def second_loss(model, batch, context):
    logits = model(batch["x"])
    noise = torch.randn(logits.shape, generator=context.generator, device=logits.device)
    loss = torch.nn.functional.cross_entropy(logits + 0.1 * noise, batch["y"])
    return loss, {"second_metric": float(context.phase_step)}


def two_phases():
    return [Phase("one", 3, loss_fn=first_loss, trainable=("first.",)),
            Phase("two", 4, loss_fn=second_loss, trainable="second.")]


def test_each_phase_trains_only_its_parameters_and_its_metrics_reach_the_log(tmp_path):
    model = TwoPart()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    snapshots = []

    def watch(model, batch, context):
        snapshots.append((context.phase.name, {k: v.clone()
                                               for k, v in model.state_dict().items()}))
        return (first_loss if context.phase.name == "one" else second_loss)(
            model, batch, context)

    phases = [Phase("one", 3, loss_fn=watch, trainable=("first.",)),
              Phase("two", 4, loss_fn=watch, trainable="second.")]
    out = tmp_path / "run"
    result = Trainer(model, None, PairBatches(), config_for(7), phases=phases, out_dir=out,
                     verbose=False).run()
    after_one = dict(snapshots[3][1])  # the weights when phase two starts
    assert not torch.equal(after_one["first.weight"], before["first.weight"])
    assert torch.equal(after_one["second.weight"], before["second.weight"])
    final = model.state_dict()
    assert torch.equal(final["first.weight"], after_one["first.weight"])
    assert not torch.equal(final["second.weight"], after_one["second.weight"])
    assert all(p.requires_grad for p in model.parameters())  # unfrozen afterwards
    curves = result["train"]
    assert curves["first_metric"][:3] == [1.0] * 3 and np.isnan(curves["first_metric"][3:]).all()
    assert np.isnan(curves["second_metric"][:3]).all()
    assert curves["second_metric"][3:] == [0.0, 1.0, 2.0, 3.0]
    assert result["train"]["lr"][0] == result["train"]["lr"][3]  # a schedule per phase
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"first_metric", "second_metric"} <= set().union(*logged)
    saved = np.load(out / "curves.npz")
    assert saved["train_second_metric"].shape == (7,)
    header, _ = read_checkpoint(out / "checkpoint-00000003.safetensors")
    assert header["phase"] == "two" and header["optimizer_phase"] == "one"


def test_a_phase_scales_the_learning_rate_of_its_own_schedule():
    phases = [Phase("one", 3, loss_fn=first_loss, trainable=("first.",), lr_scale=4.0),
              Phase("two", 4, loss_fn=second_loss, trainable="second.")]
    scaled = Trainer(TwoPart(), None, PairBatches(), config_for(7), phases=phases,
                     verbose=False).run()["train"]["lr"]
    plain = Trainer(TwoPart(), None, PairBatches(), config_for(7), phases=two_phases(),
                    verbose=False).run()["train"]["lr"]
    np.testing.assert_allclose(scaled[:3], 4.0 * np.asarray(plain[:3]))
    assert scaled[3:] == plain[3:]


@pytest.mark.parametrize("stop_at", [2, 3, 5])
def test_resume_across_a_phase_boundary_equals_the_straight_run(tmp_path, stop_at):
    straight = Trainer(TwoPart(), None, PairBatches(), config_for(7), phases=two_phases(),
                       verbose=False).run()
    calls = {"n": 0}

    def interrupting(loss_fn):
        def loss(model, batch, context):
            calls["n"] += 1
            if calls["n"] == stop_at:
                os.kill(os.getpid(), signal.SIGINT)
            return loss_fn(model, batch, context)
        return loss

    phases = [Phase("one", 3, interrupting(first_loss), ("first.",)),
              Phase("two", 4, interrupting(second_loss), ("second.",))]
    out = tmp_path / "run"
    first = Trainer(TwoPart(), None, PairBatches(), config_for(7), phases=phases, out_dir=out,
                    verbose=False).run()
    assert first["interrupted"] and len(first["train"]["loss"]) == stop_at
    model = TwoPart()
    resumed = Trainer(model, None, PairBatches(), config_for(7), phases=two_phases(),
                      out_dir=out, verbose=False).run(resume=True)
    np.testing.assert_array_equal(resumed["train"]["loss"], straight["train"]["loss"])


def test_early_stopping_keeps_the_best_weights(tmp_path):
    model = TwoPart()
    values = iter([3.0, 2.0, 2.5, 2.6, 1.0])
    states = []

    def evaluate():
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"val": next(values)}

    config = config_for(10, eval_every=1, monitor="val", patience=2)
    result = Trainer(model, first_loss, PairBatches(), config, evaluate=evaluate,
                     out_dir=tmp_path / "run", verbose=False).run()
    assert result["early_stopped"] and result["train"]["step"] == [1, 2, 3, 4]
    assert result["best"] == {"step": 2, "value": 2.0}
    for key, value in model.state_dict().items():
        assert torch.equal(value, states[1][key]), key
    # resuming a run that stopped early trains no further and ends with the same weights
    again = TwoPart()
    resumed = Trainer(again, first_loss, PairBatches(), config, evaluate=evaluate,
                      out_dir=tmp_path / "run", verbose=False).run(resume=True)
    assert resumed["early_stopped"] and resumed["train"]["step"] == [1, 2, 3, 4]
    for key, value in again.state_dict().items():
        assert torch.equal(value, states[1][key]), key


def test_a_metric_held_back_does_not_count_for_early_stopping():
    values = iter([{}, {}, {"val": 1.0}, {"val": 2.0}, {"val": 3.0}])
    config = config_for(10, eval_every=1, monitor="val", patience=2)
    result = Trainer(TwoPart(), first_loss, PairBatches(), config, evaluate=lambda: next(values),
                     verbose=False).run()
    assert result["early_stopped"] and result["train"]["step"][-1] == 5
    assert np.isnan(result["eval"]["val"][:2]).all()


def test_count_tokens_and_move_to():
    batch = {"ids": torch.zeros(2, 5, dtype=torch.long), "image": torch.zeros(2, 3, 4)}
    assert count_tokens(batch) == 10
    assert count_tokens((torch.zeros(2, 7, 3),)) == 14
    moved = move_to([batch, "label"], torch.device("cpu"))
    assert moved[1] == "label" and torch.equal(moved[0]["ids"], batch["ids"])


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Phase("a", 0), "steps must be a positive integer"),
    (lambda: Phase("", 1), "non-empty name"),
    (lambda: Phase("a", 1, trainable=()), "parameter-name prefixes"),
    (lambda: Phase("a", 1, lr_scale=0), "lr_scale must be a positive finite number"),
    (lambda: Phase("a", 1, lr_scale=float("nan")), "lr_scale must be a positive finite"),
    (lambda: Trainer(TwoPart(), first_loss, PairBatches(), config_for(2),
                     phases=[Phase("a", 1), Phase("a", 1)]), "phase names must be unique"),
    (lambda: Trainer(TwoPart(), first_loss, PairBatches(), config_for(2),
                     phases=[Phase("a", 1, trainable=("third.",))]), "trains no parameter"),
    (lambda: TrainConfig(patience=2), "patience needs monitor"),
    (lambda: TrainConfig(monitor="val", patience=0), "patience must be a positive integer"),
])
def test_bad_phases_and_early_stopping_settings(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_resuming_drops_the_logged_steps_past_the_checkpoint(corpus_dir, tmp_path):
    """A run killed after its last checkpoint has logged steps the resumed run does again."""
    out = tmp_path / "run"
    model, batches = build(corpus_dir)
    Trainer(model, next_token_loss, batches, config_for(4, checkpoint_every=2), out_dir=out,
            verbose=False).run()
    for path in out.glob("checkpoint-0000000[34].safetensors"):
        path.unlink()  # as if killed between step 2's checkpoint and the end
    with (out / "metrics.jsonl").open("a") as log:
        log.write('{"step": 3, "loss"')  # and cut short mid-record
    model, batches = build(corpus_dir)
    Trainer(model, next_token_loss, batches, config_for(4, checkpoint_every=2), out_dir=out,
            verbose=False).run(resume=True)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4]
