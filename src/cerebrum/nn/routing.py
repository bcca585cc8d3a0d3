"""Top-K mixture-of-experts routing with dropless batched dispatch (seed 004's gate).

`TopKRouter` scores E experts per token with a softmax gate, keeps the top K, and
renormalises their probabilities to sum to one. `MixtureOfExperts` runs the chosen experts:
dropless (every token reaches all of its K experts; no capacity limit, nothing dropped) and
batched (the N*K (token, expert) pairs are sorted by expert, each expert runs once on its
contiguous slice, and the results are scattered back and summed with the gate weights). A
token's output depends only on that token (no capacity competition between tokens or
sequences, tested).

Auxiliary losses (weights are the caller's):
- load balancing (Switch Transformer / GShard): aux = E * sum_e f_e P_e, with f_e the fraction
  of the N*K assignments that went to expert e and P_e the mean gate probability of e over the
  tokens. It is 1 under uniform routing and grows as the load concentrates.
- router z-loss (ST-MoE): mean over tokens of logsumexp(logits)^2; keeps the logits small.

Curvature-aware ("nuanced") routing: the plain gate's logits are W x. The nuanced gate adds a
bilinear term between a description of the token's geometry and a description of each expert's
geometry:
    logits_e = (W x)_e + g(x)^T A phi_e
    g(x)   = (1, log rms(x), log(|x|_inf / rms(x)))      scale and peakiness of the token;
             a token with large norm or a few dominant coordinates is what hyperbolic
             (tree-like, exponentially growing) geometry embeds with low distortion
    phi_e  = (one-hot of the expert's type (8), its current signed curvature,
              its sphere curvature for "product", else 0)
A (3 x 10) starts at zero, so the nuanced gate starts equal to the plain one and learns which
geometries suit which tokens; the curvatures enter detached (the router does not move them).

The router computes in float32 with autocast off (softmax and top-k of low-precision logits
tie and flip).

Shapes: N tokens, C width, E experts, K chosen per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cerebrum.nn.manifolds import MANIFOLDS, _check_dim

#: Token geometry features g(x) and expert features phi_e of the nuanced gate.
TOKEN_FEATURES = 3
EXPERT_FEATURES = len(MANIFOLDS) + 2


@dataclass
class Routing:
    """The gate's decision for N tokens.

    Attributes:
        experts: (N, K) chosen expert indices, best first.
        weights: (N, K) their renormalised probabilities (each row sums to 1), float32.
        probs: (N, E) the full softmax, float32.
        logits: (N, E) float32.
    """

    experts: torch.Tensor
    weights: torch.Tensor
    probs: torch.Tensor
    logits: torch.Tensor

    def load(self, n_experts: int) -> torch.Tensor:
        """f: (E,) fraction of the N*K assignments that went to each expert (sums to 1)."""
        counts = torch.bincount(self.experts.flatten(), minlength=n_experts)
        return counts.to(self.probs.dtype) / self.experts.numel()

    def balance_loss(self, n_experts: int) -> torch.Tensor:
        """E * sum_e f_e P_e (1 under uniform routing)."""
        return n_experts * (self.load(n_experts) * self.probs.mean(0)).sum()

    def z_loss(self) -> torch.Tensor:
        """Mean of logsumexp(logits)^2 over tokens."""
        return torch.logsumexp(self.logits, -1).square().mean()


def token_geometry(x: torch.Tensor) -> torch.Tensor:
    """g(x): (N, 3) = (1, log rms(x), log(max|x| / rms(x))) in x's dtype."""
    rms = x.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-6)
    peak = x.abs().amax(-1, keepdim=True).clamp_min(1e-6)
    return torch.cat([torch.ones_like(rms), rms.log(), (peak / rms).log()], -1)


class TopKRouter(nn.Module):
    """Softmax gate over `n_experts`, top `k` per token, renormalised.

    Args:
        dim: C, the token width.
        n_experts: E.
        k: K (1 <= K <= E).
        nuanced: curvature-aware gating (module docstring); then `forward` needs the experts'
            features (E, EXPERT_FEATURES).
    """

    def __init__(self, dim: int, n_experts: int, k: int, *, nuanced: bool = False):
        super().__init__()
        dim = _check_dim(dim, name="dim")
        self.n_experts = _check_dim(n_experts, name="n_experts")
        self.k = _check_dim(k, name="k")
        if self.k > self.n_experts:
            raise ValueError(f"k (experts chosen per token) must be <= n_experts "
                             f"({self.n_experts}), got k={self.k}")
        self.nuanced = bool(nuanced)
        self.gate = nn.Linear(dim, self.n_experts, bias=False)
        nn.init.normal_(self.gate.weight, std=0.02)
        if self.nuanced:
            self.geometry = nn.Parameter(torch.zeros(TOKEN_FEATURES, EXPERT_FEATURES))

    def forward(self, x: torch.Tensor, expert_features: torch.Tensor | None = None, *,
                temperature: float = 1.0) -> Routing:
        """x (N, C) -> Routing. `temperature` divides the logits before the softmax (gate
        training may anneal it); the z-loss uses the raw logits."""
        if x.dim() != 2:
            raise ValueError(f"x must be (N, C) tokens, got shape {tuple(x.shape)}")
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            xf = x.to(dtype)
            logits = xf @ self.gate.weight.to(dtype).T
            if self.nuanced:
                if expert_features is None:
                    raise ValueError("nuanced routing needs the experts' features "
                                     f"(E, {EXPERT_FEATURES})")
                bilinear = self.geometry.to(dtype) @ expert_features.to(dtype).T  # (3, E)
                logits = logits + token_geometry(xf) @ bilinear
            probs = torch.softmax(logits / temperature, -1)
            top, experts = probs.topk(self.k, -1)
            weights = top / top.sum(-1, keepdim=True)
        return Routing(experts=experts, weights=weights, probs=probs, logits=logits)


class MixtureOfExperts(nn.Module):
    """Router + experts with dropless sorted dispatch (module docstring).

    Args:
        dim: C.
        experts: the E expert modules, each (n, C) -> (n, C).
        k: K.
        nuanced: curvature-aware gating; `expert_features` (a callable returning (E, F)) is
            then required.
    """

    def __init__(self, dim: int, experts: list[nn.Module], k: int, *, nuanced: bool = False,
                 expert_features=None):
        super().__init__()
        if not experts:
            raise ValueError("a mixture of experts needs at least one expert, got none")
        self.experts = nn.ModuleList(experts)
        self.router = TopKRouter(dim, len(experts), k, nuanced=nuanced)
        self._expert_features = expert_features

    @property
    def n_experts(self) -> int:
        """E."""
        return len(self.experts)

    def route(self, x: torch.Tensor, temperature: float = 1.0) -> Routing:
        """The gate's decision for tokens x (N, C)."""
        features = None
        if self.router.nuanced:
            if self._expert_features is None:
                raise ValueError("nuanced routing needs expert_features")
            features = self._expert_features()
        return self.router(x, features, temperature=temperature)

    def dispatch(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """Run each expert on its tokens (sorted by expert) and combine: (N, C)."""
        n, k = routing.experts.shape
        flat = routing.experts.flatten()                  # (N*K,) expert of each assignment
        order = torch.argsort(flat, stable=True)          # assignments grouped by expert
        counts = torch.bincount(flat, minlength=self.n_experts).tolist()
        tokens = x[order // k]                            # (N*K, C) in expert order
        # while training, an expert with no tokens still runs (on 0 rows): its parameters
        # join the graph with zero gradients, so data-parallel training sees no unused
        # parameter; without gradients (evaluation, generation) it is skipped
        keep_all = torch.is_grad_enabled()
        outputs = [expert(chunk) for expert, chunk in
                   zip(self.experts, tokens.split(counts), strict=True)
                   if keep_all or chunk.shape[0]]
        gathered = torch.cat(outputs) if outputs else tokens
        combined = torch.empty_like(gathered)
        combined[order] = gathered                        # back to (token, slot) order
        weights = routing.weights.to(combined.dtype).unsqueeze(-1)
        return (combined.view(n, k, -1) * weights).sum(1)

    def forward(self, x: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, Routing]:
        """x (..., C) -> (output (..., C), Routing over the flattened tokens)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        routing = self.route(flat, temperature)
        return self.dispatch(flat, routing).view(shape), routing

    def dense_reference(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """Every expert on every token, combined with the same routing (for tests): (N, C)."""
        every = torch.stack([expert(x) for expert in self.experts], 1)   # (N, E, C)
        chosen = every.gather(1, routing.experts.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return (chosen * routing.weights.to(chosen.dtype).unsqueeze(-1)).sum(1)
