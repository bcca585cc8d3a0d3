"""RecurrentNetwork: a GRU or LSTM that parameterises a hidden Markov model over a sequence.

Read over inputs u (B, T, I), the network gives for every step t, from its state after steps
< t (so the densities are causal and define a proper sequence model):
    emissions   (B, T, S)     log p(y_t | s_t = j) of targets y (B, T, E) under each state
                              j's mixture of M diagonal Gaussians (targets default to the
                              inputs);
    transitions (B, T, S, S)  log p(s_t = j | s_{t-1} = i), each row a log-softmax;
    start       (B, S)        log p(s_0 = j).
`hmm_inference.forward(start, transitions, emissions, lengths)` then gives the exact
log-likelihood of the targets, marginalising the states (seed 000's RNN-HMM).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from cerebrum.nn.coders import LOGVAR_RANGE, MixtureParams

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


class MarkovParams(NamedTuple):
    start: torch.Tensor  # (B, S)
    transitions: torch.Tensor  # (B, T, S, S)
    emissions: torch.Tensor  # (B, T, S)
    mixture: MixtureParams  # per step and state: (B, T, S, M) weights, (B, T, S, M, E) rest


class RecurrentNetwork(nn.Module):
    """GRU/LSTM over (B, T, input_dim) producing HMM start, transition and emission
    log-probabilities for S states over targets of `target_dim` features."""

    def __init__(self, input_dim: int, hidden_dim: int, num_states: int, *,
                 target_dim: int | None = None, n_mix: int = 1, cell: str = "gru",
                 num_layers: int = 1):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {cell!r}")
        if num_states < 1:
            raise ValueError(f"num_states must be >= 1, got {num_states}")
        if n_mix < 1:
            raise ValueError(f"n_mix must be >= 1, got {n_mix}")
        self.num_states, self.n_mix = num_states, n_mix
        self.target_dim = input_dim if target_dim is None else target_dim
        self.rnn = CELLS[cell](input_dim, hidden_dim, num_layers=num_layers, batch_first=True)
        self.initial = nn.Parameter(0.1 * torch.randn(hidden_dim))  # the state before step 0
        S, E = num_states, self.target_dim
        self.to_start = nn.Linear(hidden_dim, S)
        self.to_transitions = nn.Linear(hidden_dim, S * S)
        self.to_emissions = nn.Linear(hidden_dim, S * n_mix * (1 + 2 * E))

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor | None = None) -> MarkovParams:
        targets = inputs if targets is None else targets
        B, T, _ = inputs.shape
        S = self.num_states
        states, _ = self.rnn(inputs)  # (B, T, H): state after step t
        before = torch.cat([self.initial.expand(B, 1, -1), states[:, :-1]], 1)  # after < t
        transitions = torch.log_softmax(self.to_transitions(before).view(B, T, S, S), -1)
        mixture = self.mixture_at(before)
        emissions = mixture.log_prob(targets[..., None, :])
        start = torch.log_softmax(self.to_start(self.initial), -1).expand(B, S)
        return MarkovParams(start, transitions, emissions, mixture)

    def mixture_at(self, state: torch.Tensor) -> MixtureParams:
        """The per-state emission mixtures from recurrent states (..., H)."""
        S, M, E = self.num_states, self.n_mix, self.target_dim
        out = self.to_emissions(state)
        logits, mean, logvar = out.split([S * M, S * M * E, S * M * E], -1)
        lead = state.shape[:-1]
        return MixtureParams(torch.log_softmax(logits.view(*lead, S, M), -1),
                             mean.reshape(*lead, S, M, E),
                             logvar.reshape(*lead, S, M, E).clamp(*LOGVAR_RANGE))

    def step(self, inputs: torch.Tensor, hidden=None):
        """One recurrent step: inputs (B, I) -> (output state (B, H), hidden to pass on)."""
        out, hidden = self.rnn(inputs.unsqueeze(1), hidden)
        return out[:, 0], hidden
