"""Vector quantisation: an EMA codebook and a small VQ-VAE that turns images into tokens.

Shapes: B images, C = 3 channels, H x W pixels, p `patch` (pixels per token side),
h = H / p, w = W / p, N = h w tokens per image, K `codebook_size`, d `code_dim`.

`VectorQuantizer`: z (..., d) -> nearest code (squared Euclidean distance). The forward pass
returns the quantised vectors with straight-through gradients (z + sg(e - z): the decoder's
gradient reaches the encoder as if quantisation were the identity) and the commitment term
||z - sg(e)||^2. The codebook is not a parameter: it is updated by exponential moving
averages of the vectors assigned to each code (van den Oord et al. 2017, appendix; Razavi et
al. 2019), in training mode only: N_k <- g N_k + (1 - g) n_k, m_k <- g m_k + (1 - g) sum z,
e_k = m_k / N_k (N_k Laplace-smoothed so an unused code keeps its place); a dead code (used
less than once a batch) is moved onto a vector far from every live code when the batch has
one (codebook restart: two kinds of input merged into one code split again). EMA was chosen
over a codebook loss because it needs no learning rate of its own. The codebook is
initialised at the first training batch by farthest-point sampling of the encoder's
outputs, so every distinct vector of that batch gets a code of its own (a random init would
leave rare cell pictures sharing a code with common ones).

`VQVAE`: encoder = a p x p convolution with stride p (one token per p x p patch) and two
1 x 1 convolutions, (B, 3, H, W) -> (B, d, h, w); quantiser; decoder = two 1 x 1 convolutions
and a p x p transposed convolution back to (B, 3, H, W). Pixels are scaled to [-1, 1]; the loss
is mean squared reconstruction error + `commitment` x commitment term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from cerebrum._util.validation import check_nonnegative_float, check_positive_int

#: Dead codes restart on vectors this many times farther (squared) than the mean from a code.
RESTART_RATIO = 4.0


def farthest_points(x: torch.Tensor, k: int) -> torch.Tensor:
    """k rows of x (N, d) chosen greedily, each the farthest from those chosen (starting from
    row 0); with fewer than k rows the choice repeats. -> (k, d)."""
    chosen = [0]
    nearest = (x - x[0]).square().sum(-1)
    for _ in range(1, k):
        index = int(nearest.argmax())
        chosen.append(index)
        nearest = torch.minimum(nearest, (x - x[index]).square().sum(-1))
    return x[torch.tensor(chosen, device=x.device)].clone()


class VectorQuantizer(nn.Module):
    """A codebook of K vectors of size d, updated by EMA in training mode (module docstring)."""

    def __init__(self, codebook_size: int, dim: int, *, decay: float = 0.99, eps: float = 1e-5):
        super().__init__()
        self.codebook_size = check_positive_int(codebook_size, name="codebook_size", minimum=2)
        self.dim = check_positive_int(dim, name="code_dim")
        if not 0 < decay < 1:
            raise ValueError(f"codebook_decay must be in (0, 1), got {decay!r}")
        self.decay, self.eps = float(decay), float(eps)
        self.register_buffer("codebook", torch.randn(codebook_size, dim))
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", self.codebook.clone())
        self.register_buffer("initialised", torch.tensor(False))

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (...) int64 of vectors z (..., d): the nearest codebook entry."""
        flat = z.reshape(-1, self.dim).to(self.codebook.dtype)
        distances = (flat.square().sum(-1, keepdim=True) - 2 * flat @ self.codebook.T
                     + self.codebook.square().sum(-1))
        return distances.argmin(-1).reshape(z.shape[:-1])

    @torch.no_grad()
    def _update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        flat = z.detach().reshape(-1, self.dim).to(self.codebook.dtype)
        one_hot = F.one_hot(codes.reshape(-1), self.codebook_size).to(flat.dtype)  # (M, K)
        self.cluster_size.mul_(self.decay).add_(one_hot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(one_hot.T @ flat, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        self.codebook.copy_(self.embed_sum / smoothed.unsqueeze(-1))
        self._restart_dead_codes(flat)

    def _restart_dead_codes(self, flat: torch.Tensor) -> None:
        # A code assigned less than once a batch (EMA) is dead. Where the batch holds vectors
        # far from every live code (squared distance > RESTART_RATIO x the batch's mean; two
        # kinds of input merged into one code, say), dead codes move onto the farthest of
        # them, one by one: the merged kinds split again. Perfectly quantised data moves none.
        dead = self.cluster_size < 1.0
        if not bool(dead.any()) or bool(dead.all()):
            return
        live = self.codebook[~dead]
        nearest = torch.cdist(flat, live).square().min(-1).values  # (M,)
        threshold = RESTART_RATIO * nearest.mean()
        for k in dead.nonzero().flatten().tolist():
            index = int(nearest.argmax())
            if not nearest[index] > threshold:
                break
            point = flat[index]
            self.codebook[k] = point
            self.embed_sum[k] = point
            self.cluster_size[k] = 1.0
            nearest = torch.minimum(nearest, (flat - point).square().sum(-1))

    def forward(self, z: torch.Tensor):
        """z (..., d) -> (quantised (..., d) with straight-through gradients, codes (...),
        commitment term ||z - sg(e)||^2 (mean)). Updates the codebook in training mode."""
        if self.training and not bool(self.initialised):
            with torch.no_grad():
                start = farthest_points(z.detach().reshape(-1, self.dim).to(
                    self.codebook.dtype), self.codebook_size)
                self.codebook.copy_(start)
                self.embed_sum.copy_(start)
                self.cluster_size.fill_(1.0)
                self.initialised.fill_(True)
        codes = self.quantize(z)
        quantised = F.embedding(codes, self.codebook).to(z.dtype)
        commitment = (z - quantised.detach()).square().mean()
        if self.training:
            self._update(z, codes)
        return z + (quantised - z).detach(), codes, commitment


@dataclass
class VQOutput:
    """What `VQVAE.forward` returns: reconstruction (B, 3, H, W) on [-1, 1], codes (B, N),
    loss (reconstruction MSE + commitment weight x commitment), and the two terms."""

    reconstruction: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor
    reconstruction_loss: torch.Tensor
    commitment: torch.Tensor


class VQVAE(nn.Module):
    """Images (B, 3, H, W) uint8 <-> N = (H / patch) (W / patch) tokens from a K-code
    codebook (module docstring)."""

    def __init__(self, *, image_size: int, patch: int, codebook_size: int = 16,
                 code_dim: int = 16, hidden: int = 64, commitment: float = 0.25,
                 decay: float = 0.99):
        super().__init__()
        self.image_size = check_positive_int(image_size, name="image_size")
        self.patch = check_positive_int(patch, name="vq_patch")
        if image_size % patch:
            raise ValueError(f"vq_patch ({patch}) must divide the image size ({image_size})")
        check_positive_int(hidden, name="vq_hidden")
        self.commitment = check_nonnegative_float(commitment, name="commitment_weight")
        self.encoder = nn.Sequential(
            nn.Conv2d(3, hidden, patch, stride=patch), nn.GELU(),
            nn.Conv2d(hidden, hidden, 1), nn.GELU(), nn.Conv2d(hidden, code_dim, 1))
        self.quantizer = VectorQuantizer(codebook_size, code_dim, decay=decay)
        self.decoder = nn.Sequential(
            nn.Conv2d(code_dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, hidden, 1), nn.GELU(),
            nn.ConvTranspose2d(hidden, 3, patch, stride=patch))

    @property
    def tokens_per_image(self) -> int:
        """N: tokens per image."""
        return (self.image_size // self.patch) ** 2

    @property
    def codebook(self) -> torch.Tensor:
        """(K, d) the code vectors."""
        return self.quantizer.codebook

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != self.image_size or (
                images.shape[3] != self.image_size):
            raise ValueError(f"images must be (B, 3, {self.image_size}, {self.image_size}), got "
                             f"shape {tuple(images.shape)}")
        dtype = self.decoder[-1].weight.dtype
        return images.to(dtype) / 127.5 - 1.0

    def _latents(self, images):
        z = self.encoder(self._pixels(images))  # (B, d, h, w)
        return z.permute(0, 2, 3, 1)  # (B, h, w, d)

    def forward(self, images: torch.Tensor) -> VQOutput:
        """Encode, quantise (EMA update in training mode), decode: images (B, 3, H, W) uint8."""
        z = self._latents(images)
        quantised, codes, commitment = self.quantizer(z)
        reconstruction = self.decoder(quantised.permute(0, 3, 1, 2))
        error = F.mse_loss(reconstruction.float(), self._pixels(images).float())
        return VQOutput(reconstruction, codes.flatten(1), error + self.commitment * commitment,
                        error, commitment)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) uint8 -> codes (B, N) int64 (row-major); never updates the
        codebook."""
        with torch.no_grad():
            return self.quantizer.quantize(self._latents(images)).flatten(1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, N) -> images (B, 3, H, W) uint8."""
        side = self.image_size // self.patch
        if codes.dim() != 2 or codes.shape[1] != side * side:
            raise ValueError(f"codes must be (B, {side * side}), got shape {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max())
                              >= self.quantizer.codebook_size):
            raise ValueError(f"codes must be in 0..{self.quantizer.codebook_size - 1}")
        with torch.no_grad():
            vectors = F.embedding(codes, self.codebook).view(-1, side, side, self.codebook.shape[1])
            out = self.decoder(vectors.permute(0, 3, 1, 2).to(self.decoder[0].weight.dtype))
            return ((out.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> dict:
    """{"used": share of the K codes that appear in codes, "perplexity": exp of the entropy of
    the code frequencies (K for uniform use, 1 for one code)}."""
    counts = torch.bincount(codes.reshape(-1), minlength=codebook_size).float()
    p = counts / counts.sum().clamp(min=1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"used": float((counts > 0).float().mean()), "perplexity": float(entropy.exp())}
