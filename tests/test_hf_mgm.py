"""Transformers export of the "mgm" family (cerebrum.hf_mgm), end to end and offline, loaded
in a fresh Python process (as a directory and as a `subfolder`, the seed's `model_5` layout):
Transformers' greedy generate() gives Cerebrum's tokens."""

import json
import os
import subprocess
import sys

import pytest
import torch

from cerebrum.brain.mgm import MGMLanguageModel
from cerebrum.hf_mgm import export_mgm_hf

pytest.importorskip("transformers")

LOAD = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, subfolder, ids = sys.argv[1], sys.argv[2] or None, json.loads(sys.argv[3])
kwargs = {"subfolder": subfolder} if subfolder else {}
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, **kwargs)
model.generation_config.eos_token_id = None
ids = torch.tensor([ids])
out = model.generate(ids, max_new_tokens=16, do_sample=False,
                     attention_mask=torch.ones_like(ids))
# the seed's snippet: the tokenizer from the repository root, no remote code (in a flat
# directory Transformers reads the model's custom config first: trust_remote_code says yes)
tokenizer = AutoTokenizer.from_pretrained(path, **({} if subfolder else
                                                   {"trust_remote_code": True}))
inputs = tokenizer("def main(", return_tensors="pt")
seed_out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
print(json.dumps({"tokens": out[0].tolist(), "logits": model(ids).logits[0, -1].tolist(),
                  "seed_tokens": seed_out[0].tolist(),
                  "text": tokenizer.decode(seed_out[0], skip_special_tokens=True)}))
"""


def load_elsewhere(path, subfolder, ids):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           # the same thread count as here: the maps of 6x-scaled weights amplify the
           # rounding of another summation order to 3e-4 of the logits' scale
           "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "HF_HOME": str(path.parent / "hf_home"),
           "PYTHONPATH": ""}  # Cerebrum's source is not needed (nor reachable) there
    result = subprocess.run([sys.executable, "-c", LOAD, str(path), subfolder or "",
                             json.dumps(ids)], capture_output=True, text=True, env=env,
                            cwd=path.parent, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_transformers_loads_the_export_and_generates_the_same_tokens(tmp_path):
    torch.manual_seed(0)
    model = MGMLanguageModel(seq_len=48, n_layer=2, hidden_dim=24, num_heads=3,
                             experts_num=8, k_experts=2, expert_dim=12, memory_slots=3,
                             memory_width=8, nuanced_routing=True)
    with torch.no_grad():  # logits far from uniform, so greedy paths are distinct
        for p in model.mgm.parameters():
            if p.dim() >= 2:
                p.mul_(6.0)
    ids = [model.tokenizer.bos_id, *model.tokenizer.encode("def main(")]
    ours = model.mgm.generate(torch.tensor([ids]), 16, temperature=0)[0].tolist()
    assert len(set(ours[len(ids):])) > 1
    assert export_mgm_hf(model, tmp_path / "repo", subfolder="model_5") == \
        tmp_path / "repo" / "model_5"
    for path, subfolder in ((tmp_path / "repo" / "model_5", None),
                            (tmp_path / "repo", "model_5")):
        theirs = load_elsewhere(path, subfolder, ids)
        assert theirs["tokens"] == ours
        assert theirs["seed_tokens"] == ours  # AutoTokenizer + generate(**inputs)
        assert theirs["text"] == model.tokenizer.decode(ours)
        # float32 logits computed by another process: equal to 1e-4 of their scale
        expected = model.token_logits(torch.tensor([ids]))[0, -1]
        torch.testing.assert_close(torch.tensor(theirs["logits"]), expected,
                                   atol=1e-4 * float(expected.abs().max()), rtol=1e-4)


def test_only_mgm_models_are_exported(tmp_path):
    with pytest.raises(TypeError, match="takes an 'mgm' language model, got Linear"):
        export_mgm_hf(torch.nn.Linear(2, 2), tmp_path / "x")
    torch.manual_seed(0)
    model = MGMLanguageModel(seq_len=16, n_layer=1, hidden_dim=8, num_heads=2, experts_num=2,
                             k_experts=1, expert_dim=6, memory_slots=0)
    with pytest.raises(ValueError, match="subfolder must be one folder name"):
        export_mgm_hf(model, tmp_path / "x", subfolder="a/b")
