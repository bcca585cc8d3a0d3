"""Do the deep hybrids learn? Held-out log-likelihood per frame on real sequences.

Data: scikit-learn's 1,797 handwritten digits read as sequences of 8 rows of 8 pixels (real
data that ships with an installed package), split 70/30 by image (stratified, seed 0). Fitted
on the training split: a GaussianMixture on the frames (rows taken as independent), a
HiddenMarkov with Gaussian-mixture emissions, the VRMGT and the MultiMixtureTransformer.
Reported: log-likelihood per frame on the held-out split (exact for the GMM and the HMM, an
importance-weighted lower bound for the hybrids) and fit time. Every model floors its
variances at 0.1 (pixels take integer values 0..16, and some are always 0).

    python bench/hybrids.py                  # table
    python bench/hybrids.py --json --epochs 20
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings

import numpy as np
import torch

from cerebrum import ConvergenceWarning, GaussianMixture, HiddenMarkov
from cerebrum.models.multi_mixture_transformer import MultiMixtureTransformer
from cerebrum.models.vrmgt import VariationalRecurrentMarkovGaussianTransformer

FLOOR = 0.1


def digits_as_sequences(seed=0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X = digits.data.reshape(-1, 8, 8).astype(np.float32)
    return train_test_split(X, test_size=0.3, random_state=seed, stratify=digits.target)


def timed(fit):
    start = time.perf_counter()
    model = fit()
    return model, time.perf_counter() - start


def run(epochs: int, n_samples: int, seed: int = 0):
    torch.manual_seed(seed)
    train, test = digits_as_sequences(seed)
    frames = test.shape[0] * test.shape[1]
    rows = []

    def add(name, model, seconds, held_out_total, note=""):
        rows.append({"model": name, "log_lik_per_frame": float(held_out_total) / frames,
                     "fit_s": seconds, "note": note})

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm, s = timed(lambda: GaussianMixture(16, 8).fit(
            train.reshape(-1, 8), reg_covar=FLOOR, random_state=seed))
        add("GaussianMixture K=16 (frames)", gmm, s, gmm.score_samples(test.reshape(-1, 8)).sum(),
            "exact")
        hmm, s = timed(lambda: HiddenMarkov(6, 8, n_mix=2).fit(
            train, reg_covar=FLOOR, random_state=seed))
        add("HiddenMarkov S=6 M=2", hmm, s, hmm.score(test), "exact")
    common = dict(input_dim=8, num_states=6, n_mix=2, hidden_dim=64, rnn_hidden=64,
                  trans_d_model=32, trans_nhead=4, trans_layers=1, min_variance=FLOOR)
    fit_args = dict(epochs=epochs, lr=3e-3, batch_size=64, kl_anneal_epochs=max(1, epochs // 5),
                    validation_split=0.1, patience=10, random_state=seed)
    vrmgt, s = timed(lambda: VariationalRecurrentMarkovGaussianTransformer(
        z_dim=4, **common).fit(train, **fit_args))
    add("VRMGT z=4 S=6 M=2", vrmgt, s, vrmgt.score(test, n_samples=n_samples),
        f"IW bound, K={n_samples}, {len(vrmgt.history_['train_loss'])} epochs")
    mmt, s = timed(lambda: MultiMixtureTransformer(z_dim=8, **common).fit(train, **fit_args))
    add("MultiMixtureTransformer z=8 S=6 M=2", mmt, s, mmt.score(test, n_samples=n_samples),
        f"IW bound, K={n_samples}, {len(mmt.history_['train_loss'])} epochs")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--samples", type=int, default=64, help="importance samples")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    rows = run(args.epochs, args.samples)
    if args.json:
        print(json.dumps({"machine": platform.processor() or platform.machine(),
                          "torch": torch.__version__, "rows": rows}, indent=2))
        return
    print(f"digits as 8-row sequences, held-out split ({platform.machine()}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads)")
    print(f"{'model':<38} {'log-lik/frame':>14} {'fit s':>8}  note")
    for row in rows:
        print(f"{row['model']:<38} {row['log_lik_per_frame']:>14.3f} {row['fit_s']:>8.1f}  "
              f"{row['note']}")


if __name__ == "__main__":
    main()
