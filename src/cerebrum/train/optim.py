"""The engine's optimisers: AdamW, or Muon for the hidden matrices with AdamW for the rest.

AdamW gets two parameter groups: matrices (dim >= 2) decay, vectors and scalars (biases, norm
gains) do not.

Muon (Jordan et al., 2024: Nesterov momentum, then the update orthogonalised by a quintic
Newton-Schulz iteration) is only meant for the 2-D weights of hidden layers; embeddings, the
output head tied to them, norm gains and biases stay with AdamW, as in the method's published
recipe. Its learning rate is scaled by 0.2 * sqrt(max(rows, cols)) so that its updates have
AdamW's size: one `lr` and one schedule drive both.

Why not `torch.optim.Muon`: it runs the iteration in bfloat16, which is fast on GPUs but about
24x slower than float32 on CPUs without bf16 arithmetic (this project's 2-core machines). `Muon`
below is the same update with the iteration in bfloat16 on CUDA and in the parameter's dtype
elsewhere; tests/train/test_optim.py checks it against `torch.optim.Muon`.

`Optimizers` makes several torch optimisers act as one for the engine: the schedule writes
`lr` into `param_groups` (all of them), `step` / `zero_grad` reach each, and the state is a
list with one entry per optimiser.
"""

from __future__ import annotations

import math

import torch
from torch import nn

OPTIMIZERS = ("adamw", "muon")


def parameter_groups(parameters, weight_decay: float) -> list[dict]:
    """Matrices (dim >= 2) decay; vectors and scalars (biases, norm gains) do not."""
    decay, no_decay = [], []
    for p in parameters:
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The weights of the model's nn.Linear layers, except any shared with an embedding
    (a tied output head): what Muon updates."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    found, seen = [], set()
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.weight.requires_grad:
            w = module.weight
            if id(w) not in embedded and id(w) not in seen:
                seen.add(id(w))
                found.append(w)
    return found


#: Coefficients of the quintic Newton-Schulz iteration (Jordan et al.): the largest slope at
#: zero for which 5 steps take every singular value into roughly [0.7, 1.2].
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def orthogonalise(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """About U V^T for matrix = U S V^T (singular values mapped near 1), by Newton-Schulz.

    Runs in bfloat16 on CUDA and in the input's dtype elsewhere; returns the input's dtype."""
    a, b, c = NEWTON_SCHULZ
    x = matrix.bfloat16() if matrix.is_cuda else matrix.clone()
    wide = x.shape[0] <= x.shape[1]
    if not wide:  # iterate on the Gram matrix of the smaller side
        x = x.T
    x = x / x.norm().clamp(min=1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x if wide else x.T).to(matrix.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters (see the module docstring).

    Per step, for each matrix W with gradient G: m <- momentum * m + (1 - momentum) * G;
    U = orthogonalise(G + momentum * (m - G)) (Nesterov) or orthogonalise(m);
    W <- W * (1 - lr * weight_decay) - lr * 0.2 * sqrt(max(rows, cols)) * U.
    """

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      nesterov=nesterov, ns_steps=ns_steps))
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon updates matrices only; got a parameter of shape "
                                     f"{tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, beta = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffer = state["momentum_buffer"]
                buffer.lerp_(p.grad, 1 - beta)
                direction = p.grad.lerp(buffer, beta) if group["nesterov"] else buffer
                update = orthogonalise(direction, group["ns_steps"])
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * 0.2 * math.sqrt(max(p.shape)))
        return loss


class Optimizers:
    """Several optimisers stepped together (see the module docstring)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> list[dict]:
        return [opt.state_dict() for opt in self.optimizers]

    def load_state_dict(self, states: list[dict]) -> None:
        if len(states) != len(self.optimizers):
            raise ValueError(f"the saved state has {len(states)} optimisers, this run has "
                             f"{len(self.optimizers)} (a different `optimizer` setting?)")
        for opt, state in zip(self.optimizers, states, strict=True):
            opt.load_state_dict(state)


def build_optimizer(model: nn.Module, *, name: str, lr: float, weight_decay: float,
                    betas: tuple[float, float], fused: bool) -> Optimizers:
    """AdamW over every trainable parameter, or Muon over `hidden_matrices` plus AdamW over
    the rest."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters")
    matrices = hidden_matrices(model) if name == "muon" else []
    taken = {id(p) for p in matrices}
    rest = [p for p in trainable if id(p) not in taken]
    optimizers = []
    if matrices:
        optimizers.append(Muon(matrices, lr=lr, weight_decay=weight_decay))
    if rest:
        optimizers.append(torch.optim.AdamW(parameter_groups(rest, weight_decay), lr=lr,
                                            betas=betas, fused=fused))
    return Optimizers(optimizers)
