"""Causal sequence mixers that are linear in the sequence length (seed 002's "SSM" stage).

- `GatedCausalConv`: a gated causal depthwise Conv1D (the seed's SSM): each channel sees the
  last `kernel_size` steps of itself, gated by a SiLU of a second projection.
- `DiagonalSSM`: an S4D-style diagonal linear state-space layer (Gu et al., 2022): per channel,
  N complex diagonal modes discretised by zero-order hold, applied as a causal convolution
  with the SSM's kernel computed in closed form and multiplied in by FFT (O(T log T)).
- `GatedSSM`: either mixer inside the same gate (`kind="conv"` or `"diag"`).

Both are causal: output t depends on inputs 0..t only (tests perturb the future), and both
can also run one step at a time (`step(x_t, state) -> (y_t, state)`, from `initial_state`):
the conv keeps its last kernel_size - 1 inputs, the diagonal SSM its (B, D, N) complex state.
Stepping through a sequence equals the whole-sequence forward (tested), which is how
generation runs in time linear in its length.

Shape legend: B batch, T time (latent steps), D channels, N state size per channel.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

SSM_KINDS = ("conv", "diag")


def _check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class CausalDepthwiseConv(nn.Module):
    """(B, T, D) -> (B, T, D): y[t, d] = bias[d] + sum_j w[d, j] x[t - (k-1) + j, d], the
    inputs before t = 0 taken as zero (left padding), so y[t] sees x[0..t] only."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        _check_int(channels, "channels")
        self.kernel_size = _check_int(kernel_size, "kernel_size (ssm_kernel)")
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D)."""
        h = F.pad(x.transpose(1, 2), (self.kernel_size - 1, 0))
        return self.conv(h).transpose(1, 2)

    def initial_state(self, batch: int, *, device=None, dtype=None) -> torch.Tensor:
        """(B, D, kernel_size - 1) zeros: the inputs before t = 0."""
        return torch.zeros(batch, self.conv.in_channels, self.kernel_size - 1, device=device,
                           dtype=dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: x (B, D), state (B, D, kernel_size - 1) -> (y (B, D), new state)."""
        window = torch.cat([state, x.unsqueeze(-1)], -1)                 # (B, D, k)
        y = (window * self.conv.weight[:, 0].to(x.dtype)).sum(-1) + self.conv.bias.to(x.dtype)
        return y, window[..., 1:]


class DiagonalSSM(nn.Module):
    """S4D-style diagonal state space, one independent SSM per channel (D of them):

        s_t = exp(dt A) s_{t-1} + (exp(dt A) - 1) / A * B x_t,   y_t = Re(C s_t) + skip * x_t

    with A = -exp(log_a_real) + i a_imag (N complex modes, "S4D-Lin" initialisation: real part
    -1/2, imaginary parts pi n), dt = exp(log_dt) drawn log-uniformly in [dt_min, dt_max].
    Unrolled, y = k * x + skip x with the kernel k_l = Re(sum_n C_n B~_n exp(dt A_n l)), which
    is computed for the T steps at hand and applied by a zero-padded FFT convolution (causal,
    O(T log T)). The work runs in float32 (the FFT does not run in half precision) and the
    result is cast back to the input's dtype.
    """

    def __init__(self, channels: int, state_size: int = 16, *, dt_min: float = 1e-3,
                 dt_max: float = 1e-1):
        super().__init__()
        _check_int(channels, "channels")
        _check_int(state_size, "state_size")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        half = state_size  # complex modes (the real SSM they stand for has 2N states)
        log_dt = torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        self.log_a_real = nn.Parameter(torch.full((channels, half), math.log(0.5)))
        self.a_imag = nn.Parameter(math.pi * torch.arange(half).float().repeat(channels, 1))
        # C as real and imaginary parts (complex parameters are awkward for optimisers)
        self.c = nn.Parameter(torch.randn(channels, half, 2) * (0.5 ** 0.5))
        self.skip = nn.Parameter(torch.ones(channels))

    def _discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(decay exp(dt A), gain (exp(dt A) - 1) / A, C), each (D, N) complex64."""
        dt = self.log_dt.float().exp().unsqueeze(-1)
        a = torch.complex(-self.log_a_real.float().exp(), self.a_imag.float())
        decay = torch.exp(dt * a)
        return decay, (decay - 1) / a, torch.view_as_complex(self.c.float().contiguous())

    def initial_state(self, batch: int, *, device=None, dtype=None) -> torch.Tensor:
        """(B, D, N) complex zeros (dtype is ignored: the state is complex64)."""
        return torch.zeros(batch, *self.log_a_real.shape, device=device, dtype=torch.complex64)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the recurrence: x (B, D), state (B, D, N) -> (y (B, D), new state)."""
        decay, gain, c = self._discrete()
        u = x.float()
        state = decay * state + gain * u.unsqueeze(-1)
        y = 2 * (c * state).sum(-1).real + self.skip.float() * u
        return y.to(x.dtype), state

    def kernel(self, length: int) -> torch.Tensor:
        """(D, length) float32 convolution kernel k_0..k_{length-1} of every channel."""
        dt = self.log_dt.float().exp().unsqueeze(-1)                       # (D, 1)
        a = torch.complex(-self.log_a_real.float().exp(), self.a_imag.float())  # (D, N)
        dta = dt * a
        c = torch.view_as_complex(self.c.float().contiguous()) * (torch.exp(dta) - 1) / a
        steps = torch.arange(length, device=dta.device, dtype=torch.float32)
        vandermonde = torch.exp(dta.unsqueeze(-1) * steps)                 # (D, N, L)
        return 2 * torch.einsum("dn,dnl->dl", c, vandermonde).real

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D)."""
        T = x.shape[1]
        u = x.float().transpose(1, 2)                                      # (B, D, T)
        k = self.kernel(T)
        n = 2 * T
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :T]
        y = y + u * self.skip.float().unsqueeze(-1)
        return y.transpose(1, 2).to(x.dtype)


class GatedSSM(nn.Module):
    """The latent model's sequence mixer: (B, T, D) -> (B, T, D),

        u, g = split(W_in x);  y = W_out(mixer(u) * silu(g))

    with `mixer` a `CausalDepthwiseConv` (kind "conv", window `kernel_size`: the seed's
    gated Conv1D) or a `DiagonalSSM` (kind "diag", `state_size` complex modes per channel:
    an unbounded, exponentially decaying memory). Causal like its mixer.
    """

    def __init__(self, d_model: int, *, kind: str = "conv", kernel_size: int = 7,
                 state_size: int = 16):
        super().__init__()
        _check_int(d_model, "d_model")
        if kind not in SSM_KINDS:
            raise ValueError(f"ssm must be one of {', '.join(SSM_KINDS)}, got {kind!r}")
        self.kind = kind
        self.proj_in = nn.Linear(d_model, 2 * d_model)
        self.mixer = (CausalDepthwiseConv(d_model, kernel_size) if kind == "conv"
                      else DiagonalSSM(d_model, state_size))
        self.proj_out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D)."""
        u, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(self.mixer(u) * F.silu(gate))

    def initial_state(self, batch: int, *, device=None, dtype=None) -> torch.Tensor:
        """The mixer's state before the first step."""
        return self.mixer.initial_state(batch, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: x (B, D) -> (y (B, D), new state); equals forward's output at that step."""
        u, gate = self.proj_in(x).chunk(2, dim=-1)
        y, state = self.mixer.step(u, state)
        return self.proj_out(y * F.silu(gate)), state
