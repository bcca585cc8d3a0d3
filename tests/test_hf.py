"""Hugging Face export, end to end and offline: Transformers loads the directory and its
greedy generate() gives Cerebrum's tokens."""

import pytest
import torch

from cerebrum import cli
from cerebrum.brain.gpt import GPTLanguageModel
from cerebrum.hf import export_hf

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("options", [{}, dict(mlp="relu2", qk_norm=True, bigram_buckets=128)],
                         ids=["plain", "options"])
def test_transformers_loads_the_export_and_generates_the_same_tokens(tmp_path, options):
    torch.manual_seed(0)
    model = GPTLanguageModel(block_size=64, n_layer=2, n_head=2, n_embd=32, **options)
    if model.gpt.bigram is not None:  # starts at zero; give it something to carry
        torch.nn.init.normal_(model.gpt.bigram.table.weight, std=0.1)
    with torch.no_grad():  # make the logits far from uniform so greedy paths are distinct
        for p in model.gpt.parameters():
            p.mul_(8.0)
    export_hf(model, tmp_path / "export")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export",
                                                           trust_remote_code=True)
    ids = torch.tensor([[model.tokenizer.bos_id, *model.tokenizer.encode("def main(")]])
    torch.testing.assert_close(hf(ids).logits, model.gpt(ids)[0])
    ours = model.gpt.generate(ids, 24, temperature=0)
    hf.generation_config.eos_token_id = None  # Cerebrum's generate does not stop at <eos>
    theirs = hf.generate(ids, max_new_tokens=24, do_sample=False,
                         attention_mask=torch.ones_like(ids))
    assert torch.equal(theirs, ours)
    assert len(set(ours[0, ids.shape[1]:].tolist())) > 1
    # the exported tokenizer gives the prompt's ids (<bos> first) and decodes the output
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "export",
                                                           trust_remote_code=True)
    assert tokenizer("def main(")["input_ids"] == ids[0].tolist()
    assert tokenizer.decode(theirs[0], skip_special_tokens=True) == model.tokenizer.decode(
        ours[0].tolist())


def test_export_hf_command_and_errors(tmp_path, capsys):
    torch.manual_seed(0)
    model = GPTLanguageModel(block_size=32, n_layer=1, n_head=2, n_embd=16)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.py").write_text("x = 1\n" * 50)
    model.fit(str(corpus), steps=1, batch_size=2, seq_len=16, out_dir=tmp_path / "run",
              eval_every=None)
    assert cli.main(["export-hf", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    with pytest.raises(TypeError, match="takes a language model"):
        export_hf(torch.nn.Linear(2, 2), tmp_path / "x")
