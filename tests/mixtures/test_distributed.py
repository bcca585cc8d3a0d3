"""Distributed EM: two gloo processes on the CPU against one process on the concatenated data.

One spawn runs every scenario (process start-up dominates the cost); each rank pickles what it
fitted, and the tests compare rank 0 with rank 1 (identical parameters) and with a fit in this
process on all the data (the independent reference): from the same start, the parameters after
every iteration to float64 rounding; from scratch (k-means++ seeding, n_init=2, sample weights),
the final log-likelihood to float32 tolerance.
"""

from __future__ import annotations

import os
import pickle
import socket
import warnings
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cerebrum import Cerebrum, ConvergenceWarning, GaussianMixture, HiddenMarkov
from cerebrum.cli import main as cli_main
from cerebrum.mixtures.distributed import shard_bounds

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="needs torch.distributed with the gloo backend")

WORLD_SIZE = 2
COVARIANCE_TYPES = ("full", "diag", "tied", "spherical")
GMM_SPLIT = 200  # rank 0 holds rows [:200], rank 1 the other 250
HMM_LENGTHS = [40, 25, 60, 33, 51]
HMM_SPLIT = 2  # rank 0 holds the first two sequences (65 frames), rank 1 the other three
STEPS = 3  # iterations compared one by one


# ---------------------------------------------------------------------------- data and starts


def gmm_data():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 1.0, -2.0], [-3.0, 3.0, 1.0]])
    X = np.concatenate([c + rng.normal(scale=s, size=(150, 3))
                        for c, s in zip(centres, (0.6, 1.0, 0.8), strict=True)])
    X = X[rng.permutation(len(X))]
    return X, rng.uniform(0.5, 2.0, len(X))


def gmm_start(kind: str) -> GaussianMixture:
    """A deliberately poor start, the same in every process."""
    covariances = {"full": np.stack([np.eye(3) * v for v in (1.0, 2.0, 3.0)]),
                   "diag": np.array([[1.0] * 3, [2.0] * 3, [3.0] * 3]),
                   "tied": 2.0 * np.eye(3), "spherical": np.array([1.0, 2.0, 3.0])}[kind]
    return GaussianMixture.from_params([0.2, 0.3, 0.5], [[1.0, 0.0, 0.0], [2.0, 1.0, -1.0],
                                                         [-1.0, 1.0, 0.0]],
                                       covariances, kind, dtype=torch.float64)


def hmm_start() -> HiddenMarkov:
    return HiddenMarkov.from_params(
        [0.5, 0.3, 0.2], [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]],
        [[1.0], [1.0], [1.0]], [[[0.0, 0.0]], [[3.0, 3.0]], [[-3.0, 2.0]]],
        [[[1.0, 1.0]], [[0.5, 1.5]], [[1.0, 0.7]]], "diag", dtype=torch.float64)


def hmm_sequences():
    truth = hmm_start()
    return [truth.sample(n, random_state=i)[0] for i, n in enumerate(HMM_LENGTHS)]


def gmm_params(model):
    return [model.get_weights(), model.get_means(), model.get_variances()]


def hmm_params(model):
    return [model.get_startprob(), model.get_transmat(), model.get_weights(), model.get_means(),
            model.get_variances()]


def fit_steps(model, fit, params):
    """The parameters after each of STEPS single EM iterations from the model's own."""
    steps = []
    for _ in range(STEPS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fit(model)
        steps.append(params(model))
    return steps


def gmm_scratch(kind, X, weight):
    model = GaussianMixture(3, 3, kind).fit(X, sample_weight=weight, random_state=0, n_init=2)
    return model.lower_bound_, gmm_params(model)


def hmm_scratch(sequences):
    model = HiddenMarkov(3, 2).fit(sequences, max_iter=15, random_state=0)
    return model.lower_bound_, hmm_params(model)


def scenarios(rank: int, out_dir: str) -> dict:
    """Every distributed fit, as this rank sees it."""
    X, weight = gmm_data()
    mine = slice(0, GMM_SPLIT) if rank == 0 else slice(GMM_SPLIT, None)
    sequences = hmm_sequences()
    my_sequences = sequences[:HMM_SPLIT] if rank == 0 else sequences[HMM_SPLIT:]
    results = {}
    for kind in COVARIANCE_TYPES:
        results[f"gmm {kind} steps"] = fit_steps(
            gmm_start(kind), lambda m, kind=kind: m.fit(
                X[mine], sample_weight=weight[mine], init="current", max_iter=1, tol=0),
            gmm_params)
        results[f"gmm {kind} scratch"] = gmm_scratch(kind, X[mine], weight[mine])
    results["hmm steps"] = fit_steps(
        hmm_start(), lambda m: m.fit(my_sequences, init="current", max_iter=1, tol=0),
        hmm_params)
    results["hmm scratch"] = hmm_scratch(my_sequences)
    # rank 1 holds nothing at all
    results["gmm empty steps"] = fit_steps(
        gmm_start("diag"), lambda m: m.fit(X if rank == 0 else None, init="current",
                                           max_iter=1, tol=0), gmm_params)
    results["gmm empty scratch"] = gmm_scratch("diag", X if rank == 0 else np.zeros((0, 3)),
                                               weight if rank == 0 else np.zeros(0))
    results["hmm empty steps"] = fit_steps(
        hmm_start(), lambda m: m.fit(sequences if rank == 0 else [], init="current",
                                     max_iter=1, tol=0), hmm_params)
    results["hmm empty scratch"] = hmm_scratch(sequences if rank == 0 else [])
    # the command line: each rank reads its slice of the files, rank 0 writes the brain
    if rank == 0:
        np.save(os.path.join(out_dir, "gmm.npy"), X)
        np.save(os.path.join(out_dir, "hmm.npy"), np.concatenate(sequences))
    dist.barrier()
    for family in ("gmm", "hmm"):
        cli_main(cli_arguments(family, out_dir, "brain-distributed.cbm"))
    return results


def cli_arguments(family: str, out_dir: str, brain: str) -> list[str]:
    arguments = ["fit", family, os.path.join(out_dir, f"{family}.npy"), "-k", "3", "--seed", "0",
                 "--id", family, "-o", os.path.join(out_dir, brain)]
    if family == "hmm":
        arguments += ["--lengths", ",".join(map(str, HMM_LENGTHS)), "--max-iter", "15"]
    return arguments


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE,
                            timeout=timedelta(seconds=120))
    try:
        results = scenarios(rank, out_dir)
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as file:
        pickle.dump(results, file)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What rank 0 and rank 1 fitted, and the directory of the command line's files."""
    out_dir = str(tmp_path_factory.mktemp("distributed"))
    mp.spawn(_worker, args=(_free_port(), out_dir), nprocs=WORLD_SIZE, join=True)
    loaded = []
    for rank in range(WORLD_SIZE):
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "rb") as file:
            loaded.append(pickle.load(file))
    return loaded, out_dir


# ---------------------------------------------------------------------------- the comparisons


def assert_same_arrays(ours, reference, **tolerance):
    for got, expected in zip(ours, reference, strict=True):
        np.testing.assert_allclose(got, expected, **tolerance)


def assert_ranks_identical(ranks, key):
    (rank0, rank1), _ = ranks
    flat0 = pickle.dumps(rank0[key])
    assert flat0 == pickle.dumps(rank1[key]), f"{key}: the ranks ended with different results"


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_gmm_from_the_same_start_equals_one_process_iteration_by_iteration(ranks, kind):
    X, weight = gmm_data()
    reference = fit_steps(gmm_start(kind), lambda m: m.fit(
        X, sample_weight=weight, init="current", max_iter=1, tol=0), gmm_params)
    assert_ranks_identical(ranks, f"gmm {kind} steps")
    for ours, expected in zip(ranks[0][0][f"gmm {kind} steps"], reference, strict=True):
        assert_same_arrays(ours, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_gmm_from_scratch_reaches_the_one_process_log_likelihood(ranks, kind):
    X, weight = gmm_data()
    expected, _ = gmm_scratch(kind, X, weight)
    assert_ranks_identical(ranks, f"gmm {kind} scratch")
    lower_bound, _ = ranks[0][0][f"gmm {kind} scratch"]
    assert lower_bound == pytest.approx(expected, abs=1e-4)


def test_hmm_with_unequal_lengths_split_across_ranks_equals_one_process(ranks):
    sequences = hmm_sequences()
    reference = fit_steps(hmm_start(), lambda m: m.fit(
        sequences, init="current", max_iter=1, tol=0), hmm_params)
    assert_ranks_identical(ranks, "hmm steps")
    for ours, expected in zip(ranks[0][0]["hmm steps"], reference, strict=True):
        assert_same_arrays(ours, expected, rtol=1e-9, atol=1e-12)
    expected_bound, _ = hmm_scratch(sequences)
    assert_ranks_identical(ranks, "hmm scratch")
    lower_bound, _ = ranks[0][0]["hmm scratch"]
    assert lower_bound == pytest.approx(expected_bound, rel=1e-5)


def test_a_rank_with_an_empty_shard_takes_part_without_changing_the_fit(ranks):
    X, weight = gmm_data()
    sequences = hmm_sequences()
    for key, start, fit, params in [
        ("gmm empty steps", gmm_start("diag"), lambda m: m.fit(X, init="current", max_iter=1,
                                                                tol=0), gmm_params),
        ("hmm empty steps", hmm_start(), lambda m: m.fit(sequences, init="current",
                                                          max_iter=1, tol=0), hmm_params),
    ]:
        assert_ranks_identical(ranks, key)
        for ours, expected in zip(ranks[0][0][key], fit_steps(start, fit, params), strict=True):
            assert_same_arrays(ours, expected, rtol=1e-9, atol=1e-12)
    assert_ranks_identical(ranks, "gmm empty scratch")
    assert ranks[0][0]["gmm empty scratch"][0] == pytest.approx(
        gmm_scratch("diag", X, weight)[0], abs=1e-4)
    assert_ranks_identical(ranks, "hmm empty scratch")
    assert ranks[0][0]["hmm empty scratch"][0] == pytest.approx(
        hmm_scratch(sequences)[0], rel=1e-5)


def test_cerebrum_fit_under_several_processes_writes_the_one_process_model(ranks):
    _, out_dir = ranks
    for family in ("gmm", "hmm"):
        assert cli_main(cli_arguments(family, out_dir, "brain-single.cbm")) == 0
    distributed = Cerebrum.load(os.path.join(out_dir, "brain-distributed.cbm"))
    single = Cerebrum.load(os.path.join(out_dir, "brain-single.cbm"))
    X = np.load(os.path.join(out_dir, "gmm.npy"))
    frames = np.load(os.path.join(out_dir, "hmm.npy"))
    assert distributed.score("gmm", X) == pytest.approx(single.score("gmm", X), abs=1e-4)
    assert distributed.score("hmm", frames, lengths=HMM_LENGTHS) == pytest.approx(
        single.score("hmm", frames, lengths=HMM_LENGTHS), rel=1e-5)


def test_distributed_true_without_a_process_group_says_what_is_missing():
    with pytest.raises(ValueError, match="distributed=True needs an initialised"):
        GaussianMixture(2, 2).fit(np.zeros((4, 2)), distributed=True)
    with pytest.raises(ValueError, match="distributed=True needs an initialised"):
        HiddenMarkov(2, 2).fit(np.zeros((4, 2)), distributed=True)


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_shards_cover_every_row_once_and_never_cut_a_sequence(world_size):
    lengths = [40, 25, 60, 33, 51]
    rows, pieces = 0, []
    for rank in range(world_size):
        start, stop, mine = shard_bounds(sum(lengths), lengths, rank, world_size)
        assert start == rows and stop - start == sum(mine)  # contiguous, in order
        rows, pieces = stop, pieces + mine
    assert rows == sum(lengths) and pieces == lengths
    plain = [shard_bounds(10, None, rank, world_size)[:2] for rank in range(world_size)]
    assert [start for start, _ in plain[1:]] == [stop for _, stop in plain[:-1]]
    assert plain[0][0] == 0 and plain[-1][1] == 10
    assert max(b - a for a, b in plain) - min(b - a for a, b in plain) <= 1  # balanced
    with pytest.raises(ValueError, match="lengths sum to 209, but the data have 200 rows"):
        shard_bounds(200, lengths, 0, world_size)
