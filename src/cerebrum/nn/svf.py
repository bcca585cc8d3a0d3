"""Singular-value fine-tuning (SVF, Transformer²): experts that rescale the singular values of
a network's linear layers.

Shape legend: O output features, I input features, R = min(O, I) singular values of one
matrix, K experts (or mixture components), M adapted matrices.

For each adapted `nn.Linear` weight W (O, I) = U (O, R) diag(sigma (R,)) Vh (R, I) (its SVD,
computed once and cached), an expert is one vector z (R,) per matrix, and the expert's weight is

    W' = U diag(sigma * f(z)) Vh,        f(z) = 2 sigmoid(z)      (f(0) = 1 exactly)

f keeps every scale in (0, 2): an expert can switch a singular direction off or double it,
never flip its sign or blow it up, so no renormalisation is needed (the reference
implementation rescales by sum(sigma) / sum(sigma * mask) instead). W' is computed as

    W' = W + U diag(sigma * (f(z) - 1)) Vh

which is the same matrix in exact arithmetic, but gives W' == W bit for bit where f(z) = 1
(the SVD's round-off only touches the change an expert makes). A mixture of experts with
coefficients alpha (K,) uses the scales s = sum_k alpha_k f(z_k) in place of f(z), so a one-hot
alpha is that expert exactly.

The bases (U, sigma, Vh) are recomputed when a weight changes: each is keyed by the weight's
storage, version counter (bumped by every in-place update: an optimiser step, `copy_`,
`load_state_dict`), shape, dtype and device. They are computed in at least float32 and kept in
that precision; an adapted weight is cast back to the weight's dtype.

Adapted weights are used by `substituted_weights`, which shadows a module's `weight`
parameter with a tensor for the duration of a `with` block (the parameter itself, its
state-dict entry and its optimiser state are untouched), so a forward with adapted weights
costs exactly a normal forward.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterator, Sequence

import torch
from torch import nn

#: Named selections of matrices (`fnmatch` patterns on module names). "mlp": every linear
#: layer inside a module whose name contains "mlp" (the GPT's and NEAT's feed-forward).
TARGETS = {
    "mlp": ("*mlp.*",),
    "attention": ("*attn.*",),
    "all": ("*",),
}


def scale_of(z: torch.Tensor) -> torch.Tensor:
    """f(z) = 2 sigmoid(z): the factor on each singular value, in (0, 2); f(0) = 1."""
    return 2 * torch.sigmoid(z)


def resolve_targets(model: nn.Module, targets: str | Sequence[str] = "mlp",
                    *, exclude_tied: bool = True) -> list[str]:
    """Names of the `nn.Linear` modules of `model` that SVF adapts, in module order.

    `targets` is a key of TARGETS or a sequence of `fnmatch` patterns on module names. A
    weight shared with another module (a tied output head) is skipped with `exclude_tied`.
    ValueError (naming `targets`) when nothing matches."""
    if isinstance(targets, str):
        if targets not in TARGETS:
            raise ValueError(f"targets must be one of {', '.join(TARGETS)} or a list of "
                             f"module-name patterns, got {targets!r}")
        patterns = TARGETS[targets]
    else:
        patterns = tuple(targets)
        if not patterns or not all(isinstance(p, str) for p in patterns):
            raise ValueError(f"targets must be a non-empty list of module-name patterns, got "
                             f"{targets!r}")
    weight_users: dict[int, int] = {}
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            weight_users[id(parameter)] = weight_users.get(id(parameter), 0) + 1
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        if exclude_tied and weight_users.get(id(module.weight), 0) > 1:
            continue
        names.append(name)
    if not names:
        raise ValueError(f"targets {targets!r} match no nn.Linear module of "
                         f"{type(model).__name__}")
    return names


def weight_key(weight: torch.Tensor) -> tuple:
    """What identifies a weight's current values without reading them."""
    return (weight.data_ptr(), weight._version, tuple(weight.shape), weight.dtype,
            weight.device)


class SVFBasis:
    """The cached SVD of the weights of some `nn.Linear` modules of a host network.

    `basis(i)` -> (U (O, R), sigma (R,), Vh (R, I)) of the i-th module's weight, recomputed
    when the weight changed since the last call (module docstring)."""

    def __init__(self, host: nn.Module, names: Sequence[str]):
        modules = dict(host.named_modules())
        missing = [n for n in names if not isinstance(modules.get(n), nn.Linear)]
        if missing:
            raise ValueError(f"{', '.join(missing)}: not nn.Linear modules of "
                             f"{type(host).__name__}")
        self.names = list(names)
        self.modules = [modules[n] for n in names]
        self._cache: list[tuple | None] = [None] * len(names)
        self._keys: list[tuple | None] = [None] * len(names)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def ranks(self) -> list[int]:
        """R = min(O, I) of each matrix: the length of an expert's vector for it."""
        return [min(m.weight.shape) for m in self.modules]

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """(O, I) of each matrix."""
        return [tuple(m.weight.shape) for m in self.modules]

    def basis(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(U, sigma, Vh) of the i-th weight, from the cache unless the weight changed."""
        weight = self.modules[i].weight
        key = weight_key(weight)
        if self._keys[i] != key:
            work = weight.detach().to(torch.promote_types(weight.dtype, torch.float32))
            U, sigma, Vh = torch.linalg.svd(work, full_matrices=False)
            self._cache[i], self._keys[i] = (U, sigma, Vh), key
        return self._cache[i]

    def is_current(self) -> bool:
        """Whether every cached basis matches its weight (False before the first use)."""
        return all(k == weight_key(m.weight) for k, m in zip(self._keys, self.modules,
                                                                strict=True))

    def adapted_weight(self, i: int, scale: torch.Tensor) -> torch.Tensor:
        """W + U diag(sigma * (scale - 1)) Vh for the i-th weight, in its dtype; `scale` (R,)
        may require grad (the result then does)."""
        weight = self.modules[i].weight
        U, sigma, Vh = self.basis(i)
        delta = (U * (sigma * (scale.to(sigma) - 1))) @ Vh
        return (weight.detach().to(delta.dtype) + delta).to(weight.dtype)

    def adapted_weights(self, scales: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The adapted weight of every matrix, scales[i] (R_i,) on the i-th."""
        if len(scales) != len(self):
            raise ValueError(f"expected {len(self)} scale vectors (one per adapted matrix), "
                             f"got {len(scales)}")
        return [self.adapted_weight(i, s) for i, s in enumerate(scales)]

    def parameter_count(self) -> int:
        """Parameters of one expert: sum of R over the matrices."""
        return sum(self.ranks)

    def lora_parameter_count(self, rank: int = 4) -> int:
        """Parameters of a rank-`rank` LoRA on the same matrices: rank * (O + I) each."""
        return sum(rank * (o + i) for o, i in self.shapes)


def mixture_scales(zs: Sequence[Sequence[torch.Tensor]], alpha: torch.Tensor
                   ) -> list[torch.Tensor]:
    """Per-matrix scales of a mixture: s_m = sum_k alpha_k f(z_{k,m}).

    zs: K experts, each a list of M vectors (R_m,); alpha (K,). A one-hot alpha gives that
    expert's f(z) exactly (1 * x + 0 * y is x in floating point)."""
    if alpha.dim() != 1 or alpha.shape[0] != len(zs):
        raise ValueError(f"alpha must have one coefficient per expert ({len(zs)}), got shape "
                         f"{tuple(alpha.shape)}")
    scales = []
    for m in range(len(zs[0])):
        stacked = torch.stack([scale_of(z[m]) for z in zs])          # (K, R_m)
        scales.append((alpha.to(stacked).unsqueeze(1) * stacked).sum(0))
    return scales


@contextlib.contextmanager
def substituted_weights(modules: Sequence[nn.Module], weights: Sequence[torch.Tensor]
                        ) -> Iterator[None]:
    """Within the block, `modules[i].weight` reads `weights[i]` (shadowing the parameter in the
    module's instance dictionary); the parameters, state dicts and optimisers are untouched,
    and every module is restored on exit, also on an exception."""
    done = []
    try:
        for module, weight in zip(modules, weights, strict=True):
            if "weight" in module.__dict__:
                raise RuntimeError(f"{type(module).__name__}.weight is already substituted")
            module.__dict__["weight"] = weight
            done.append(module)
        yield
    finally:
        for module in done:
            del module.__dict__["weight"]
