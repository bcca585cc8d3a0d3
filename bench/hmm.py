"""HiddenMarkov: Cerebrum against hmmlearn on fit (Baum-Welch), score and decode (Viterbi).

Same data, same initial parameters, a fixed number of EM iterations (tol=0), timed in one
process. Three cases (issue 4): a GaussianHMM-equivalent (S=6, D=8, diag) on 100 sequences x
1000 steps and on 1 sequence x 100000 steps, and a GMMHMM-equivalent (S=6, M=3, D=8, diag) on
100 x 1000. Prints a ratio table (hmmlearn seconds / Cerebrum seconds) or, with --json, JSON.

    python bench/hmm.py
    python bench/hmm.py --json --cases gaussian-batch

hmmlearn runs in float64 (its only precision); Cerebrum in --dtype (float32 by default). The
GaussianHMM runs use covars_prior=0 so that hmmlearn's M step is the plain maximum-likelihood
one, like ours, and the fitted log-likelihoods can be compared. hmmlearn's GMMHMM takes the
covariance update about the previous means (see docs/hidden-markov.md), so its fitted
likelihood differs from exact EM; its score and decode are compared from identical parameters.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings

import numpy as np
import torch

from cerebrum import ConvergenceWarning, HiddenMarkov

CASES = {
    # name: (n_states, n_mix, n_features, n_sequences, n_steps)
    "gaussian-batch": (6, 1, 8, 100, 1000),
    "gaussian-long": (6, 1, 8, 1, 100_000),
    "gmm-batch": (6, 3, 8, 100, 1000),
}


def make_problem(n_states, n_mix, n_features, n_sequences, n_steps, seed):
    """Data sampled from a random sticky HMM, and a different random starting model."""
    rng = np.random.default_rng(seed)

    def random_model(scale):
        startprob = rng.dirichlet(np.ones(n_states))
        transmat = rng.dirichlet(np.ones(n_states), size=n_states) + 4 * np.eye(n_states)
        transmat /= transmat.sum(1, keepdims=True)
        weights = rng.dirichlet(np.ones(n_mix) * 2, size=n_states)
        means = rng.normal(scale=scale, size=(n_states, n_mix, n_features))
        covariances = rng.uniform(0.5, 2.0, size=(n_states, n_mix, n_features))
        return startprob, transmat, weights, means, covariances

    truth = HiddenMarkov.from_params(*random_model(3.0), covariance_type="diag",
                                     dtype=torch.float64)
    X, _ = truth.sample(n_steps, n_sequences, random_state=seed)
    X = X.reshape(-1, n_features)
    start = random_model(1.0)
    # start near the data: means on random frames, variances of the data
    start[3][:] = X[rng.choice(len(X), n_states * n_mix, replace=False)].reshape(start[3].shape)
    start[4][:] = X.var(0)
    return X, [n_steps] * n_sequences, start


def best_time(fn, repeat):
    times, result = [], None
    for _ in range(repeat):
        begin = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - begin)
    return min(times), result


def hmmlearn_model(params, n_iter):
    from hmmlearn import hmm

    startprob, transmat, weights, means, covariances = params
    n_states, n_mix = weights.shape
    if n_mix == 1:
        model = hmm.GaussianHMM(n_components=n_states, covariance_type="diag", n_iter=n_iter,
                                tol=0.0, init_params="", covars_prior=0.0)
        model.means_, model.covars_ = means[:, 0], covariances[:, 0]
    else:
        model = hmm.GMMHMM(n_components=n_states, n_mix=n_mix, covariance_type="diag",
                           n_iter=n_iter, tol=0.0, init_params="")
        model.weights_, model.means_, model.covars_ = weights, means, covariances
    model.startprob_, model.transmat_ = startprob, transmat
    return model


def run_case(name, n_iter, repeat, dtype, seed, device=None):
    X, lengths, params = make_problem(*CASES[name], seed)
    X_ours = X.astype(np.float32 if dtype == torch.float32 else np.float64)

    def ours():
        return HiddenMarkov.from_params(*params, covariance_type="diag", dtype=dtype,
                                        device=device)

    def fit_ours():
        return ours().fit(X_ours, lengths, init="current", max_iter=n_iter, tol=0.0)

    def fit_ref():
        return hmmlearn_model(params, n_iter).fit(X, lengths)

    fit_ours()  # warm-up
    row = {"case": name, "n_frames": len(X)}
    row["fit_cerebrum_s"], fitted = best_time(fit_ours, repeat)
    row["fit_hmmlearn_s"], fitted_ref = best_time(fit_ref, 1 if repeat > 1 else repeat)
    row["fit_ll_cerebrum"] = fitted.history_[-1]
    row["fit_ll_hmmlearn"] = float(fitted_ref.monitor_.history[-1])
    start_model, start_ref = ours(), hmmlearn_model(params, n_iter)
    row["score_cerebrum_s"], score = best_time(lambda: start_model.score(X_ours, lengths), repeat)
    row["score_hmmlearn_s"], score_ref = best_time(lambda: start_ref.score(X, lengths), repeat)
    row["decode_cerebrum_s"], decoded = best_time(lambda: start_model.decode(X_ours, lengths),
                                                  repeat)
    row["decode_hmmlearn_s"], decoded_ref = best_time(lambda: start_ref.decode(X, lengths), repeat)
    row["score_rel_diff"] = abs(score - score_ref) / abs(score_ref)
    row["fit_ll_rel_diff"] = abs(row["fit_ll_cerebrum"] - row["fit_ll_hmmlearn"]) / abs(
        row["fit_ll_hmmlearn"]
    )
    row["viterbi_logprob_rel_diff"] = abs(decoded[0] - decoded_ref[0]) / abs(decoded_ref[0])
    row["viterbi_states_agree"] = float(np.mean(decoded[1] == decoded_ref[1]))
    for verb in ("fit", "score", "decode"):
        row[f"{verb}_speedup"] = row[f"{verb}_hmmlearn_s"] / row[f"{verb}_cerebrum_s"]
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--n-iter", type=int, default=10)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--device", default=None, help="Cerebrum's device (default: CPU)")
    args = parser.parse_args(argv)

    warnings.simplefilter("ignore", ConvergenceWarning)
    import logging

    logging.getLogger("hmmlearn").setLevel(logging.ERROR)
    dtype = getattr(torch, args.dtype)
    rows = [run_case(name, args.n_iter, args.repeat, dtype, args.seed, args.device)
            for name in args.cases]
    meta = {
        "n_iter": args.n_iter, "dtype": args.dtype, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
        "device": str(args.device or "cpu"),
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
        return
    print(f"HiddenMarkov vs hmmlearn, {args.n_iter} EM iterations, {args.dtype}, "
          f"torch threads={meta['torch_threads']}, device={meta['device']}")
    print(f"{'case':<15} {'verb':<7} {'cerebrum s':>10} {'hmmlearn s':>11} {'ratio':>7}")
    for row in rows:
        for verb in ("fit", "score", "decode"):
            print(f"{row['case']:<15} {verb:<7} {row[f'{verb}_cerebrum_s']:>10.3f} "
                  f"{row[f'{verb}_hmmlearn_s']:>11.3f} {row[f'{verb}_speedup']:>6.1f}x")
        print(f"{'':<15} log-likelihood rel. diff: fit {row['fit_ll_rel_diff']:.1e}, "
              f"score {row['score_rel_diff']:.1e}, Viterbi {row['viterbi_logprob_rel_diff']:.1e}"
              f" (states agree {100 * row['viterbi_states_agree']:.2f}%)")


if __name__ == "__main__":
    main()
