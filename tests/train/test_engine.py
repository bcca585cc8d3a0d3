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
from cerebrum.train.engine import TrainConfig, Trainer, lr_at, read_checkpoint
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
    return TrainConfig(steps=steps, batch_size=4, seq_len=16, lr=1e-2, warmup_steps=2,
                       checkpoint_every=100, eval_every=100, log_every=1, **kw)


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

    def interrupt_at_third_step(model, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the step finishes, then a checkpoint
        return next_token_loss(model, batch)

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

    def loss_recording_denormals(net, batch):
        seen.append(float(torch.tensor([1e-39]) * 1.0))
        return next_token_loss(net, batch)

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
