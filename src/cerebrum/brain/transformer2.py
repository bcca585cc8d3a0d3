"""Transformer² for any language model of the seam: SVF experts, their training, dispatch, and
two-pass inference.

Shape legend: B examples, T tokens, V vocabulary, D pass-one feature width, K experts, M adapted
matrices, R_m singular values of matrix m.

A `Transformer2` belongs to one `LanguageModel` (`transformer2_of(model)`); it holds

- experts: name -> M vectors z_m (R_m,), one per adapted matrix (`cerebrum.nn.svf`: the
  adapted weight is U diag(sigma * 2 sigmoid(z)) V^T), and the task each was trained on;
- mixtures: name -> coefficients alpha (K,) over named experts (found by CEM);
- dispatchers: a classifier (logistic regression on pass-one features) and a classification
  expert (an SVF expert trained to name the task after the prompt). The classification
  expert adapts every linear layer ("all"; its own SVD basis), attention included: naming the
  task at the end of the prompt needs the last position to read the prompt's first word, a
  change of routing that scaling the feed-forward matrices' singular values alone did not
  learn (46% dispatch accuracy on four tasks against 100% with "all", bench/adapt.py's base).

Two-pass inference: pass one reads the prompt with the base weights (classifier) or with the
classification expert's, and picks an expert; pass two runs with that expert's weights, which
are computed once and cached per expert (invalidated when the base weights change), so pass
two costs a normal forward.

Pass-one features are the mean, over the prompt's positions, of the hidden state entering the
model's output layer: the input of the last `nn.Linear` its forward calls (the GPT's and
NEAT's head), so it works for any family without knowing its internals.

Training (base frozen: only z receives gradients): next-token loss on the answer tokens of a
task's examples (on every token of a corpus task), or REINFORCE on tasks with checkable answers,
-(r - mean r) log pi(answer) + beta KL(pi || pi_base) over the sampled answer tokens, with
reward r = 1 for a right answer and 0 otherwise. Both run through the shared engine
(`cerebrum.train.Trainer`) on a module that holds only the z vectors.

State persists as JSON inside the model's record (the language model's `adaptation_` fitted
attribute): floats are written with Python's shortest round-trip repr, so a float32 vector
reads back bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import save as save_safetensors
from torch import nn

from cerebrum._util.files import write_bytes_atomically
from cerebrum.data.tasks import Task, parse_task
from cerebrum.nn.svf import (
    SVFBasis,
    mixture_scales,
    resolve_targets,
    scale_of,
    substituted_weights,
    weight_key,
)
from cerebrum.train.cem import cem_maximize
from cerebrum.train.engine import (
    CHECKPOINT_FORMAT,
    TrainConfig,
    Trainer,
    latest_checkpoint,
    read_checkpoint,
)

#: Written before a label when the classification expert names a task.
CLASSIFY_SEPARATOR = "\ntask: "
#: The end of an answer.
ANSWER_END = "\n"
STATE_VERSION = 1
DISPATCH_STRATEGIES = ("classifier", "expert")
METHODS = ("next_token", "reinforce")


def transformer2_of(model, *, create: bool = True, targets=None) -> Transformer2 | None:
    """The Transformer² state of a language model; created (adapting `targets`, by default the
    family's `adaptation_targets` or "mlp") when it has none and `create`."""
    t2 = model.__dict__.get("_transformer2")
    if t2 is None and create:
        t2 = Transformer2(model, targets)
        model.__dict__["_transformer2"] = t2
    return t2


def _check_name(name, what: str) -> str:
    if not isinstance(name, str) or not name or name == "auto" or not all(
            c.isalnum() or c in "_-." for c in name):
        raise ValueError(f"{what} must be a name of letters, digits, '_', '-' or '.' (not "
                         f"'auto'), got {name!r}")
    return name


# --------------------------------------------------------------------------- token batches


def _pad(rows: Sequence[Sequence[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) ids and (B,) lengths; a causal model's outputs at the real
    positions do not see the padding."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    return ids.to(device), lengths.to(device)


def _encode_pair(tokenizer, prompt: str, answer: str) -> tuple[list[int], int]:
    """(<bos> prompt answer ANSWER_END ids, index of the first answer token); prompt and answer
    are encoded apart, as generation sees the prompt."""
    head = [tokenizer.bos_id, *tokenizer.encode(prompt)]
    return head + tokenizer.encode(answer + ANSWER_END), len(head)


class TaskBatches:
    """Endless training batches of one task for the engine: {"ids": (B, T), "targets": (B, T)}
    (targets -100 outside the answers, or, for a corpus task, next tokens everywhere), plus
    "index" (B,) into `examples` for REINFORCE. Deterministic in (task, seed)."""

    def __init__(self, task: Task, tokenizer, *, batch_size: int, context: int, seed: int = 0,
                 n_examples: int = 4096):
        self.tokenizer, self.batch_size, self.seed = tokenizer, batch_size, seed
        self.drawn = 0
        if task.checkable:
            self.examples = task.examples(n_examples, seed=seed)
            rows = [_encode_pair(tokenizer, p, a) for p, a in self.examples]
        else:
            self.examples = []
            ids = [t for text in task.texts()
                   for t in (tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id)]
            rows = [(ids[i:i + context + 1], 1) for i in range(0, len(ids) - 1, context)]
        if not rows:
            raise ValueError(f"task {task.name!r} holds no text")
        too_long = max(len(r) for r, _ in rows)
        if too_long > context + 1:
            raise ValueError(f"task {task.name!r} has examples of {too_long} tokens; the "
                             f"model's context holds {context}")
        self.rows = rows

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.drawn)
        self.drawn += 1
        index = torch.randint(len(self.rows), (self.batch_size,), generator=g)
        chosen = [self.rows[i] for i in index.tolist()]
        ids, _ = _pad([r for r, _ in chosen], self.tokenizer.pad_id, "cpu")
        targets = torch.full_like(ids, -100)
        for b, (row, start) in enumerate(chosen):
            # the token at position t is predicted from positions < t: targets shift by one
            targets[b, start - 1:len(row) - 1] = torch.tensor(row[start:])
        return {"ids": ids[:, :-1], "targets": targets[:, :-1], "index": index}

    def state_dict(self) -> dict:
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.drawn = int(state["drawn"])


# --------------------------------------------------------------------------- the state


class _ExpertNet(nn.Module):
    """What the engine trains: the z vectors of one expert (the model itself is not a
    submodule, so the engine optimises, clips and checkpoints z alone). forward(ids (B, T))
    -> logits (B, T, V) with the adapted weights."""

    def __init__(self, t2: Transformer2, init: Sequence[torch.Tensor], basis: SVFBasis):
        super().__init__()
        self.z = nn.ParameterList(nn.Parameter(v.detach().clone()) for v in init)
        self._t2 = [t2]  # lists: not registered as submodules
        self._basis = [basis]

    def forward(self, ids):
        basis = self._basis[0]
        weights = basis.adapted_weights([scale_of(z) for z in self.z])
        with substituted_weights(basis.modules, weights):
            return self._t2[0].model.token_logits(ids)


class Transformer2:
    """Experts, mixtures and dispatchers of one language model (module docstring).

    Attributes:
        model: the language model.
        basis: the SVFBasis of its adapted matrices.
        experts: name -> list of M float32 tensors z_m (R_m,).
        tasks: name -> the task specification an expert or mixture was made for.
        mixtures: name -> {"experts": [names], "alpha": (K,) tensor}.
        classifier: the classifier dispatcher's tensors, or None.
        classification_expert: {"labels": [names], "z": [...]} (over `classification_basis`:
            `classification_targets`, "all" by default) or None.
        dispatch_strategy: what `dispatch` uses by default ("classifier" or "expert").
    """

    def __init__(self, model, targets=None):
        self.model = model
        targets = targets if targets is not None else getattr(model, "adaptation_targets",
                                                              "mlp")
        self.targets = targets
        self.basis = SVFBasis(model, resolve_targets(model, targets))
        self.experts: dict[str, list[torch.Tensor]] = {}
        self.tasks: dict[str, str] = {}
        self.mixtures: dict[str, dict] = {}
        self.classifier: dict | None = None
        self.classification_expert: dict | None = None
        self.dispatch_strategy: str | None = None
        self.classification_targets = "all"
        self._classification_basis: SVFBasis | None = None
        self._cache: dict[str, tuple] = {}

    @property
    def classification_basis(self) -> SVFBasis:
        """The SVD basis of the matrices the classification expert adapts."""
        if self._classification_basis is None:
            self._classification_basis = SVFBasis(
                self.model, resolve_targets(self.model, self.classification_targets))
        return self._classification_basis

    # ------------------------------------------------------------------ sizes

    def parameter_counts(self, lora_rank: int = 4) -> dict:
        """{"expert": parameters of one expert, "lora": of a rank-`lora_rank` LoRA on the
        same matrices, "matrices": M}."""
        return {"expert": self.basis.parameter_count(),
                "lora": self.basis.lora_parameter_count(lora_rank),
                "matrices": len(self.basis)}

    @property
    def names(self) -> list[str]:
        """Experts and mixtures usable as `adapt`."""
        return [*self.experts, *self.mixtures]

    # ------------------------------------------------------------------ adapted weights

    def _device(self):
        return self.basis.modules[0].weight.device

    def scales(self, adapt) -> list[torch.Tensor]:
        """The per-matrix scales of an expert or mixture name (ValueError naming `adapt`)."""
        if adapt in self.experts:
            return [scale_of(z) for z in self.experts[adapt]]
        if adapt in self.mixtures:
            mix = self.mixtures[adapt]
            return mixture_scales([self.experts[n] for n in mix["experts"]], mix["alpha"])
        known = ", ".join(self.names) or "none yet"
        raise ValueError(f"adapt must be 'auto', None or an expert or mixture name "
                         f"({known}), got {adapt!r}")

    def weights(self, adapt: str) -> list[torch.Tensor]:
        """The adapted weights of an expert or mixture, cached until the base weights or the
        expert change."""
        return self._cached(adapt, lambda: self.scales(adapt))

    def _cached(self, name: str, scales, basis: SVFBasis | None = None) -> list[torch.Tensor]:
        basis = basis or self.basis
        key = tuple(weight_key(m.weight) for m in basis.modules)
        hit = self._cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        with torch.no_grad():
            weights = basis.adapted_weights(scales())
        self._cache[name] = (key, weights)
        return weights

    def using(self, adapt):
        """A context in which the model runs with the weights of `adapt` (an expert or
        mixture name; None: the base)."""
        if adapt is None:
            return contextlib.nullcontext()
        return substituted_weights(self.basis.modules, self.weights(adapt))

    def _using_scales(self, scales, basis: SVFBasis | None = None):
        basis = basis or self.basis
        with torch.no_grad():
            weights = basis.adapted_weights(scales)
        return substituted_weights(basis.modules, weights)

    def _forget(self, name: str) -> None:
        self._cache.pop(name, None)
        for mix_name, mix in self.mixtures.items():
            if name in mix["experts"]:
                self._cache.pop(mix_name, None)

    # ------------------------------------------------------------------ scoring helpers

    @contextlib.contextmanager
    def _inference(self):
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            model.train(was_training)

    def answer_logprobs(self, pairs: Sequence[tuple[str, str]], *, batch_size: int = 64
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum log p(answer + end | prompt), token count) per pair, (B,) each, with the
        weights in force (call inside `using`)."""
        tok = self.model._require_tokenizer()
        sums, counts = [], []
        with self._inference():
            for s in range(0, len(pairs), batch_size):
                rows = [_encode_pair(tok, p, a) for p, a in pairs[s:s + batch_size]]
                ids, _ = _pad([r for r, _ in rows], tok.pad_id, self._device())
                logp = torch.log_softmax(self.model.token_logits(ids[:, :-1]).float(), -1)
                picked = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)   # (B, T-1)
                mask = torch.zeros_like(picked, dtype=torch.bool)
                for b, (row, start) in enumerate(rows):
                    mask[b, start - 1:len(row) - 1] = True
                sums.append((picked * mask).sum(1))
                counts.append(mask.sum(1))
        return torch.cat(sums), torch.cat(counts)

    def complete(self, prompts: Sequence[str], *, max_new_tokens: int = 16,
                 temperature: float = 0.0, generator: torch.Generator | None = None,
                 batch_size: int = 128) -> list[list[int]]:
        """Continuations (token ids, up to and including the first ANSWER_END) of each prompt,
        batched, with the weights in force; greedy with temperature 0."""
        tok = self.model._require_tokenizer()
        end = tok.encode(ANSWER_END)
        context = self.model.context_length
        results = []
        with self._inference():
            for s in range(0, len(prompts), batch_size):
                rows = [[tok.bos_id, *tok.encode(p)] for p in prompts[s:s + batch_size]]
                new: list[list[int]] = [[] for _ in rows]
                done = [False] * len(rows)
                for _ in range(max_new_tokens):
                    seqs = [r + n for r, n in zip(rows, new, strict=True)]
                    if max(len(q) for q in seqs) > context:
                        break
                    ids, lengths = _pad(seqs, tok.pad_id, self._device())
                    logits = self.model.token_logits(ids)
                    last = logits[torch.arange(len(seqs), device=ids.device), lengths - 1]
                    if temperature == 0:
                        nxt = last.argmax(-1)
                    else:
                        probs = torch.softmax(last.float() / temperature, -1)
                        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                    for b, t in enumerate(nxt.tolist()):
                        if not done[b]:
                            new[b].append(t)
                            done[b] = new[b][-len(end):] == end
                    if all(done):
                        break
                results.extend(new)
        return results

    def answers(self, prompts: Sequence[str], **kwargs) -> list[str]:
        """Greedy answers (text before the first newline) with the weights in force."""
        tok = self.model._require_tokenizer()
        return [tok.decode(ids).split(ANSWER_END)[0] for ids in self.complete(prompts, **kwargs)]

    def accuracy(self, pairs: Sequence[tuple[str, str]], adapt=None) -> float:
        """Share of exact greedy answers with `adapt`'s weights ("auto": dispatched per
        prompt; None: the base)."""
        prompts = [p for p, _ in pairs]
        if adapt == "auto":
            picks = self.dispatch(prompts)
            got = [""] * len(prompts)
            for name in set(picks):
                idx = [i for i, n in enumerate(picks) if n == name]
                with self.using(name):
                    for i, a in zip(idx, self.answers([prompts[i] for i in idx]), strict=True):
                        got[i] = a
        else:
            with self.using(adapt):
                got = self.answers(prompts)
        return sum(g == a for g, (_, a) in zip(got, pairs, strict=True)) / max(1, len(pairs))

    # ------------------------------------------------------------------ training experts

    def train_expert(self, task: Task, *, name: str | None = None, method: str = "next_token",
                     steps: int = 200, batch_size: int = 32, lr: float = 5e-2,
                     kl_coef: float = 0.1, max_answer_tokens: int = 16, seed: int = 0,
                     verbose: bool = False) -> dict:
        """Train an SVF expert for `task` with the base frozen and store it under `name` (the
        task's name by default); returns the engine's history."""
        name = _check_name(task.name if name is None else name, "name")
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if not (isinstance(kl_coef, (int, float)) and math.isfinite(kl_coef) and kl_coef >= 0):
            raise ValueError(f"kl_coef must be a finite number >= 0, got {kl_coef!r}")
        if method == "reinforce" and not task.checkable:
            raise ValueError(f"method='reinforce' needs a task with checkable answers; task "
                             f"{task.name!r} is a corpus")
        z0 = [torch.zeros(r, device=self._device()) for r in self.basis.ranks]
        z, history = self._train_z(task, z0, method=method, steps=steps,
                                   batch_size=batch_size, lr=lr, kl_coef=kl_coef,
                                   max_answer_tokens=max_answer_tokens, seed=seed,
                                   verbose=verbose)
        self.experts[name] = z
        self.tasks[name] = task.spec
        self._forget(name)
        return history

    def _train_z(self, task, z0, *, method, steps, batch_size, lr, kl_coef, max_answer_tokens,
                 seed, verbose, basis: SVFBasis | None = None):
        model = self.model
        tok = model._require_tokenizer()
        batches = TaskBatches(task, tok, batch_size=batch_size, context=model.context_length,
                              seed=seed)
        net = _ExpertNet(self, z0, basis or self.basis)
        if method == "next_token":
            def loss_fn(net, batch, context):
                logits = net(batch["ids"])
                loss = F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten(),
                                       ignore_index=-100)
                return loss, {}
        else:
            def loss_fn(net, batch, context):
                return self._reinforce_loss(net, batches, batch, context, kl_coef,
                                            max_answer_tokens)
        config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, optimizer="adamw",
                             weight_decay=0.0, warmup_steps=min(10, steps // 10),
                             schedule="cosine", min_lr_ratio=0.1, eval_every=steps,
                             checkpoint_every=steps, log_every=max(1, steps // 10), seed=seed)
        frozen = {p: p.requires_grad for p in model.parameters()}
        was_training = model.training
        try:
            for p in frozen:
                p.requires_grad_(False)  # the base is frozen: only z gets gradients
            model.eval()  # no dropout while an expert learns
            history = Trainer(net, loss_fn, batches, config, verbose=verbose).run()
        finally:
            for p, flag in frozen.items():
                p.requires_grad_(flag)
            model.train(was_training)
        return [z.detach().clone() for z in net.z], history

    def _reinforce_loss(self, net, batches, batch, context, kl_coef, max_answer_tokens):
        """REINFORCE with a batch-mean baseline and a KL penalty to the base (module
        docstring); metrics: the mean reward and KL."""
        tok = self.model._require_tokenizer()
        pairs = [batches.examples[i] for i in batch["index"].tolist()]
        prompts = [p for p, _ in pairs]
        with self._using_scales([scale_of(z.detach()) for z in net.z]):
            samples = self.complete(prompts, max_new_tokens=max_answer_tokens, temperature=1.0,
                                    generator=context.generator)
        rewards = torch.tensor(
            [float(tok.decode(s).split(ANSWER_END)[0] == a) for s, (_, a) in
             zip(samples, pairs, strict=True)], device=self._device())
        advantage = rewards - rewards.mean()
        rows, starts = [], []
        for p, s in zip(prompts, samples, strict=True):
            head = [tok.bos_id, *tok.encode(p)]
            rows.append(head + s)
            starts.append(len(head))
        ids, lengths = _pad(rows, tok.pad_id, self._device())
        logp = torch.log_softmax(net(ids[:, :-1]).float(), -1)               # (B, T-1, V)
        with torch.no_grad():
            base_logp = torch.log_softmax(self.model.token_logits(ids[:, :-1]).float(), -1)
        mask = torch.zeros(ids.shape[0], ids.shape[1] - 1, dtype=torch.bool, device=ids.device)
        for b, (start, length) in enumerate(zip(starts, lengths.tolist(), strict=True)):
            mask[b, start - 1:length - 1] = True
        picked = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        log_pi = (picked * mask).sum(1)                                        # (B,)
        kl = ((logp.exp() * (logp - base_logp)).sum(-1) * mask).sum(1)        # (B,)
        loss = (-(advantage * log_pi) + kl_coef * kl).mean()
        return loss, {"reward": rewards.mean(), "kl": kl.mean().detach()}

    # ------------------------------------------------------------------ dispatch

    def prompt_features(self, prompts: Sequence[str], *, batch_size: int = 128
                        ) -> torch.Tensor:
        """Pass one with the base weights: (B, D) mean over each prompt's positions of the
        hidden state entering the model's output layer (module docstring)."""
        tok = self.model._require_tokenizer()
        linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        seen: list[torch.Tensor] = []

        def hook(module, args):
            seen.append(args[0])

        out = []
        handles = [m.register_forward_pre_hook(hook) for m in linears]
        try:
            with self._inference():
                for s in range(0, len(prompts), batch_size):
                    rows = [[tok.bos_id, *tok.encode(p)] for p in prompts[s:s + batch_size]]
                    ids, lengths = _pad(rows, tok.pad_id, self._device())
                    seen.clear()
                    self.model.token_logits(ids)
                    hidden = seen[-1].float()                                  # (B, T, D)
                    if hidden.dim() != 3 or hidden.shape[1] != ids.shape[1]:
                        raise TypeError(f"the {self.model.family!r} family's output layer "
                                        "does not read one hidden state per token; pass-one "
                                        "features need it")
                    mask = (torch.arange(ids.shape[1], device=ids.device)[None]
                            < lengths[:, None]).unsqueeze(-1)
                    out.append((hidden * mask).sum(1) / lengths[:, None])
        finally:
            for h in handles:
                h.remove()
        return torch.cat(out)

    def fit_classifier(self, tasks: Sequence[Task], *, n_per_task: int = 128, steps: int = 300,
                       lr: float = 0.05, seed: int = 0) -> float:
        """Fit the classifier dispatcher: logistic regression from pass-one features to the
        expert of each task (named as the task); returns its training accuracy."""
        labels = self._expert_labels(tasks)
        prompts, y = [], []
        for k, task in enumerate(tasks):
            prompts += [p for p, _ in task.examples(n_per_task, seed=seed + 101)]
            y += [k] * n_per_task
        x = self.prompt_features(prompts)
        y = torch.tensor(y, device=x.device)
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        x = (x - mean) / std
        linear = nn.Linear(x.shape[1], len(labels)).to(x.device)
        optimizer = torch.optim.Adam(linear.parameters(), lr=lr)
        for _ in range(steps):  # full-batch: a convex problem of a few thousand numbers
            optimizer.zero_grad()
            loss = F.cross_entropy(linear(x), y) + 1e-3 * linear.weight.square().sum()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            accuracy = float((linear(x).argmax(-1) == y).float().mean())
        self.classifier = {"labels": labels, "mean": mean, "std": std,
                           "weight": linear.weight.detach(), "bias": linear.bias.detach()}
        self.dispatch_strategy = self.dispatch_strategy or "classifier"
        return accuracy

    def _expert_labels(self, tasks: Sequence[Task]) -> list[str]:
        labels = [t.name for t in tasks]
        missing = [n for n in labels if n not in self.experts]
        if missing:
            raise ValueError(f"tasks must name trained experts; no expert for "
                             f"{', '.join(missing)} (experts: {', '.join(self.experts)})")
        if len(set(labels)) < 2:
            raise ValueError("dispatch needs at least two tasks")
        return labels

    def train_classification_expert(self, tasks: Sequence[Task], *, steps: int = 200,
                                    batch_size: int = 32, lr: float = 5e-2, seed: int = 0,
                                    verbose: bool = False) -> None:
        """Train the classification expert: an SVF expert that, after a prompt and
        CLASSIFY_SEPARATOR, writes the name of the prompt's task (its expert)."""
        labels = self._expert_labels(tasks)
        task = _NamingTask(tasks)
        basis = self.classification_basis
        z0 = [torch.zeros(r, device=self._device()) for r in basis.ranks]
        z, _ = self._train_z(task, z0, method="next_token", steps=steps,
                             batch_size=batch_size, lr=lr, kl_coef=0.0, max_answer_tokens=0,
                             seed=seed, verbose=verbose, basis=basis)
        self.classification_expert = {"labels": labels, "z": z}
        self._cache.pop(" classify", None)
        self.dispatch_strategy = self.dispatch_strategy or "expert"

    def dispatch(self, prompts: Sequence[str], strategy: str | None = None) -> list[str]:
        """Pass one: the expert name for each prompt, by `strategy` ("classifier", "expert";
        None: `dispatch_strategy`)."""
        strategy = strategy or self.dispatch_strategy
        if strategy is None:
            raise ValueError("adapt='auto' needs a dispatcher: fit_classifier or "
                             "train_classification_expert first (cerebrum adapt does both)")
        if strategy not in DISPATCH_STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(DISPATCH_STRATEGIES)}, got "
                             f"{strategy!r}")
        if strategy == "classifier":
            c = self.classifier
            if c is None:
                raise ValueError("strategy='classifier': no classifier fitted")
            x = (self.prompt_features(prompts) - c["mean"].to(self._device())) / c["std"].to(
                self._device())
            picks = (x @ c["weight"].to(x).T + c["bias"].to(x)).argmax(-1).tolist()
            return [c["labels"][k] for k in picks]
        c = self.classification_expert
        if c is None:
            raise ValueError("strategy='expert': no classification expert trained")
        labels = c["labels"]
        pairs = [(p + CLASSIFY_SEPARATOR, label) for p in prompts for label in labels]
        # " classify" cannot be an expert's name (names have no spaces)
        basis = self.classification_basis
        weights = self._cached(" classify", lambda: [scale_of(z) for z in c["z"]], basis)
        with substituted_weights(basis.modules, weights):
            logp, _ = self.answer_logprobs(pairs)
        picks = logp.view(len(prompts), len(labels)).argmax(-1).tolist()
        return [labels[k] for k in picks]

    # ------------------------------------------------------------------ CEM mixtures

    def search_mixture(self, examples: Sequence[tuple[str, str]], *, name: str,
                       experts: Sequence[str] | None = None, population: int = 16,
                       elites: int = 4, generations: int = 8, init_std: float = 0.5,
                       seed: int = 0, task: str | None = None) -> dict:
        """Few-shot CEM search of mixture coefficients over `experts` (all by default); the
        fitness is the mean log-likelihood per answer token of the few-shot examples. Stores
        the best as mixture `name`; returns {"alpha", "fitness", "history", "evaluations"}."""
        name = _check_name(name, "name")
        experts = list(self.experts if experts is None else experts)
        unknown = [n for n in experts if n not in self.experts]
        if unknown or not experts:
            raise ValueError(f"experts must name trained experts ({', '.join(self.experts)}), "
                             f"got {experts}")
        if not examples:
            raise ValueError("examples must hold at least one (prompt, answer) pair")
        zs = [self.experts[n] for n in experts]

        def fitness(alpha: torch.Tensor) -> float:
            with self._using_scales(mixture_scales(zs, alpha)):
                logp, count = self.answer_logprobs(examples)
            return float(logp.sum() / count.sum())

        init = torch.full((len(experts),), 1.0 / len(experts), device=self._device())
        result = cem_maximize(fitness, init, init_std=init_std, population=population,
                              elites=elites, generations=generations,
                              generator=torch.Generator(device=self._device()).manual_seed(seed))
        self.mixtures[name] = {"experts": experts, "alpha": result.best.detach().float()}
        if task is not None:
            self.tasks[name] = task
        self._cache.pop(name, None)
        return {"alpha": result.best.tolist(), "fitness": result.best_fitness,
                "history": result.history, "evaluations": result.evaluations}

    # ------------------------------------------------------------------ two-pass generation

    def resolve(self, adapt, prompt: str) -> str:
        """The expert or mixture name `adapt` stands for: "auto" runs pass one on the prompt;
        a name must exist (ValueError naming `adapt`)."""
        if adapt == "auto":
            return self.dispatch([prompt])[0]
        if not isinstance(adapt, str):
            raise ValueError(f"adapt must be 'auto', None or an expert or mixture name, got "
                             f"{adapt!r}")
        self.scales(adapt)  # ValueError naming adapt when unknown
        return adapt

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict:
        """The state as JSON-able values (exact round trip through `from_dict`)."""
        def vectors(zs):
            return [z.detach().cpu().float().tolist() for z in zs]

        classifier = None
        if self.classifier is not None:
            classifier = {k: (v if k == "labels" else v.detach().cpu().float().tolist())
                          for k, v in self.classifier.items()}
        classification = None
        if self.classification_expert is not None:
            classification = {"labels": list(self.classification_expert["labels"]),
                              "targets": self.classification_targets,
                              "matrices": list(self.classification_basis.names),
                              "z": vectors(self.classification_expert["z"])}
        return {
            "version": STATE_VERSION,
            "targets": self.targets if isinstance(self.targets, str) else list(self.targets),
            "matrices": list(self.basis.names),
            "scale": "2*sigmoid(z)",
            "experts": {n: vectors(z) for n, z in self.experts.items()},
            "tasks": dict(self.tasks),
            "mixtures": {n: {"experts": list(m["experts"]),
                             "alpha": m["alpha"].detach().cpu().float().tolist()}
                         for n, m in self.mixtures.items()},
            "classifier": classifier,
            "classification_expert": classification,
            "dispatch_strategy": self.dispatch_strategy,
        }

    @classmethod
    def from_dict(cls, model, state: dict) -> Transformer2:
        """Rebuild from `to_dict`'s output (ValueError on a state that does not fit)."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"adaptation state: expected a dict of version {STATE_VERSION}")
        t2 = cls(model, state["targets"])
        if list(state["matrices"]) != t2.basis.names:
            raise ValueError(f"adaptation state: its matrices {state['matrices']} are not "
                             f"this model's {t2.basis.names}")
        device = t2._device()

        def tensors(zs, what, basis=t2.basis):
            if len(zs) != len(basis) or any(
                    len(z) != r for z, r in zip(zs, basis.ranks, strict=True)):
                raise ValueError(f"adaptation state: {what} does not have one vector of "
                                 f"length {basis.ranks} per matrix")
            out = [torch.tensor(z, dtype=torch.float32, device=device) for z in zs]
            if not all(bool(torch.isfinite(z).all()) for z in out):
                raise ValueError(f"adaptation state: {what} holds non-finite values")
            return out

        t2.experts = {n: tensors(z, f"expert {n!r}") for n, z in state["experts"].items()}
        t2.tasks = dict(state.get("tasks", {}))
        for n, m in state.get("mixtures", {}).items():
            if any(e not in t2.experts for e in m["experts"]) or len(m["alpha"]) != len(
                    m["experts"]):
                raise ValueError(f"adaptation state: mixture {n!r} does not fit its experts")
            t2.mixtures[n] = {"experts": list(m["experts"]),
                              "alpha": torch.tensor(m["alpha"], dtype=torch.float32,
                                                    device=device)}
        if state.get("classifier") is not None:
            c = state["classifier"]
            t2.classifier = {"labels": list(c["labels"]),
                             **{k: torch.tensor(c[k], dtype=torch.float32, device=device)
                                for k in ("mean", "std", "weight", "bias")}}
        if state.get("classification_expert") is not None:
            c = state["classification_expert"]
            t2.classification_targets = c["targets"]
            if list(c["matrices"]) != t2.classification_basis.names:
                raise ValueError(f"adaptation state: the classification expert's matrices "
                                 f"{c['matrices']} are not this model's "
                                 f"{t2.classification_basis.names}")
            t2.classification_expert = {"labels": list(c["labels"]), "z": tensors(
                c["z"], "the classification expert", t2.classification_basis)}
        t2.dispatch_strategy = state.get("dispatch_strategy")
        return t2


class _NamingTask(Task):
    """The classification expert's task: a prompt of any of `tasks`, then CLASSIFY_SEPARATOR,
    then the task's name."""

    def __init__(self, tasks: Sequence[Task]):
        super().__init__("classify", "classify")
        object.__setattr__(self, "_tasks", tuple(tasks))

    @property
    def spec(self) -> str:
        return "classify:" + ",".join(t.name for t in self._tasks)

    def examples(self, n: int, *, seed: int = 0) -> list[tuple[str, str]]:
        per = math.ceil(n / len(self._tasks))
        return [(p + CLASSIFY_SEPARATOR, t.name) for t in self._tasks
                for p, _ in t.examples(per, seed=seed + 7)][:n]


@contextlib.contextmanager
def adapted_generation(model, adapt, prompt: str):
    """What the seam's `generate(..., adapt=...)` runs its generation in: pass one picks the
    expert for `prompt` ("auto") or checks the name; pass two is the block, with the adapted
    weights (cached per expert). Yields the expert or mixture name."""
    t2 = transformer2_of(model, create=False)
    if t2 is None or not (t2.experts or t2.mixtures):
        raise ValueError(f"adapt={adapt!r}: this model has no Transformer² experts yet (train "
                         "some with `cerebrum adapt` or transformer2_of(model).train_expert)")
    name = t2.resolve(adapt, prompt)
    with t2.using(name):
        yield name



# --------------------------------------------------------------------------- for the families


def adapt_after_fit(model, tasks: Sequence[Task], *, steps: int, out_dir=None, seed: int = 0,
                    verbose: bool = False) -> Transformer2:
    """Train one expert per task (the network frozen) and, with two or more checkable tasks,
    the classifier dispatcher; with `out_dir`, the run's newest checkpoint then records them
    (its tensors untouched), so `from_checkpoint` and `cerebrum eval` see the experts. What the
    "neat" family's fit does after training when `use_transformer2_adaptation` is on."""
    t2 = transformer2_of(model)
    for task in tasks:
        t2.train_expert(task, steps=steps, seed=seed, verbose=verbose)
    checkable = [t for t in tasks if t.checkable]
    if len(checkable) >= 2:
        t2.fit_classifier(checkable, seed=seed)
    if out_dir is not None:
        record_in_checkpoint(model, latest_checkpoint(out_dir))
    return t2


def record_in_checkpoint(model, path) -> None:
    """Rewrite checkpoint `path` (atomically) with the model's current record in its header
    (experts trained after the run); tensors, optimiser state and curves are kept."""
    header, tensors = read_checkpoint(path)
    header["extra"] = model.checkpoint_record()
    write_bytes_atomically(path, save_safetensors(
        tensors, metadata={CHECKPOINT_FORMAT: json.dumps(header)}))


def adaptation_rows(model, n: int = 100, *, seed: int = 999) -> list[tuple[str, str]]:
    """(label, value) rows for `cerebrum eval`: for each expert trained on a generated task,
    exact-answer accuracy on n fresh examples with the base, the expert, and two-pass
    dispatch ("auto") when a dispatcher exists."""
    t2 = transformer2_of(model, create=False)
    if t2 is None:
        return []
    rows = []
    for name in t2.experts:
        spec = t2.tasks.get(name, "")
        if not spec or spec.startswith(("corpus:", "classify:")):
            continue
        task = parse_task(name, spec)
        pairs = task.examples(n, seed=seed)
        value = f"base {t2.accuracy(pairs, None):.3f}, expert {t2.accuracy(pairs, name):.3f}"
        if t2.dispatch_strategy is not None:
            value += f", auto {t2.accuracy(pairs, 'auto'):.3f}"
        rows.append((f"Transformer² accuracy on {name} ({n} examples)", value))
    return rows


def expert_step(model, loss_of):
    """(step, z): `step()` runs one expert-training forward + backward, `loss_of()` (the
    model's loss on a fixed batch) under the weights adapted by a fresh expert's z, which
    alone receives gradients (the profile's Transformer² step; the caller freezes the
    network's parameters)."""
    t2 = transformer2_of(model)
    z = [torch.zeros(r, device=t2._device(), requires_grad=True) for r in t2.basis.ranks]

    def step():
        for v in z:
            v.grad = None
        weights = t2.basis.adapted_weights([scale_of(v) for v in z])
        with substituted_weights(t2.basis.modules, weights):
            loss = loss_of()
        loss.backward()

    return step, z
