"""CUDA checks of the "mgm" family (seed 004), one script for a lent GPU:

1. ComplexFilteredGradScaler on the CUDA fp16 path with complex64 expert weights (the seed's
   setting): training steps, and an injected inf skips every parameter and halves the scale;
   the standard GradScaler fails on the same model.
2. The network on CUDA: causality in float32, flash vs math kernel agreement in bf16.
3. The family through the engine on CUDA (precision auto = bf16, fp16, amp_off) and the GPT
   at its leaderboard settings on the same data: training tokens/s.

    PYTHONPATH=src python3 bench/mgm_cuda.py
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

import torch

from cerebrum.brain.gpt import GPTLanguageModel
from cerebrum.brain.mgm import MGMLanguageModel
from cerebrum.data.reasoning import reasoning_corpus
from cerebrum.models.mgm import MGM
from cerebrum.train.complex_scaler import ComplexFilteredGradScaler

results: dict = {}
device = torch.device("cuda")
print(torch.__version__, torch.cuda.get_device_name())

# 1. the scaler -------------------------------------------------------------------------
torch.manual_seed(0)
model = MGM(vocab_size=259, block_size=64, n_layer=2, hidden_dim=64, num_heads=4,
            experts_num=16, k_experts=2, memory_slots=8, memory_width=32,
            complex_parameters="native").to(device)
idx = torch.randint(0, 259, (8, 65), device=device)
try:
    plain = torch.amp.GradScaler("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        loss = model(idx[:, :-1], idx[:, 1:])[1]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    plain.scale(loss).backward()
    plain.unscale_(opt)
    results["standard_scaler"] = "ran (unexpected)"
except Exception as err:
    results["standard_scaler"] = f"{type(err).__name__}: {str(err)[:120]}"
model.zero_grad(set_to_none=True)
opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
scaler = ComplexFilteredGradScaler("cuda")
losses = []
for step in range(30):
    with torch.autocast("cuda", dtype=torch.float16):
        loss = model(idx[:, :-1], idx[:, 1:])[1]
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if step == 10:  # inject an overflow into a complex gradient
        w = next(p for p in model.parameters() if p.is_complex())
        w.grad[0, 0] = complex(math.inf, 0)
        before = [p.detach().clone() for p in model.parameters()]
        scale_before = scaler.get_scale()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
    if step == 10:
        results["inf_step_skipped_all"] = all(
            torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        results["inf_scale"] = [scale_before, scaler.get_scale()]
    losses.append(round(loss.item(), 4))
results["fp16_complex_losses"] = [*losses[::5], losses[-1]]

# 2. the network on CUDA ----------------------------------------------------------------
torch.manual_seed(0)
net = MGM(vocab_size=259, block_size=64, n_layer=2, hidden_dim=128, num_heads=12,
          experts_num=16, k_experts=4, memory_slots=16, memory_width=64).to(device).eval()
x = torch.randint(0, 259, (4, 64), device=device)
with torch.no_grad():
    a = net(x)[0]
    y = x.clone()
    y[:, 40:] = torch.randint(0, 259, y[:, 40:].shape, device=device)
    b = net(y)[0]
    results["causal_max_diff_fp32"] = (a[:, :40] - b[:, :40]).abs().max().item()
    net_math = MGM(dataclasses.replace(net.config, flash_attention_off=True))
    net_math.load_state_dict(net.state_dict())
    net_math.to(device).eval()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fa, fm = net(x)[0].float(), net_math(x)[0].float()
    results["flash_vs_math_max_diff_bf16"] = (fa - fm).abs().max().item()
    g1 = net.generate(x[:1, :8], 20, temperature=0)
    g2 = net.generate(x[:1, :8], 20, temperature=0, use_cache=False)
    results["cached_generation_equal"] = bool(torch.equal(g1, g2))

# 3. the engine on CUDA -------------------------------------------------------------------
corpus = reasoning_corpus("/tmp/mgm_data", n=3000)
fit = dict(steps=60, batch_size=16, seq_len=256, lr=3e-3, warmup_steps=5, eval_every=60,
           shuffle_rows=1024, eval_documents=16, random_state=0)
settings = MGMLanguageModel.leaderboard_settings["model"]


def timed(model, **extra):
    start = time.perf_counter()
    model.to(device).fit(corpus, **{**fit, **extra})
    train = model.history_["train"]
    tps = sorted(train["tokens_per_s"][5:])[len(train["tokens_per_s"][5:]) // 2]
    return {"seconds": round(time.perf_counter() - start, 1), "median_tokens_per_s": round(tps),
            "last_loss": round(train["loss"][-1], 4),
            "bits_per_byte": round(model.history_["eval"]["bits_per_byte"][-1], 4)}


for name, extra in (("mgm_bf16_staged", {}), ("mgm_fp16_pairs", {"precision": "fp16"}),
                    ("mgm_amp_off", {"amp_off": True})):
    torch.manual_seed(0)
    m = MGMLanguageModel(**{**settings, "tokenizer": "bytes", "vocab_size": 259})
    results[name] = timed(m, **extra)
    results[name]["params_total_active"] = m.parameter_counts()
torch.manual_seed(0)
gpt_settings = {**GPTLanguageModel.leaderboard_settings["model"], "tokenizer": "bytes",
                "vocab_size": 259}
results["gpt_bf16"] = timed(GPTLanguageModel(**gpt_settings))
print(json.dumps(results, indent=1))
