"""The grid-world puzzles: the simulator on hand cases, the vectorised batch against the
single-puzzle functions, rendering read back, the stream's determinism and resumption, PNG
strips, clear errors."""

import numpy as np
import pytest
import torch

from cerebrum._util.png import encode_png, read_png, write_png
from cerebrum.data.gridworld import (
    GOAL,
    HOLE,
    ICE,
    MOVES,
    N_CLASSES,
    OUTCOMES,
    START,
    GridWorldBatches,
    GridWorldSpec,
    agent_cells,
    cell_classes,
    class_templates,
    image_strip,
    puzzle_batch,
    random_puzzle,
    render,
    simulate,
    write_strips,
)

U, D, L, R = (MOVES.index(m) for m in "UDLR")
#   S . .
#   . H .
#   . . G
GRID = np.array([[START, ICE, ICE], [ICE, HOLE, ICE], [ICE, ICE, GOAL]])


def test_walls_keep_the_agent_in():
    path, outcome = simulate(GRID, (0, 0), [U, L, U, R, R, R, U])
    assert path.tolist() == [[0, 0], [0, 0], [0, 0], [0, 0], [0, 1], [0, 2], [0, 2], [0, 2]]
    assert outcome == "safe"


def test_a_hole_ends_the_episode_and_holds_the_agent():
    path, outcome = simulate(GRID, (0, 0), [R, D, R, R])  # into the hole at (1, 1)
    assert outcome == "fall"
    assert path.tolist() == [[0, 0], [0, 1], [1, 1], [1, 1], [1, 1]]


def test_the_goal_ends_the_episode():
    path, outcome = simulate(GRID, (0, 0), [R, R, D, D, L, U])
    assert outcome == "goal"
    assert path[-1].tolist() == [2, 2] and path[4:].tolist() == [[2, 2]] * 3


def test_the_vectorised_batch_agrees_with_simulate_and_render():
    spec = GridWorldSpec(size=4, n_moves=5, cell_pixels=3)
    batch = puzzle_batch(spec, np.random.default_rng(0), 12)
    assert batch["frames"].shape == (12, 6, 3, 12, 12) and batch["frames"].dtype == torch.uint8
    assert torch.bincount(batch["outcome"], minlength=3).tolist() == [4, 4, 4]  # balanced
    for i in range(12):
        grid = batch["grid"][i].numpy()
        path, outcome = simulate(grid, batch["positions"][i, 0].numpy(),
                                 batch["moves"][i].numpy())
        assert np.array_equal(path, batch["positions"][i].numpy())
        assert OUTCOMES[int(batch["outcome"][i])] == outcome
        for s, cell in enumerate(path):
            image = batch["frames"][i, s].permute(1, 2, 0).numpy()
            assert np.array_equal(image, render(grid, cell, 3))


def test_cells_are_read_back_from_images():
    rng = np.random.default_rng(1)
    puzzle = random_puzzle(rng, size=5, n_moves=3)
    image = torch.from_numpy(render(puzzle.grid, (2, 3), 4)).permute(2, 0, 1)
    classes = cell_classes(image, 4)
    expected = torch.from_numpy(puzzle.grid.copy())
    expected[2, 3] += 4
    assert torch.equal(classes, expected)
    assert agent_cells(classes).tolist() == [2, 3]
    assert agent_cells(torch.from_numpy(puzzle.grid)).tolist() == [-1, -1]  # no agent
    templates = class_templates(4)
    assert len({t.tobytes() for t in templates}) == N_CLASSES  # every class looks different


def test_random_puzzle_gives_the_asked_outcome():
    rng = np.random.default_rng(2)
    for outcome in OUTCOMES:
        puzzle = random_puzzle(rng, size=4, n_moves=6, outcome=outcome)
        assert simulate(puzzle.grid, puzzle.start, puzzle.moves)[1] == outcome
        assert (puzzle.grid == START).sum() == 1 and (puzzle.grid == GOAL).sum() == 1


def test_the_stream_is_deterministic_and_resumes():
    spec = GridWorldSpec(size=3, n_moves=2)
    a = GridWorldBatches(spec, batch_size=3, seed=5)
    first, second = next(a), next(a)
    b = GridWorldBatches(spec, batch_size=3, seed=5)
    b.load_state_dict({"drawn": 1, "seed": 5, "batch_size": 3})
    assert torch.equal(next(b)["frames"], second["frames"])
    assert not torch.equal(first["frames"], second["frames"])
    with pytest.raises(ValueError, match="does not match"):
        b.load_state_dict({"drawn": 1, "seed": 6, "batch_size": 3})


def test_png_round_trip_and_strips(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    write_png(tmp_path / "x.png", image)
    assert np.array_equal(read_png(tmp_path / "x.png"), image)
    assert encode_png(image).startswith(b"\x89PNG\r\n\x1a\n")
    frames = torch.zeros(2, 4, 3, 6, 6, dtype=torch.uint8)
    strip = image_strip(frames[0], gap=1)
    assert strip.shape == (6, 4 * 6 + 3, 3)
    paths = write_strips(tmp_path / "strips", frames, [frames[0, :2], frames[1, :4]])
    assert len(paths) == 2 and read_png(paths[0]).shape == (6 + 2 + 6, 4 * 6 + 3 * 2, 3)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: simulate(GRID, (3, 0), [U]), "start must be a cell"),
    (lambda: simulate(GRID, (0, 0), [4]), "moves must be indices"),
    (lambda: random_puzzle(np.random.default_rng(0), hole_probability=1.0), "hole_probability"),
    (lambda: GridWorldSpec(size=1), "grid_size"),
    (lambda: cell_classes(torch.zeros(3, 10, 10), 4), "multiples of cell_pixels"),
    (lambda: encode_png(np.zeros((4, 4), np.uint8)), "image must be"),
    (lambda: puzzle_batch(GridWorldSpec(), np.random.default_rng(0), 0), "batch_size"),
])
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
