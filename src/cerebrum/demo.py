"""`cerebrum demo`: the library's main jobs on real data that ships with scikit-learn.

Part 1 (Gaussian mixtures): the 1,797 8x8 handwritten digits of scikit-learn's `load_digits`,
clustered by GaussianMixture for a range of K; the number of components is chosen by BIC and the
clusters are compared with the true digit labels (adjusted Rand index).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from cerebrum.exceptions import ConvergenceWarning
from cerebrum.mixtures import GaussianMixture

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


def run(out=print) -> None:
    """Run every part of the demo, printing as it goes."""
    out("Cerebrum demo 1/1: Gaussian mixtures on scikit-learn's handwritten digits")
    out("  1,797 images of 8x8 pixels (64 features), 10 true classes; K chosen by BIC.\n")
    rows = gmm_model_selection()
    out(format_selection_table(rows))
    out(
        "\nBIC weighs fit against parameter count. A diagonal component costs 129 parameters, "
        "so BIC\nsplits digits by handwriting style into more components than classes; a full "
        "one costs 2,145,\nso BIC stops early. Agreement with the labels (ARI) peaks near the "
        "10 true classes."
    )
