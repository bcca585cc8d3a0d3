"""MVoT, multimodal visualization-of-thought (seed 003, part 2): interleaved text and image
tokens, the token discrepancy loss, and constrained decoding of image spans.

`MVoTProcessor` is NEAT's token processor when `use_mvot_processor` is on. It owns the visual
codebook (a `cerebrum.nn.vq.VQVAE`, trained first, then frozen), lays grid-world trajectories
(`cerebrum.data.gridworld`) out as token sequences, computes L = L_C + lambda L_D from the
network's logits, and solves puzzles by constrained greedy decoding. The network it serves is
any model over the joint vocabulary (NEAT's byte network with `vocab_size = self.vocab_size`).

Vocabulary (V = 261 + K): ids 0..255 bytes, 256 <pad>, 257 <bos>, 258 <eos> (the byte
tokenizer's), 259 <img> (image start), 260 </img> (image end), 261 + k image code k.

Layout of one puzzle (L moves, N tokens per image, S = L + 1 states, v_s the codes of state s;
text is bytes):

    prompt     <bos> <img> v_0 </img> "RRDL..." "?"                 (the puzzle, every task)
    "mvot"     per step i = 1..L:  move_i <img> v_i </img>           (z_i, then v_i)
    "text_cot" per step i = 1..L:  move_i row_i col_i " "            (coordinates in text)
    "direct"   nothing
    answer     "=" ("goal" | "fall" | "safe") <eos>

so "mvot" is the seed's factorisation: v_i ~ P(v_i | x, z_1, v_1, ..., z_i) and
z_{i+1} ~ P(z_{i+1} | x, z_1, v_1, ..., z_i, v_i). Every puzzle of a config has the same
length (`sequence_length`); the prompt is context only (its targets are ignored).

Token discrepancy loss (MVoT, Li et al. 2025): for a position whose target is image code t,
with P the model's distribution over the K image codes only (softmax of the code logits),

    L_D = mean over image positions of  sum_k S[t, k] P(k),
    S[t, k] = MSE(e_t, e_k) = mean_j (e_t,j - e_k,j)^2          ("mse", the seed's choice)
              or ||e_t - e_k||_2                                  ("euclidean")

over the frozen codebook e (K, d), normalised by the largest entry of S so that S lies in
[0, 1] and lambda does not depend on the codebook's scale. The mean (not the seed's sum) keeps
lambda comparable with the mean cross-entropy L_C. The code logits are a slice of the joint
logits, so L_D sends no gradient to text logits.

Constrained decoding (`SpanConstraint`): outside an image span the model may emit text or
<img>; after <img>, exactly N image codes; then </img>. So every generated image span holds
exactly N codes.

Shapes: B puzzles, T sequence length, V vocabulary, K codes, N tokens per image, L moves.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cerebrum.data.gridworld import (
    MOVES,
    OUTCOMES,
    GridWorldSpec,
    agent_cells,
    cell_classes,
    puzzle_batch,
)
from cerebrum.nn.vq import VQVAE, codebook_usage

TASKS = ("mvot", "text_cot", "direct")
DISTANCES = ("mse", "euclidean")
TEXT_VOCAB = 259
BOS, EOS = 257, 258
IMAGE_START, IMAGE_END = 259, 260
CODE_OFFSET = 261
MOVE_BYTES = torch.tensor([ord(m) for m in MOVES])
#: The VQ-VAE's phase runs at this multiple of the fit's learning rate (at 3e-3 x 3 its cell
#: accuracy reaches 100% in about 200 steps of 16 puzzles; at 3e-3 it needs about 350).
VQVAE_LR_SCALE = 3.0
ANSWER_BYTES = torch.tensor([[ord(ch) for ch in "=" + o] for o in OUTCOMES])


@dataclass(frozen=True, kw_only=True)
class MVoTConfig:
    """MVoT's settings: the task (`mvot_task`: "mvot" interleaved images, "text_cot"
    coordinates in text, "direct" answer at once), the grid world, the VQ-VAE (one token per
    `vq_patch` x `vq_patch` pixels; `codebook_size`, `code_dim`, `commitment_weight`, EMA
    `codebook_decay`, `vqvae_steps` of its training phase) and the token discrepancy loss
    (`discrepancy_weight` lambda, `discrepancy_distance` "mse" or "euclidean")."""

    mvot_task: str = "mvot"
    grid_size: int = 4
    grid_moves: int = 6
    hole_probability: float = 0.25
    cell_pixels: int = 4
    vq_patch: int = 4
    codebook_size: int = 16
    code_dim: int = 16
    vq_hidden: int = 64
    commitment_weight: float = 0.25
    codebook_decay: float = 0.9
    vqvae_steps: int = 300
    discrepancy_weight: float = 0.1  # lambda: 0.1 beat 0 and 1 (bench/mvot.py, two seeds)
    discrepancy_distance: str = "mse"

    def __post_init__(self):
        if self.mvot_task not in TASKS:
            raise ValueError(f"mvot_task must be one of {', '.join(TASKS)}, got "
                             f"{self.mvot_task!r}")
        if self.discrepancy_distance not in DISTANCES:
            raise ValueError(f"discrepancy_distance must be one of {', '.join(DISTANCES)}, got "
                             f"{self.discrepancy_distance!r}")
        for name in ("grid_size", "grid_moves", "cell_pixels", "vq_patch", "codebook_size",
                     "code_dim", "vq_hidden", "vqvae_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("commitment_weight", "discrepancy_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
                    math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.codebook_decay, (int, float)) and 0 < self.codebook_decay < 1):
            raise ValueError(f"codebook_decay must be in (0, 1), got {self.codebook_decay!r}")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}")
        if self.grid_size > 10:
            raise ValueError(f"grid_size must be <= 10 (coordinates are one digit), got "
                             f"{self.grid_size}")
        if (self.grid_size * self.cell_pixels) % self.vq_patch:
            raise ValueError(f"vq_patch ({self.vq_patch}) must divide the image size "
                             f"(grid_size x cell_pixels = {self.grid_size * self.cell_pixels})")
        self.spec()  # validates the grid-world settings

    def spec(self) -> GridWorldSpec:
        """The grid world the puzzles are drawn from."""
        return GridWorldSpec(size=self.grid_size, n_moves=self.grid_moves,
                             hole_probability=self.hole_probability,
                             cell_pixels=self.cell_pixels)

    @property
    def tokens_per_image(self) -> int:
        """N: image tokens per image."""
        return (self.grid_size * self.cell_pixels // self.vq_patch) ** 2

    @property
    def vocab_size(self) -> int:
        """The joint vocabulary: 259 text ids, the two markers and the K codes."""
        return CODE_OFFSET + self.codebook_size

    @property
    def prompt_length(self) -> int:
        """Tokens of the prompt: <bos>, the first image with its markers, the moves, "?"."""
        return 1 + self.tokens_per_image + 2 + self.grid_moves + 1

    @property
    def sequence_length(self) -> int:
        """Tokens of a whole puzzle in the task's layout (module docstring)."""
        step = {"mvot": 1 + self.tokens_per_image + 2, "text_cot": 4, "direct": 0}
        return self.prompt_length + self.grid_moves * step[self.mvot_task] + len(
            ANSWER_BYTES[0]) + 1


def codebook_distances(codebook: torch.Tensor, distance: str = "mse") -> torch.Tensor:
    """S (K, K): distances between the codes of `codebook` (K, d), "mse" (mean squared
    difference) or "euclidean", divided by the largest entry (S in [0, 1]; zero diagonal)."""
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
    e = codebook.float()
    squared = (e.unsqueeze(1) - e.unsqueeze(0)).square()
    s = squared.mean(-1) if distance == "mse" else squared.sum(-1).sqrt()
    return s / s.max().clamp(min=torch.finfo(s.dtype).tiny)


def token_discrepancy_loss(code_logits: torch.Tensor, targets: torch.Tensor,
                           distances: torch.Tensor) -> torch.Tensor:
    """L_D = mean_i sum_k S[t_i, k] softmax(code_logits_i)_k over image positions:
    code_logits (M, K), targets (M,) code indices, distances S (K, K). Zero when M = 0."""
    if code_logits.dim() != 2 or code_logits.shape[-1] != distances.shape[0]:
        raise ValueError(f"code_logits must be (M, {distances.shape[0]}), got shape "
                         f"{tuple(code_logits.shape)}")
    if targets.shape != code_logits.shape[:1]:
        raise ValueError(f"targets must be ({code_logits.shape[0]},), got shape "
                         f"{tuple(targets.shape)}")
    if code_logits.shape[0] == 0:
        return code_logits.sum() * 0.0
    p = code_logits.float().softmax(-1)
    return (distances.to(p.dtype)[targets] * p).sum(-1).mean()


def image_discrepancy(logits: torch.Tensor, targets: torch.Tensor,
                      distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                        torch.Tensor]:
    """L_D of joint logits (B, T, V) for targets (B, T) (ids; -100 ignored): the positions
    whose target is an image code, their code logits (M, K) (a slice: text logits get no
    gradient) -> (L_D, code_logits, code_targets)."""
    flat, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    image = flat_targets >= CODE_OFFSET
    code_logits = flat[image][:, CODE_OFFSET:CODE_OFFSET + distances.shape[0]]
    code_targets = flat_targets[image] - CODE_OFFSET
    return token_discrepancy_loss(code_logits, code_targets, distances), code_logits, code_targets


class SpanConstraint:
    """Per-row state of constrained decoding (module docstring): `mask(logits)` disallows what
    may not come next, `update(tokens)` advances. Built from the prefix each row starts with."""

    def __init__(self, prefix: torch.Tensor, tokens_per_image: int, vocab_size: int):
        self.n, self.vocab_size = tokens_per_image, vocab_size
        # -1: outside a span; 0..N: codes emitted in the open span
        self.inside = torch.full((prefix.shape[0],), -1, dtype=torch.long, device=prefix.device)
        for t in range(prefix.shape[1]):
            self.update(prefix[:, t])

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (B, V) -> logits with disallowed ids at -inf."""
        ids = torch.arange(self.vocab_size, device=logits.device)
        is_code = ids >= CODE_OFFSET
        text = (ids < 256) | (ids == EOS) | (ids == IMAGE_START)
        outside = self.inside.unsqueeze(1) < 0
        codes = (self.inside.unsqueeze(1) >= 0) & (self.inside.unsqueeze(1) < self.n)
        close = self.inside.unsqueeze(1) == self.n
        allowed = ((outside & text) | (codes & is_code) | (close & (ids == IMAGE_END)))
        return logits.masked_fill(~allowed, float("-inf"))

    def update(self, tokens: torch.Tensor) -> None:
        """Advance with the tokens (B,) just emitted."""
        tokens = tokens.reshape(-1)
        self.inside = torch.where(tokens == IMAGE_START, torch.zeros_like(self.inside),
                                  torch.where(tokens >= CODE_OFFSET, self.inside + 1,
                                              torch.where(tokens == IMAGE_END,
                                                          torch.full_like(self.inside, -1),
                                                          self.inside)))


def image_spans(ids: list[int], tokens_per_image: int) -> list[list[int]]:
    """The complete image spans of a token list: each span's N code indices (0..K-1)."""
    spans, i = [], 0
    while i < len(ids):
        if ids[i] == IMAGE_START:
            body = ids[i + 1:i + 1 + tokens_per_image]
            closed = (len(body) == tokens_per_image and i + 1 + tokens_per_image < len(ids)
                      and ids[i + 1 + tokens_per_image] == IMAGE_END)
            if closed and all(t >= CODE_OFFSET for t in body):
                spans.append([t - CODE_OFFSET for t in body])
                i += tokens_per_image + 2
                continue
        i += 1
    return spans


def answer_of(ids: list[int]) -> str | None:
    """The answer word after the last "=" of a token list (None without one)."""
    text = bytes(t for t in ids if t < 256).decode("latin-1")
    if "=" not in text:
        return None
    return text.rsplit("=", 1)[1][:4]


class MVoTProcessor(nn.Module):
    """The visual codebook and the interleaved-sequence logic (module docstring)."""

    def __init__(self, config: MVoTConfig):
        super().__init__()
        self.config = c = config
        self.vqvae = VQVAE(image_size=c.grid_size * c.cell_pixels, patch=c.vq_patch,
                           codebook_size=c.codebook_size, code_dim=c.code_dim,
                           hidden=c.vq_hidden, commitment=c.commitment_weight,
                           decay=c.codebook_decay)
        #: Metrics of the last `loss` call (cross-entropy, L_D, image-token accuracy).
        self.last_metrics: dict = {}

    @property
    def vocab_size(self) -> int:
        """The joint vocabulary size."""
        return self.config.vocab_size

    # ------------------------------------------------------------------ the codebook phase

    def vqvae_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """The VQ-VAE's loss on every state image of a puzzle batch, with its metrics."""
        frames = batch["frames"].flatten(0, 1)  # (B S, 3, H, W)
        out = self.vqvae(frames)
        usage = codebook_usage(out.codes, self.config.codebook_size)
        return out.loss, {"reconstruction": out.reconstruction_loss.detach(),
                          "commitment": out.commitment.detach(), "codes_used": usage["used"]}

    # ------------------------------------------------------------------ sequences

    def sequences(self, batch: dict) -> torch.Tensor:
        """Puzzle batch -> ids (B, sequence_length) in the task's layout (module docstring);
        images are tokenised by the (frozen) codebook."""
        c = self.config
        frames = batch["frames"]
        B, S = frames.shape[:2]
        codes = self.vqvae.encode(frames.flatten(0, 1)).view(B, S, -1) + CODE_OFFSET
        device = codes.device

        def const(*ids):
            return torch.tensor(ids, device=device).expand(B, -1)

        moves = MOVE_BYTES.to(device)[batch["moves"]]  # (B, L)
        parts = [const(BOS, IMAGE_START), codes[:, 0], const(IMAGE_END), moves, const(ord("?"))]
        for i in range(c.grid_moves):
            if c.mvot_task == "mvot":
                parts += [moves[:, i:i + 1], const(IMAGE_START), codes[:, i + 1],
                          const(IMAGE_END)]
            elif c.mvot_task == "text_cot":
                parts += [moves[:, i:i + 1], ord("0") + batch["positions"][:, i + 1],
                          const(ord(" "))]
        parts += [ANSWER_BYTES.to(device)[batch["outcome"]], const(EOS)]
        return torch.cat(parts, 1)

    def training_pair(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs (B, T - 1), targets (B, T - 1)) of a puzzle batch: next-token targets,
        -100 (ignored) where the target is still part of the prompt."""
        ids = self.sequences(batch)
        targets = ids[:, 1:].clone()
        targets[:, :self.config.prompt_length - 1] = -100
        return ids[:, :-1], targets

    def distances(self) -> torch.Tensor:
        """S (K, K) of the current codebook (`codebook_distances`)."""
        return codebook_distances(self.vqvae.codebook, self.config.discrepancy_distance)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """L_C + lambda L_D of logits (B, T, V) for targets (B, T) (-100 ignored); the parts go
        to `last_metrics`."""
        if logits.shape[-1] != self.vocab_size:
            raise ValueError(f"logits must have {self.vocab_size} entries (the joint "
                             f"vocabulary), got {logits.shape[-1]}")
        cross_entropy = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                        targets.reshape(-1), ignore_index=-100)
        discrepancy, code_logits, code_targets = image_discrepancy(logits, targets,
                                                                   self.distances())
        with torch.no_grad():
            accuracy = (code_logits.argmax(-1) == code_targets).float().mean() if (
                code_targets.numel()) else code_logits.new_full((), float("nan"))
        self.last_metrics = {"cross_entropy": cross_entropy.detach(),
                             "discrepancy": discrepancy.detach(),
                             "image_token_accuracy": accuracy}
        return cross_entropy + self.config.discrepancy_weight * discrepancy

    # ------------------------------------------------------------------ solving puzzles

    def sample_batch(self, batch_size: int, seed: int = 0, device=None) -> dict:
        """A batch of puzzles drawn from `seed` (`puzzle_batch`) on `device` (the codebook's
        by default)."""
        batch = puzzle_batch(self.config.spec(), np.random.default_rng(seed), batch_size)
        device = device or self.vqvae.codebook.device
        return {k: v.to(device) for k, v in batch.items()}

    @torch.no_grad()
    def solve(self, logits_fn, batch: dict, *, max_new_tokens: int | None = None,
              context: int | None = None) -> dict:
        """Greedy constrained decoding of each puzzle's rationale and answer from its prompt.
        `logits_fn(ids (B, T)) -> logits (B, T, V)` sees the last `context` tokens (all when
        None); `max_new_tokens` defaults to the layout's length after the prompt. Returns
        {"tokens": [list of ids] per puzzle (generated part), "answers": [str | None],
        "task_accuracy": float, "images": [(n_spans, 3, H, W) uint8] per puzzle,
        "visualization_accuracy": share of the L steps whose generated image shows the agent
        alone in its true cell (None unless the task is "mvot"), "spans_ok": whether every
        generated span has N codes}."""
        c = self.config
        ids = self.sequences(batch)[:, :c.prompt_length]
        B = ids.shape[0]
        limit = max_new_tokens or (c.sequence_length - c.prompt_length)
        constraint = SpanConstraint(ids, c.tokens_per_image, self.vocab_size)
        done = torch.zeros(B, dtype=torch.bool, device=ids.device)
        for _ in range(limit):
            window = ids if context is None else ids[:, -context:]
            logits = constraint.mask(logits_fn(window)[:, -1].float())
            token = logits.argmax(-1)
            token = torch.where(done, torch.full_like(token, EOS), token)
            constraint.update(token)
            ids = torch.cat([ids, token.unsqueeze(1)], 1)
            done |= token == EOS
            if bool(done.all()):
                break
        generated = ids[:, c.prompt_length:].tolist()
        truth = [OUTCOMES[int(o)] for o in batch["outcome"]]
        answers = [answer_of(g) for g in generated]
        images, correct, spans_ok = [], 0, True
        for row, tokens in enumerate(generated):
            spans = image_spans(tokens, c.tokens_per_image)
            spans_ok &= all(len(s) == c.tokens_per_image for s in spans)
            if spans:
                pictures = self.vqvae.decode(torch.tensor(spans, device=ids.device))
                images.append(pictures)
                found = agent_cells(cell_classes(pictures, c.cell_pixels))  # (n_spans, 2)
                target = batch["positions"][row, 1:1 + len(spans)]
                correct += int((found[:c.grid_moves] == target).all(-1).sum())
            else:
                images.append(torch.zeros(0, 3, c.grid_size * c.cell_pixels,
                                          c.grid_size * c.cell_pixels, dtype=torch.uint8))
        return {"tokens": generated, "answers": answers,
                "task_accuracy": sum(a == t for a, t in zip(answers, truth, strict=True)) / B,
                "images": images,
                "visualization_accuracy": (correct / (B * c.grid_moves)
                                           if c.mvot_task == "mvot" else None),
                "spans_ok": spans_ok}

    @torch.no_grad()
    def reconstruction_report(self, batch: dict) -> dict:
        """Cell-level colour accuracy of the VQ-VAE on a puzzle batch's images (the share of
        cells whose reconstruction reads back as the true class) and codebook usage."""
        frames = batch["frames"].flatten(0, 1)
        codes = self.vqvae.encode(frames)
        rebuilt = self.vqvae.decode(codes)
        p = self.config.cell_pixels
        accuracy = (cell_classes(rebuilt, p) == cell_classes(frames, p)).float().mean()
        return {"cell_accuracy": float(accuracy),
                **codebook_usage(codes, self.config.codebook_size)}
