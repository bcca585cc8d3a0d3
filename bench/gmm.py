"""GaussianMixture EM: Cerebrum against scikit-learn (and pomegranate when installed).

Same data, same initial parameters, a fixed number of EM iterations (tol=0) for every library,
timed in one process, Cerebrum and scikit-learn taking turns (best of --repeat each). Prints a
ratio table (competitor seconds / Cerebrum seconds) and, with --json, the same as JSON.

    python bench/gmm.py                 # N=200000, D=16, K=8, 20 iterations, float32
    python bench/gmm.py --json --types diag full
    python bench/gmm.py --device cuda   # Cerebrum on the GPU (data passed as NumPy: the
                                        # host-to-device copy is inside the timing)
    python bench/gmm.py --starts kmeans++ random   # both starting points (default: k-means++)

Starting points (`--starts`): "kmeans++" takes the means from scikit-learn's k-means++ seeding,
"random" from distinct random samples (scikit-learn's init_params="random_from_data"); both
start from the data's covariance and uniform weights, and both libraries get the same start.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time
import warnings

import numpy as np
import torch

from cerebrum import ConvergenceWarning, GaussianMixture


def make_data(n_samples: int, n_features: int, n_components: int, seed: int):
    """A well-mixed synthetic mixture with unequal, correlated components."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(n_components, n_features))
    mixing = rng.normal(size=(n_components, n_features, n_features)) / np.sqrt(n_features)
    labels = rng.integers(n_components, size=n_samples)
    noise = rng.normal(size=(n_samples, n_features))
    return centres[labels] + np.einsum("nd,nde->ne", noise, mixing[labels]) + noise * 0.3


def initial_params(X: np.ndarray, n_components: int, covariance_type: str, seed: int,
                   start: str = "kmeans++"):
    """Means from scikit-learn's k-means++ seeding ("kmeans++") or from distinct random samples
    ("random"), covariances from the data, uniform weights.

    Means at plain random samples can put two means in one cluster; EM then starves a component
    down to few samples, its covariance turns ill-conditioned and the likelihood is dominated by
    that component, where float32 and float64 may disagree in the 4th digit. k-means++ seeds
    avoid comparing on that; the random start shows what happens without them.
    """
    if start == "kmeans++":
        from sklearn.cluster import kmeans_plusplus

        means, _ = kmeans_plusplus(X, n_components, random_state=seed)
    elif start == "random":
        rng = np.random.default_rng(seed)
        means = X[rng.choice(len(X), n_components, replace=False)]
    else:
        raise ValueError(f"start must be 'kmeans++' or 'random', got {start!r}")
    weights = np.full(n_components, 1.0 / n_components)
    variance = X.var(0)
    covariance = np.cov(X.T)
    covariances = {
        "full": np.repeat(covariance[None], n_components, 0),
        "tied": covariance,
        "diag": np.repeat(variance[None], n_components, 0),
        "spherical": np.full(n_components, variance.mean()),
    }[covariance_type]
    return weights, means, covariances


def precisions(covariances, covariance_type):
    if covariance_type in ("diag", "spherical"):
        return 1.0 / covariances
    return np.linalg.inv(covariances)


def best_time(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def best_times_interleaved(fns, repeat: int):
    """[(best seconds, last result)] for each of `fns`, run in turns (a, b, a, b, ...): this
    VM's speed drifts by up to 1.5x over tens of seconds, and taking turns exposes every
    library to the same drift instead of giving one a slow phase."""
    times = [[] for _ in fns]
    results = [None] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            results[i] = fn()
            times[i].append(time.perf_counter() - start)
    return [(min(t), r) for t, r in zip(times, results, strict=True)]


def run_cerebrum(X, params, covariance_type, n_iter, dtype, device=None):
    def fit():
        gm = GaussianMixture.from_params(*params, covariance_type=covariance_type, dtype=dtype,
                                         device=device)
        gm.fit(X, init="current", max_iter=n_iter, tol=0.0)
        return gm  # fit reads its log-likelihood every iteration: the device is in sync

    return fit


def run_sklearn(X, params, covariance_type, n_iter):
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    weights, means, covariances = params

    def fit():
        return SkGaussianMixture(
            len(weights), covariance_type=covariance_type, max_iter=n_iter, tol=0.0,
            init_params="random_from_data", weights_init=weights, means_init=means,
            precisions_init=precisions(covariances, covariance_type), random_state=0,
        ).fit(X)

    return fit


def run_pomegranate(X, params, covariance_type, n_iter):
    from pomegranate.distributions import Normal
    from pomegranate.gmm import GeneralMixtureModel

    weights, means, covariances = params
    kind = {"full": "full", "diag": "diag", "spherical": "sphere"}.get(covariance_type)
    if kind is None:
        return None
    tensor = torch.as_tensor(X, dtype=torch.float32)

    def fit():
        def covs(k):
            if kind == "sphere":  # pomegranate wants one value per feature
                return np.full(means.shape[1], covariances[k])
            return covariances[k]

        dists = [
            Normal(means=torch.as_tensor(means[k], dtype=torch.float32),
                   covs=torch.as_tensor(covs(k), dtype=torch.float32),
                   covariance_type=kind)
            for k in range(len(weights))
        ]
        model = GeneralMixtureModel(dists, priors=torch.as_tensor(weights, dtype=torch.float32),
                                    max_iter=n_iter, tol=0.0, init="first-k")
        return model.fit(tensor)

    return fit


def compare(X, X_lib, params, covariance_type, start, args, dtype, has_pomegranate) -> dict:
    """One row of the table: Cerebrum and the competitors from the same start."""
    fit = run_cerebrum(X_lib, params, covariance_type, args.n_iter, dtype, args.device)
    fit()  # warm-up: first-call allocations and kernel selection
    (ours_s, ours), (sk_s, sk) = best_times_interleaved(
        [fit, run_sklearn(X, params, covariance_type, args.n_iter)], args.repeat
    )
    ours_ll = ours.score(X_lib)
    row = {"covariance_type": covariance_type, "start": start, "cerebrum_s": ours_s,
           "cerebrum_ll": ours_ll}
    row.update(sklearn_s=sk_s, sklearn_ll=float(sk.score(X)))
    row["speedup_vs_sklearn"] = sk_s / ours_s
    row["ll_rel_diff_vs_sklearn"] = abs(ours_ll - row["sklearn_ll"]) / abs(row["sklearn_ll"])
    if has_pomegranate:
        fit_pg = run_pomegranate(X, params, covariance_type, args.n_iter)
        if fit_pg is not None:
            pg_s, _ = best_time(fit_pg, 1)
            row.update(pomegranate_s=pg_s, speedup_vs_pomegranate=pg_s / ours_s)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=200_000)
    parser.add_argument("--n-features", type=int, default=16)
    parser.add_argument("--n-components", type=int, default=8)
    parser.add_argument("--n-iter", type=int, default=20)
    parser.add_argument("--types", nargs="+", default=["diag", "full", "tied", "spherical"])
    parser.add_argument("--starts", nargs="+", choices=["kmeans++", "random"],
                        default=["kmeans++"], help="starting points to run (see above)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--device", default=None, help="Cerebrum's device (default: CPU)")
    args = parser.parse_args(argv)

    dtype = getattr(torch, args.dtype)
    X = make_data(args.n_samples, args.n_features, args.n_components, args.seed)
    X_lib = X.astype(args.dtype)
    has_pomegranate = importlib.util.find_spec("pomegranate") is not None
    rows = []
    warnings.simplefilter("ignore", ConvergenceWarning)
    warnings.filterwarnings("ignore", message=".*did not converge.*")
    for start in args.starts:
        for covariance_type in args.types:
            params = initial_params(X, args.n_components, covariance_type, args.seed, start)
            rows.append(compare(X, X_lib, params, covariance_type, start, args, dtype,
                                has_pomegranate))

    meta = {
        "n_samples": args.n_samples, "n_features": args.n_features,
        "n_components": args.n_components, "n_iter": args.n_iter, "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "device": str(args.device or "cpu"),
        "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
        return
    print(
        f"GaussianMixture EM, N={args.n_samples} D={args.n_features} K={args.n_components}, "
        f"{args.n_iter} iterations, {args.dtype}, torch threads={meta['torch_threads']}, "
        f"device={meta['device']}"
    )
    header = (f"{'type':<10} {'start':<9} {'cerebrum s':>11} {'sklearn s':>10} {'ratio':>7} "
              f"{'ll rel diff':>12}")
    if has_pomegranate:
        header += f" {'pomegranate s':>14} {'ratio':>7}"
    print(header)
    for row in rows:
        line = (
            f"{row['covariance_type']:<10} {row['start']:<9} {row['cerebrum_s']:>11.3f} "
            f"{row['sklearn_s']:>10.3f} "
            f"{row['speedup_vs_sklearn']:>6.1f}x {row['ll_rel_diff_vs_sklearn']:>12.2e}"
        )
        if "pomegranate_s" in row:
            line += f" {row['pomegranate_s']:>14.3f} {row['speedup_vs_pomegranate']:>6.1f}x"
        print(line)


if __name__ == "__main__":
    main()
