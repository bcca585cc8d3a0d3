"""Grid-world puzzles with images, generated with no download (MVoT's FrozenLake-style task).

A puzzle is an n x n grid of cells, each ice, a hole, the start or the goal; an agent stands on
the start and follows a sequence of moves (U, D, L, R). The question: does the agent reach the
goal, fall into a hole, or stop safe on the ice?

Rules (`simulate`): a move that would leave the grid keeps the agent where it is (the border is
a wall); entering a hole ends the episode ("fall") and entering the goal ends it ("goal"): the
agent stays there for the remaining moves, so a trajectory always has n_moves + 1 states;
otherwise the answer is "safe".

Rendering (`render`): each cell is `cell_pixels` x `cell_pixels` pixels of its kind's colour;
the agent is a red square inside its cell (a border of the cell's colour around it), so every
cell shows one of 8 classes (4 kinds, with or without the agent). `cell_classes` reads an
image back to those classes by the nearest rendered template per cell, which is how
reconstructions and generated images are scored.

`GridWorldBatches` streams batches of puzzles with their rendered trajectories as tensors,
deterministic in (seed, batch index), with the engine's state_dict protocol (resumable).

Shapes: B puzzles, L moves, S = L + 1 states, n grid size, p cell pixels, H = W = n p.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cerebrum._util.validation import check_positive_int

ICE, HOLE, START, GOAL = 0, 1, 2, 3
KINDS = ("ice", "hole", "start", "goal")
MOVES = "UDLR"
#: (row, column) steps of U, D, L, R.
DELTAS = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)], dtype=np.int64)
OUTCOMES = ("goal", "fall", "safe")
#: Background colour of each cell kind (RGB); the agent's colour.
PALETTE = np.array([(200, 230, 255), (20, 40, 120), (240, 200, 110), (40, 170, 60)], np.uint8)
AGENT = np.array((220, 30, 30), np.uint8)
N_CLASSES = 2 * len(KINDS)  # class = kind + 4 * (agent present)


@dataclass(frozen=True)
class Puzzle:
    """One puzzle: `grid` (n, n) int64 of ICE / HOLE / START / GOAL, the start cell and the
    moves as indices into MOVES."""

    grid: np.ndarray
    start: tuple[int, int]
    moves: tuple[int, ...]

    @property
    def move_text(self) -> str:
        """The moves as letters, e.g. "RRDU"."""
        return "".join(MOVES[m] for m in self.moves)


def simulate(grid: np.ndarray, start, moves) -> tuple[np.ndarray, str]:
    """The agent's cells (L + 1, 2) along `moves` and the outcome ("goal", "fall", "safe")."""
    grid = np.asarray(grid)
    n = grid.shape[0]
    if grid.ndim != 2 or grid.shape[1] != n:
        raise ValueError(f"grid must be square (n, n), got shape {grid.shape}")
    position = np.array(start, dtype=np.int64)
    if position.shape != (2,) or not ((0 <= position) & (position < n)).all():
        raise ValueError(f"start must be a cell of the {n} x {n} grid, got {start!r}")
    path, outcome = [position.copy()], "safe"
    for move in moves:
        if not 0 <= int(move) < len(MOVES):
            raise ValueError(f"moves must be indices into {MOVES!r} (0..3), got {move!r}")
        if outcome == "safe":
            position = np.clip(position + DELTAS[int(move)], 0, n - 1)  # walls keep it in
            kind = grid[position[0], position[1]]
            if kind == HOLE:
                outcome = "fall"
            elif kind == GOAL:
                outcome = "goal"
        path.append(position.copy())
    return np.stack(path), outcome


def random_puzzle(rng: np.random.Generator, size: int = 4, n_moves: int = 6,
                  hole_probability: float = 0.25, outcome: str | None = None,
                  max_tries: int = 1000) -> Puzzle:
    """A random puzzle: start and goal on distinct cells, each other cell a hole with
    `hole_probability`, random moves. `outcome` asks for a puzzle with that answer (by
    rejection, at most `max_tries` draws)."""
    check_positive_int(size, name="size", minimum=2)
    check_positive_int(n_moves, name="n_moves")
    if not 0 <= hole_probability < 1:
        raise ValueError(f"hole_probability must be in [0, 1), got {hole_probability!r}")
    if outcome is not None and outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)} or None, got "
                         f"{outcome!r}")
    for _ in range(max_tries):
        grid = np.where(rng.random((size, size)) < hole_probability, HOLE, ICE)
        start, goal = rng.choice(size * size, 2, replace=False)
        grid.flat[start], grid.flat[goal] = START, GOAL
        moves = tuple(int(m) for m in rng.integers(0, len(MOVES), n_moves))
        puzzle = Puzzle(grid, (int(start // size), int(start % size)), moves)
        if outcome is None or simulate(grid, puzzle.start, moves)[1] == outcome:
            return puzzle
    raise ValueError(f"no puzzle with outcome {outcome!r} in {max_tries} draws "
                     f"(size={size}, n_moves={n_moves}, hole_probability={hole_probability})")


def cell_template(kind: int, agent: bool, cell_pixels: int) -> np.ndarray:
    """The (p, p, 3) uint8 picture of one cell."""
    cell = np.broadcast_to(PALETTE[kind], (cell_pixels, cell_pixels, 3)).copy()
    if agent:
        margin = 1 if cell_pixels >= 3 else 0
        cell[margin:cell_pixels - margin, margin:cell_pixels - margin] = AGENT
    return cell


def render(grid: np.ndarray, position, cell_pixels: int = 4) -> np.ndarray:
    """The (n p, n p, 3) uint8 RGB image of `grid` with the agent at `position` (row, col);
    `position=None` draws no agent."""
    check_positive_int(cell_pixels, name="cell_pixels", minimum=2)
    grid = np.asarray(grid)
    p = cell_pixels
    image = PALETTE[grid].repeat(p, 0).repeat(p, 1)
    if position is not None:
        r, c = (int(v) for v in position)
        image[r * p:(r + 1) * p, c * p:(c + 1) * p] = cell_template(grid[r, c], True, p)
    return image


def class_templates(cell_pixels: int) -> np.ndarray:
    """(8, p, p, 3) uint8: class k is kind k % 4, with the agent when k >= 4."""
    return np.stack([cell_template(k % 4, k >= 4, cell_pixels) for k in range(N_CLASSES)])


def cell_classes(images, cell_pixels: int) -> torch.Tensor:
    """The class of every cell of images (..., 3, H, W) (uint8 or float on the 0..255 scale;
    any device) -> (..., n, n) int64: the nearest class template (squared error)."""
    images = torch.as_tensor(images)
    p = cell_pixels
    *lead, channels, height, width = images.shape
    if channels != 3 or height % p or width % p:
        raise ValueError(f"images must be (..., 3, H, W) with H and W multiples of cell_pixels "
                         f"({p}), got shape {tuple(images.shape)}")
    n_r, n_c = height // p, width // p
    x = images.float().reshape(-1, 3, n_r, p, n_c, p).permute(0, 2, 4, 1, 3, 5)
    x = x.reshape(-1, n_r, n_c, 3 * p * p)
    templates = torch.as_tensor(class_templates(p), device=x.device).float()
    templates = templates.permute(0, 3, 1, 2).reshape(N_CLASSES, -1)
    distances = (x.unsqueeze(-2) - templates).square().sum(-1)  # (N, n_r, n_c, 8)
    return distances.argmin(-1).reshape(*lead, n_r, n_c)


def agent_cells(classes: torch.Tensor) -> torch.Tensor:
    """(..., n, n) cell classes -> (..., 2) the agent's (row, col), or (-1, -1) where the image
    shows no agent or more than one."""
    has_agent = classes >= len(KINDS)
    n_c = classes.shape[-1]
    flat = has_agent.flatten(-2)
    index = flat.float().argmax(-1)
    one = flat.sum(-1) == 1
    cells = torch.stack([index // n_c, index % n_c], -1)
    return torch.where(one.unsqueeze(-1), cells, torch.full_like(cells, -1))


@dataclass(frozen=True, kw_only=True)
class GridWorldSpec:
    """What puzzles a stream draws: grid `size`, `n_moves`, `hole_probability`, `cell_pixels`
    and whether the three outcomes are drawn equally often (`balanced`)."""

    size: int = 4
    n_moves: int = 6
    hole_probability: float = 0.25
    cell_pixels: int = 4
    balanced: bool = True

    def __post_init__(self):
        check_positive_int(self.size, name="grid_size", minimum=2)
        check_positive_int(self.n_moves, name="grid_moves")
        check_positive_int(self.cell_pixels, name="cell_pixels", minimum=2)
        if isinstance(self.hole_probability, bool) or not (
                isinstance(self.hole_probability, (int, float))
                and 0 <= self.hole_probability < 1):
            raise ValueError(f"hole_probability must be in [0, 1), got "
                             f"{self.hole_probability!r}")

    @property
    def image_size(self) -> int:
        """Pixels of an image's side (size x cell_pixels)."""
        return self.size * self.cell_pixels


def simulate_many(grid: np.ndarray, start: np.ndarray, moves: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """`simulate` for M puzzles at once: grid (M, n, n), start (M, 2), moves (M, L) ->
    (paths (M, L + 1, 2), outcomes (M,) as indices into OUTCOMES)."""
    m, n = grid.shape[0], grid.shape[1]
    rows = np.arange(m)
    position = np.asarray(start, dtype=np.int64).copy()
    alive = np.ones(m, dtype=bool)
    outcome = np.full(m, OUTCOMES.index("safe"))
    path = [position.copy()]
    for i in range(moves.shape[1]):
        moved = np.clip(position + DELTAS[moves[:, i]], 0, n - 1)  # walls keep it in
        position = np.where(alive[:, None], moved, position)
        kind = grid[rows, position[:, 0], position[:, 1]]
        fell, won = alive & (kind == HOLE), alive & (kind == GOAL)
        outcome[fell], outcome[won] = OUTCOMES.index("fall"), OUTCOMES.index("goal")
        alive &= ~(fell | won)
        path.append(position.copy())
    return np.stack(path, 1), outcome


def render_many(grid: np.ndarray, paths: np.ndarray, cell_pixels: int) -> np.ndarray:
    """`render` of every state: grid (M, n, n), paths (M, S, 2) -> (M, S, n p, n p, 3) uint8."""
    m, n = grid.shape[:2]
    s, p = paths.shape[1], cell_pixels
    classes = np.broadcast_to(grid[:, None], (m, s, n, n)).copy()
    mi, si = np.meshgrid(np.arange(m), np.arange(s), indexing="ij")
    classes[mi, si, paths[..., 0], paths[..., 1]] += len(KINDS)  # the agent's cell
    cells = class_templates(p)[classes]  # (M, S, n, n, p, p, 3)
    return cells.transpose(0, 1, 2, 4, 3, 5, 6).reshape(m, s, n * p, n * p, 3)


def puzzle_batch(spec: GridWorldSpec, rng: np.random.Generator, batch_size: int) -> dict:
    """B puzzles as tensors: "frames" (B, S, 3, H, W) uint8 (every state of the trajectory),
    "moves" (B, L), "positions" (B, S, 2), "outcome" (B,) (index into OUTCOMES), "grid"
    (B, n, n), all int64 but the frames. Drawn as `random_puzzle` draws, vectorised; with
    `spec.balanced` the outcomes are as equal in number as B allows (by rejection)."""
    check_positive_int(batch_size, name="batch_size")
    n, cells = spec.size, spec.size * spec.size
    wanted = np.bincount(np.arange(batch_size) % len(OUTCOMES), minlength=len(OUTCOMES))
    chosen = {k: [] for k in range(len(OUTCOMES))}
    pools = []
    for _ in range(1000):
        m = 4 * batch_size
        grid = np.where(rng.random((m, n, n)) < spec.hole_probability, HOLE, ICE)
        start = rng.integers(0, cells, m)
        goal = (start + rng.integers(1, cells, m)) % cells  # distinct from the start
        flat = grid.reshape(m, cells)
        flat[np.arange(m), start], flat[np.arange(m), goal] = START, GOAL
        moves = rng.integers(0, len(MOVES), (m, spec.n_moves))
        start_rc = np.stack([start // n, start % n], 1)
        paths, outcomes = simulate_many(grid, start_rc, moves)
        pools.append((grid, moves, paths, outcomes))
        if not spec.balanced:
            break
        counts = np.bincount(np.concatenate([o for *_, o in pools]), minlength=len(OUTCOMES))
        if (counts >= wanted).all():
            break
    else:
        raise ValueError(f"could not draw a balanced batch (size={spec.size}, "
                         f"n_moves={spec.n_moves}, hole_probability={spec.hole_probability})")
    grid, moves, paths, outcomes = (np.concatenate(parts) for parts in zip(*pools, strict=True))
    if spec.balanced:
        for k in range(len(OUTCOMES)):
            chosen[k] = np.flatnonzero(outcomes == k)[:wanted[k]]
        keep = rng.permutation(np.concatenate(list(chosen.values())))
    else:
        keep = np.arange(batch_size)
    grid, moves, paths, outcomes = grid[keep], moves[keep], paths[keep], outcomes[keep]
    frames = render_many(grid, paths, spec.cell_pixels)
    return {"frames": torch.from_numpy(frames).permute(0, 1, 4, 2, 3).contiguous(),
            "moves": torch.from_numpy(moves.astype(np.int64)),
            "positions": torch.from_numpy(paths.astype(np.int64)),
            "outcome": torch.from_numpy(outcomes.astype(np.int64)),
            "grid": torch.from_numpy(grid.astype(np.int64))}


class GridWorldBatches:
    """An endless, resumable stream of `puzzle_batch` dicts: batch i is drawn from a generator
    seeded with (seed, i), so the stream's state is the number of batches drawn."""

    def __init__(self, spec: GridWorldSpec, *, batch_size: int, seed: int = 0):
        self.spec, self.batch_size, self.seed = spec, check_positive_int(
            batch_size, name="batch_size"), int(seed)
        self.drawn = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rng = np.random.default_rng((self.seed, self.drawn))
        self.drawn += 1
        return puzzle_batch(self.spec, rng, self.batch_size)

    def state_dict(self) -> dict:
        """The stream's position (for checkpoints)."""
        return {"drawn": self.drawn, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict`."""
        if state.get("batch_size") != self.batch_size or state.get("seed") != self.seed:
            raise ValueError(f"the checkpoint's grid-world stream ({state}) does not match this "
                             f"run's (seed {self.seed}, batch_size {self.batch_size})")
        self.drawn = int(state["drawn"])

    def count_tokens(self, batch: dict) -> int:
        """What the progress bar counts: states (images) in the batch."""
        return int(batch["frames"].shape[0] * batch["frames"].shape[1])


def image_strip(images, gap: int = 2, background: int = 255) -> np.ndarray:
    """Images (S, H, W, 3) or (S, 3, H, W) uint8 side by side with `gap` pixels between them
    -> (H, S W + (S - 1) gap, 3) uint8: one trajectory as one picture."""
    array = np.asarray(images.cpu() if isinstance(images, torch.Tensor) else images)
    if array.ndim != 4:
        raise ValueError(f"images must be (S, H, W, 3) or (S, 3, H, W), got shape {array.shape}")
    if array.shape[1] == 3 and array.shape[-1] != 3:
        array = array.transpose(0, 2, 3, 1)
    s, h, w, _ = array.shape
    strip = np.full((h, s * w + (s - 1) * gap, 3), background, np.uint8)
    for i, image in enumerate(array):
        strip[:, i * (w + gap):i * (w + gap) + w] = image
    return strip


def write_strips(directory, truth, imagined, *, limit: int | None = None,
                 prefix: str = "puzzle") -> list:
    """Write one PNG per puzzle into `directory` (created if missing): the top row the true
    trajectory truth[i] (S, 3, H, W), the row below what the model imagined, imagined[i]
    (n, 3, H, W) uint8 (the prompt's first image, then its generated images; a white frame
    where it generated fewer). Returns the paths written (at most `limit`)."""
    from pathlib import Path

    from cerebrum._util.png import write_png

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    count = len(truth) if limit is None else min(limit, len(truth))
    for i in range(count):
        top = np.asarray(truth[i].cpu() if isinstance(truth[i], torch.Tensor) else truth[i])
        bottom = np.full_like(top, 255)
        guess = np.asarray(imagined[i].cpu() if isinstance(imagined[i], torch.Tensor)
                           else imagined[i])[:len(top)]
        bottom[:len(guess)] = guess
        upper, lower = image_strip(top), image_strip(bottom)
        gap = np.full((2, upper.shape[1], 3), 255, np.uint8)
        paths.append(write_png(directory / f"{prefix}_{i:03d}.png",
                               np.concatenate([upper, gap, lower])))
    return paths
