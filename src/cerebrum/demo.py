"""`cerebrum demo`: the library's main jobs on real data that ships with scikit-learn.

Part 1 (Gaussian mixtures): the 1,797 8x8 handwritten digits of scikit-learn's `load_digits`,
clustered by GaussianMixture for a range of K; the number of components is chosen by BIC and the
clusters are compared with the true digit labels (adjusted Rand index).

Part 2 (identification by likelihood, seed 001's "which speaker said this"): each digit read as
a sequence of 8 rows of 8 pixels; one HiddenMarkov per class in a Cerebrum, held-out digits
classified with `Cerebrum.classify`. Next to it: the same per-class scheme with hmmlearn (when
installed) and with a per-class GaussianMixture on the flat 64-pixel vectors. The HMMs' compiled
kernels are compiled (or loaded from numba's cache) before the clock starts, and that one-time
cost is reported on its own line rather than in the first fit's time.
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import torch

from cerebrum.brain import Cerebrum
from cerebrum.exceptions import ConvergenceWarning
from cerebrum.mixtures import GaussianMixture, _hmm_compiled

#: The dtypes the demo's models compute in (the default, float32): the only kernels to warm up.
DEMO_DTYPES = (torch.float32,)
#: Part 2: HMM states per class and mixture components per state.
DIGIT_STATES, DIGIT_MIX = 6, 2
#: Part 2, the side-by-side with hmmlearn: its GaussianHMM fits these digits with 4 states; with
#: 6 it returned NaN start probabilities, and its GMMHMM took 5 minutes and NaN for every class.
HMMLEARN_STATES = 4
#: Part 2: Gaussian-mixture components per class on the flat vectors.
DIGIT_GMM_COMPONENTS = 4

#: Pixel intensities run from 0 to 16; a variance floor of 0.1 keeps the always-blank border
#: pixels from dominating the likelihood with near-zero variances.
DIGITS_REG_COVAR = 0.1


def _load_digits():
    try:
        from sklearn.datasets import load_digits
        from sklearn.metrics import adjusted_rand_score
    except ImportError as err:
        raise RuntimeError(
            "the demo uses scikit-learn's bundled digits: pip install 'cerebrum[sklearn]'"
        ) from err
    digits = load_digits()
    return digits.data.astype(np.float64), digits.target, adjusted_rand_score


def gmm_model_selection(
    components=(5, 10, 20, 30, 40, 50),
    covariance_types=("diag", "full"),
    random_state: int = 0,
):
    """Fit a GaussianMixture per (covariance type, K) on the digits; return result rows."""
    X, labels, adjusted_rand_score = _load_digits()
    rows = []
    for covariance_type in covariance_types:
        for n_components in components:
            model = GaussianMixture(
                n_components, X.shape[1], covariance_type, dtype=torch.float64
            )
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(X, reg_covar=DIGITS_REG_COVAR, n_init=2, random_state=random_state)
            seconds = time.perf_counter() - start
            rows.append({
                "covariance_type": covariance_type,
                "n_components": n_components,
                "bic": model.bic(X),
                "log_likelihood": model.score(X),
                "ari": adjusted_rand_score(labels, model.predict(X)),
                "converged": model.converged_,
                "seconds": seconds,
            })
    return rows


def format_selection_table(rows) -> str:
    """A readable table, best BIC per covariance type marked with '*'."""
    best = {}
    for row in rows:
        kind = row["covariance_type"]
        if kind not in best or row["bic"] < best[kind]["bic"]:
            best[kind] = row
    lines = [
        f"{'covariance':<10} {'K':>3} {'BIC':>12} {'log-lik/sample':>15} {'ARI vs labels':>14} "
        f"{'fit s':>7}",
    ]
    for row in rows:
        mark = "*" if best[row["covariance_type"]] is row else " "
        lines.append(
            f"{row['covariance_type']:<10} {row['n_components']:>3} {row['bic']:>12.0f} "
            f"{row['log_likelihood']:>15.2f} {row['ari']:>14.3f} {row['seconds']:>7.2f} {mark}"
        )
    lines.append("* lowest BIC for that covariance type (the model BIC selects)")
    return "\n".join(lines)


def warm_up_hmm_kernels() -> str:
    """Compile, or load from numba's cache, the HiddenMarkov CPU kernels; a line saying which,
    how long it took and where the cache is. Timed fits after this pay no compilation."""
    if not _hmm_compiled.ENABLED:
        return ("compiled HMM kernels off (CEREBRUM_COMPILED_HMM=0 or no numba), so the PyTorch "
                "recursions run")
    result = _hmm_compiled.warm_up(dtypes=DEMO_DTYPES)
    if result.compiled:
        how = f"compiled the HMM kernels in {result.seconds:.1f} s, not counted below"
        if not result.cache_dir:
            return f"{how} (no writable cache directory: every process compiles them again)"
        total = result.compiled + result.loaded
        partly = f"; {result.loaded} of {total} loaded" if result.loaded else ""
        return f"{how} (once per install{partly}; cached in {result.cache_dir})"
    if result.loaded:
        return (f"loaded the compiled HMM kernels from numba's cache in {result.seconds:.1f} s, "
                f"not counted below ({result.cache_dir})")
    return "the HMM kernels were already compiled in this process"


def identification(random_state: int = 0):
    """Per-class models on 70% of the digits, accuracy on the held-out 30%: result rows. Fit
    times exclude the one-time compilation of the HMM kernels (`warm_up_hmm_kernels`)."""
    from sklearn.model_selection import train_test_split

    _hmm_compiled.warm_up(dtypes=DEMO_DTYPES)  # a no-op when run() has done it

    X, labels, _ = _load_digits()
    X_train, X_test, y_train, y_test = train_test_split(
        X, labels, test_size=0.3, random_state=random_state, stratify=labels)
    rows = []

    def add(name, fit_one, data_test):
        brain = Cerebrum()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for k in np.unique(y_train):
                fit_one(brain, k)
        seconds = time.perf_counter() - start
        predicted, _, _ = brain.classify(data_test)
        rows.append({"method": name, "accuracy": float(np.mean(predicted == y_test.astype(str))),
                     "seconds": seconds})

    def hmm(states, mix):
        return lambda brain, k: brain.fit_and_add(
            X_train[y_train == k].reshape(-1, 8, 8), "hmm", model_id=str(k),
            n_components=states, n_mix=mix, reg_covar=DIGITS_REG_COVAR,
            random_state=random_state)

    add(f"Cerebrum HiddenMarkov (S={HMMLEARN_STATES}) on rows", hmm(HMMLEARN_STATES, 1),
        X_test.reshape(-1, 8, 8))
    rows.extend(_hmmlearn_identification(X_train, y_train, X_test, y_test, random_state))
    add(f"Cerebrum HiddenMarkov (S={DIGIT_STATES}, M={DIGIT_MIX}) on rows",
        hmm(DIGIT_STATES, DIGIT_MIX), X_test.reshape(-1, 8, 8))
    add(f"Cerebrum GaussianMixture (K={DIGIT_GMM_COMPONENTS}) on 64 pixels",
        lambda brain, k: brain.fit_and_add(
            X_train[y_train == k], "gmm", model_id=str(k), n_components=DIGIT_GMM_COMPONENTS,
            reg_covar=DIGITS_REG_COVAR, random_state=random_state),
        X_test)
    return rows


def _hmmlearn_identification(X_train, y_train, X_test, y_test, random_state):
    """hmmlearn's GaussianHMM in the same scheme (min_covar plays reg_covar's part); [] when
    hmmlearn is not installed. A class model that cannot score (NaN parameters after a
    degenerate fit) gives -inf for its class."""
    try:
        from hmmlearn import hmm
    except ImportError:
        return []
    logging.getLogger("hmmlearn").setLevel(logging.ERROR)
    models, failed = {}, []
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in np.unique(y_train):
            sequences = X_train[y_train == k]
            model = hmm.GaussianHMM(HMMLEARN_STATES, covariance_type="diag",
                                    min_covar=DIGITS_REG_COVAR, n_iter=100, tol=1e-2,
                                    random_state=random_state)
            models[k] = model.fit(sequences.reshape(-1, 8), [8] * len(sequences))
        seconds = time.perf_counter() - start
        scores = np.full((len(X_test), len(models)), -np.inf)
        for j, (k, model) in enumerate(models.items()):
            try:
                scores[:, j] = [model.score(x) for x in X_test.reshape(-1, 8, 8)]
            except ValueError:
                failed.append(k)
    predicted = np.array(list(models))[scores.argmax(1)]
    name = f"hmmlearn GaussianHMM (S={HMMLEARN_STATES}) on rows"
    if failed:
        name += f", {len(failed)} models NaN"
    return [{"method": name, "accuracy": float(np.mean(predicted == y_test)),
             "seconds": seconds}]


def format_identification_table(rows) -> str:
    """Accuracy and fit time per method."""
    lines = [f"{'method':<58} {'accuracy':>9} {'fit s':>7}"]
    for row in rows:
        lines.append(f"{row['method']:<58} {row['accuracy']:>9.3f} {row['seconds']:>7.2f}")
    return "\n".join(lines)


def run(out=print) -> None:
    """Run every part of the demo, printing as it goes."""
    out("Cerebrum demo 1/2: Gaussian mixtures on scikit-learn's handwritten digits")
    out("  1,797 images of 8x8 pixels (64 features), 10 true classes; K chosen by BIC.\n")
    rows = gmm_model_selection()
    out(format_selection_table(rows))
    out(
        "\nBIC weighs fit against parameter count. A diagonal component costs 129 parameters, "
        "so BIC\nsplits digits by handwriting style into more components than classes; a full "
        "one costs 2,145,\nso BIC stops early. Agreement with the labels (ARI) peaks near the "
        "10 true classes."
    )
    out("\nCerebrum demo 2/2: which class wrote this? One model per digit class in a Cerebrum")
    out("  Each digit read top to bottom as 8 rows of 8 pixels (a sequence); 70% to fit one model")
    out("  per class, the held-out 30% classified by likelihood with Cerebrum.classify.")
    out(f"  Before timing: {warm_up_hmm_kernels()}.\n")
    out(format_identification_table(identification()))
    out(
        "\nThe per-class GaussianMixture sees all 64 pixels at once and wins here; the HMMs read"
        "\nrows in order, with fewer parameters per class, as a speaker model reads audio frames."
    )
