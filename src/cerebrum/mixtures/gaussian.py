"""GaussianMixture: a Gaussian mixture model that is an `nn.Module` with scikit-learn's verbs.

It can be fitted exactly by EM (the default; in memory or out of core, with sample weights), by
gradient ascent on the log-likelihood (`method="gradient"`, seed 000's Adam MLE), or trained as
part of a larger network through the differentiable `log_prob`.

Shapes: N samples, K components (`n_components`), D features (`n_features`).
Parameters (all `nn.Parameter`s, so `.to()`, `.double()` and optimisers work as usual):
    weight_logits (K,)          log mixture weights up to a constant (softmax gives the weights)
    means (K, D)
    precision_cholesky_raw      the precision Cholesky factor U with its diagonal in log space:
                                full (K, D, D), tied (D, D), diag (K, D), spherical (K,)
"""

from __future__ import annotations

import math
import warnings
from functools import partial

import numpy as np
import torch
from torch import nn

from cerebrum._util.validation import (
    COVARIANCE_TYPES,
    check_choice,
    check_device,
    check_finite,
    check_fit_settings,
    check_fitted,
    check_parameter_memory,
    check_positive_int,
    check_samples,
    check_score_weights,
    make_generator,
    to_numeric_tensor,
    warn_if_unfitted,
)
from cerebrum.mixtures._data import SampleSource
from cerebrum.mixtures._fit_loop import (
    EMHooks,
    FitResult,
    fit_with_restarts,
    record_fit,
    run_adam,
)
from cerebrum.mixtures._gaussian_em import (
    GaussianParams,
    GaussianStats,
    Workspace,
    accumulate,
    expanded_form_is_accurate,
    lowest_scoring_samples,
    m_step,
    needs_accurate_final_step,
    worst_explained,
)
from cerebrum.mixtures._param_checks import (
    check_covariances,
    check_probabilities,
    rounding_tolerance,
)
from cerebrum.mixtures.distributed import (
    Communicator,
    RowSample,
    communicator,
    empty_shard_as_rows,
)
from cerebrum.mixtures.gaussian_math import (
    colour_noise,
    covariance_from_precision_cholesky,
    covariance_shape,
    floor_covariance,
    log_gaussian_prob,
    precision_cholesky_from_covariance,
    precision_cholesky_from_raw,
    precision_cholesky_shape,
    raw_from_precision_cholesky,
    safe_precision_cholesky,
)
from cerebrum.mixtures.kmeans import kmeans_plusplus, lloyd, nearest_center, squared_distances

FIT_METHODS = ("em", "gradient")
INIT_METHODS = ("kmeans++", "kmeans", "random", "random_from_data", "current")
#: Lloyd steps after k-means++ seeding for init="kmeans++"; init="kmeans" runs Lloyd to convergence.
KMEANS_PLUSPLUS_LLOYD_STEPS = 5
KMEANS_MAX_ITER = 100
#: Inference works on row blocks of at most this many (row x component x feature) elements.
_BLOCK_ELEMENTS = 1 << 24


class GaussianMixture(nn.Module):
    """A mixture of `n_components` Gaussians over `n_features` dimensions.

    Args:
        n_components: K, the number of mixture components (>= 1).
        n_features: D, the dimension of the samples (>= 1).
        covariance_type: "full" (one full covariance per component), "diag" (one diagonal
            covariance per component, the default), "tied" (one full covariance shared by all
            components) or "spherical" (one variance per component).
        dtype, device: where the parameters live, as for any `nn.Module` factory.

    A fresh module has uniform weights, standard-normal means and identity covariances, so it can
    be trained by gradient straight away; the scikit-learn-style verbs (`score`, `predict`, ...)
    need a fit or `from_params` first. After `fit`: `converged_`, `n_iter_`, `lower_bound_` (mean
    log-likelihood per sample) and `lower_bounds_` (its history, one value per iteration).
    """

    def __init__(
        self,
        n_components: int,
        n_features: int,
        covariance_type: str = "diag",
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.n_components = check_positive_int(n_components, name="n_components")
        self.n_features = check_positive_int(n_features, name="n_features")
        self.covariance_type = check_choice(
            covariance_type, COVARIANCE_TYPES, name="covariance_type"
        )
        device = check_device(device)  # names the device asked for and those present
        factory = {"dtype": dtype, "device": device}
        K, D = self.n_components, self.n_features
        check_parameter_memory(
            [(K,), (K, D), precision_cholesky_shape(self.covariance_type, K, D)],
            dtype=dtype or torch.get_default_dtype(), device=device,
            what=f"GaussianMixture(n_components={K}, n_features={D}, "
            f"covariance_type={self.covariance_type!r})",
        )
        self.weight_logits = nn.Parameter(torch.zeros(K, **factory))
        self.means = nn.Parameter(torch.randn(K, D, **factory))
        self.precision_cholesky_raw = nn.Parameter(
            torch.zeros(precision_cholesky_shape(self.covariance_type, K, D), **factory)
        )
        self.register_buffer("fitted_flag", torch.tensor(False, device=device))
        self.converged_: bool | None = None
        self.n_iter_: int | None = None
        self.lower_bound_: float | None = None
        self.lower_bounds_: list[float] = []

    def extra_repr(self) -> str:
        return (
            f"n_components={self.n_components}, n_features={self.n_features}, "
            f"covariance_type={self.covariance_type!r}"
        )

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_params(
        cls,
        weights,
        means,
        covariances,
        covariance_type: str = "diag",
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> GaussianMixture:
        """A fitted mixture from explicit parameters in scikit-learn's shapes.

        weights (K,) non-negative, summing to 1; means (K, D); covariances (K, D, D) for full,
        (D, D) for tied, (K, D) for diag, (K,) for spherical, each positive definite.
        """
        check_choice(covariance_type, COVARIANCE_TYPES, name="covariance_type")
        weights64, means64, covariances64 = _check_params(
            weights, means, covariances, covariance_type, rounding_tolerance(dtype)
        )
        n_components, n_features = means64.shape
        model = cls(n_components, n_features, covariance_type, dtype=dtype, device=device)
        prec_chol, _ = safe_precision_cholesky(covariances64, covariance_type, floor=1e-300)
        model._set_params(weights64.log(), means64, prec_chol)
        return model

    def _set_params(self, log_weights, means, prec_chol) -> None:
        """Copy parameters in (data coordinates) and mark the model fitted."""
        with torch.no_grad():
            self.weight_logits.copy_(log_weights)
            self.means.copy_(means)
            self.precision_cholesky_raw.copy_(
                raw_from_precision_cholesky(prec_chol, self.covariance_type)
            )
            self.fitted_flag.fill_(True)

    @property
    def is_fitted(self) -> bool:
        """True once the model has been fitted or built from parameters."""
        return bool(self.fitted_flag)

    # ------------------------------------------------------------------ differentiable core

    def _precision_cholesky(self) -> torch.Tensor:
        return precision_cholesky_from_raw(self.precision_cholesky_raw, self.covariance_type)

    def log_weights(self) -> torch.Tensor:
        """log pi (K,), differentiable."""
        return torch.log_softmax(self.weight_logits, dim=0)

    def component_log_prob(self, X: torch.Tensor) -> torch.Tensor:
        """log N(x_n | mu_k, Sigma_k) (N, K), without the mixture weights; differentiable.

        Checks only shapes (no NaN scan, which would synchronise a GPU in a training loop).
        """
        X = self._as_input(X, check_values=False)
        return log_gaussian_prob(X, self.means, self._precision_cholesky(), self.covariance_type)

    def log_prob(self, X: torch.Tensor) -> torch.Tensor:
        """log p(x_n) (N,) under the mixture; differentiable, so usable as a training loss."""
        return torch.logsumexp(self.component_log_prob(X) + self.log_weights(), dim=1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Same as `log_prob`: per-sample log-likelihood (N,)."""
        return self.log_prob(X)

    def _as_input(self, X, *, check_values: bool = True) -> torch.Tensor:
        if isinstance(X, torch.Tensor) and not check_values:
            tensor = X.to(dtype=self.means.dtype, device=self.means.device)
            if tensor.ndim != 2 or tensor.shape[1] != self.n_features:
                raise ValueError(
                    f"X must have shape (n_samples, {self.n_features}), got "
                    f"{tuple(tensor.shape)}"
                )
            return tensor
        return check_samples(
            X,
            n_features=self.n_features,
            dtype=self.means.dtype,
            device=self.means.device,
            owner=f"this {type(self).__name__}",
        )

    # ------------------------------------------------------------------ scikit-learn verbs

    def _weighted_log_prob_blocks(self, X):
        """Yield log(pi_k) + log N(x_n | k) (n_block, K) over row blocks of validated X."""
        check_fitted(self)
        X = self._as_input(X)
        rows = max(1, _BLOCK_ELEMENTS // (self.n_components * self.n_features))
        with torch.no_grad():
            log_weights = self.log_weights()
            prec_chol = self._precision_cholesky()
            for start in range(0, X.shape[0], rows):
                block = X[start : start + rows]
                yield log_gaussian_prob(block, self.means, prec_chol, self.covariance_type) + (
                    log_weights
                )

    def score_samples(self, X) -> np.ndarray:
        """Log-likelihood of each sample, (N,) NumPy."""
        parts = [torch.logsumexp(lp, 1) for lp in self._weighted_log_prob_blocks(X)]
        return torch.cat(parts).cpu().numpy()

    def score(self, X, sample_weight=None) -> float:
        """Mean log-likelihood per sample (weighted by `sample_weight` when given)."""
        log_lik = self.score_samples(X)
        if sample_weight is None:
            return float(log_lik.mean())
        weight = check_score_weights(sample_weight, log_lik.shape[0])
        return float(np.average(log_lik, weights=weight))

    def predict_proba(self, X) -> np.ndarray:
        """Posterior probability of each component for each sample, (N, K) NumPy."""
        parts = [torch.softmax(lp, 1) for lp in self._weighted_log_prob_blocks(X)]
        return torch.cat(parts).cpu().numpy()

    def predict(self, X) -> np.ndarray:
        """Most probable component for each sample, (N,) int64 NumPy."""
        parts = [lp.argmax(1) for lp in self._weighted_log_prob_blocks(X)]
        return torch.cat(parts).cpu().numpy()

    def sample(self, n_samples: int = 1, random_state=None) -> tuple[np.ndarray, np.ndarray]:
        """Draw `n_samples` samples: (X (n, D), component labels (n,)) as NumPy, in random order."""
        check_fitted(self)
        n_samples = check_positive_int(n_samples, name="n_samples")
        check_parameter_memory([(n_samples, self.n_features + 1)], dtype=self.means.dtype,
                               device=self.means.device, what=f"n_samples={n_samples}",
                               holding="the samples")
        generator = make_generator(random_state, self.means.device)
        with torch.no_grad():
            weights = self.log_weights().exp()
            labels = torch.multinomial(weights, n_samples, replacement=True, generator=generator)
            noise = torch.randn(
                n_samples, self.n_features, generator=generator,
                dtype=self.means.dtype, device=self.means.device,
            )
            samples = self.means[labels] + colour_noise(
                noise, labels, self._precision_cholesky(), self.covariance_type
            )
        return samples.cpu().numpy(), labels.cpu().numpy()

    @property
    def n_parameters(self) -> int:
        """Number of free parameters (weights, means, covariances), as used by BIC and AIC."""
        K, D = self.n_components, self.n_features
        covariance = {
            "full": K * D * (D + 1) // 2,
            "tied": D * (D + 1) // 2,
            "diag": K * D,
            "spherical": K,
        }[self.covariance_type]
        return covariance + K * D + K - 1

    def bic(self, X) -> float:
        """Bayesian information criterion on X: -2 log L + p log N (lower is better)."""
        score = self.score(X)  # checks X first
        n_samples = len(X)
        return -2.0 * score * n_samples + self.n_parameters * math.log(n_samples)

    def aic(self, X) -> float:
        """Akaike information criterion on X: -2 log L + 2 p (lower is better)."""
        score = self.score(X)  # checks X first
        return -2.0 * score * len(X) + 2.0 * self.n_parameters

    # ------------------------------------------------------------------ getters (seed 000)

    def get_weights(self) -> np.ndarray:
        """Mixture weights (K,) as NumPy."""
        warn_if_unfitted(self)
        return self.log_weights().detach().exp().cpu().numpy()

    def get_means(self) -> np.ndarray:
        """Component means (K, D) as NumPy."""
        warn_if_unfitted(self)
        return self.means.detach().cpu().numpy().copy()

    def get_variances(self) -> np.ndarray:
        """Covariances in scikit-learn's shape for the type: full (K, D, D), tied (D, D),
        diag (K, D), spherical (K,)."""
        warn_if_unfitted(self)
        with torch.no_grad():
            covariances = covariance_from_precision_cholesky(
                self._precision_cholesky(), self.covariance_type
            )
        return covariances.cpu().numpy()

    def get_precisions_cholesky(self) -> np.ndarray:
        """The precision Cholesky factors U (scikit-learn's `precisions_cholesky_`)."""
        warn_if_unfitted(self)
        return self._precision_cholesky().detach().cpu().numpy()

    # ------------------------------------------------------------------ fitting

    def fit(
        self,
        X,
        method: str = "em",
        max_iter: int = 100,
        tol: float = 1e-3,
        init: str = "kmeans++",
        n_init: int = 1,
        reg_covar: float = 1e-6,
        sample_weight=None,
        random_state=None,
        *,
        lr: float = 0.05,
        epochs: int | None = None,
        verbose: bool = False,
        distributed: bool | None = None,
    ) -> GaussianMixture:
        """Fit the mixture to X and return self.

        Args:
            X: (N, D) array or tensor, or a re-iterable of chunks (a list of (n_i, D) arrays, or a
                DataLoader yielding arrays or (X, sample_weight) pairs) for out-of-core EM.
            method: "em" (exact expectation-maximisation) or "gradient" (Adam on the
                negative mean log-likelihood, one step per chunk and epoch).
            max_iter: EM iterations (or gradient epochs when `epochs` is None).
            tol: stop when the mean log-likelihood per sample changes by less than this.
            init: "kmeans++" (seeding plus a few Lloyd steps), "kmeans" (Lloyd to convergence),
                "random" (random responsibilities), "random_from_data" (random samples as
                means, nearest-mean assignment) or "current" (continue from the present
                parameters). The first four end with one M step from the assignment.
            n_init: number of initialisations; the one with the best final bound is kept
                (ignored for init="current", which has only one starting point).
            reg_covar: added to the covariance diagonals; also the variance floor.
            sample_weight: (N,) non-negative weights (or one array per chunk).
            random_state: None, an int seed or a torch.Generator.
            lr, epochs: Adam's learning rate and number of passes for method="gradient".
            verbose: show a progress bar.
            distributed: fit the data of all processes of the torch.distributed process group
                together, each passing its own shard as X (possibly empty); every process ends
                with the same parameters (see docs/gaussian-mixture.md). None (the default)
                does so whenever a group of several processes is initialised; False fits this
                process's X alone. EM only.

        A failed fit raises and leaves the previous parameters untouched.
        """
        method, init, max_iter, n_init, tol, reg_covar, lr = check_fit_settings(
            method, init, max_iter, n_init, tol, reg_covar, lr,
            methods=FIT_METHODS, inits=INIT_METHODS,
        )
        if init == "current" and not self.is_fitted:
            warnings.warn(
                f"init='current' on an unfitted {type(self).__name__} starts from its "
                "construction values (random means, unit variances), not from a fit: pass "
                "init='kmeans++' for a data-driven start, or build it with from_params",
                UserWarning, stacklevel=2,
            )
        n_steps = max_iter if epochs is None else check_positive_int(epochs, name="epochs")
        comm = communicator(distributed)
        if comm is not None:
            if method != "em":
                raise ValueError(
                    f"a distributed fit supports method='em' only, got method={method!r}"
                )
            X = empty_shard_as_rows(X, self.n_features)

        source = SampleSource(
            X, sample_weight, n_features=self.n_features, dtype=self.means.dtype,
            device=self.means.device, owner=f"this {type(self).__name__}",
            reduce=None if comm is None else comm.all_reduce_sum,
        )
        if source.total_samples < self.n_components:
            everywhere = "" if comm is None else " (over all processes)"
            raise ValueError(
                f"X has {source.total_samples} samples{everywhere}, but "
                f"n_components={self.n_components} needs at least {self.n_components}"
            )
        generator = make_generator(random_state, self.means.device)
        if comm is not None:  # every rank draws what rank 0 draws
            comm.synchronise(generator)
        hooks = _MixtureEM(self, source, init, reg_covar, comm)
        gradient = None
        if method == "gradient":
            gradient = partial(self._run_gradient, source, epochs=n_steps, lr=lr, tol=tol,
                               reg_covar=reg_covar)
        best = fit_with_restarts(
            hooks, generator, n_runs=1 if init == "current" else n_init, max_iter=n_steps,
            tol=tol, gradient=gradient, reduce=None if comm is None else comm.reduce_stats,
            owner=type(self).__name__, verbose=verbose, description=f"{method} fit",
            stacklevel=2,
        )
        params = best.params
        self._set_params(params.log_weights, params.means + source.center, params.prec_chol)
        record_fit(self, best)
        return self

    def _initial_params(
        self, source: SampleSource, init: str, generator: torch.Generator, reg_covar: float,
        comm: Communicator | None = None,
    ) -> GaussianParams:
        """Starting parameters in the source's centred coordinates.

        Distributed (`comm`): k-means++ seeds and random picks come from a sample gathered from
        all ranks (`Communicator.gather_sample`), the same on every rank; Lloyd steps and the
        statistics of the first M step cover all the data, summed over the ranks.
        """
        K, kind = self.n_components, self.covariance_type
        if init == "current":
            with torch.no_grad():
                return GaussianParams(
                    self.log_weights().clone(),
                    self.means - source.center,
                    self._precision_cholesky().clone(),
                )
        # where seeds and re-seeding points are picked from: the data, or the gathered sample
        pool = source if comm is None else comm.gather_sample(source, generator)
        reduce = None if comm is None else comm.all_reduce_sum
        gather = None if comm is None else comm.gather_lowest
        reference = None  # scatter about the centre for random responsibilities
        if init == "random":
            local = generator if comm is None else comm.local_generator(generator)

            def resp_fn(chunk):
                resp = torch.rand(
                    K, chunk.n_samples, generator=local, dtype=chunk.X.dtype,
                    device=chunk.X.device,
                )
                return resp / resp.sum(0, keepdim=True)

            def reseed_points(n):
                return _distinct_rows(pool, n, generator)
        else:
            if init == "random_from_data":
                centers = _distinct_rows(pool, K, generator)
            else:
                centers = kmeans_plusplus(pool, K, generator)
                steps = KMEANS_PLUSPLUS_LLOYD_STEPS if init == "kmeans++" else KMEANS_MAX_ITER
                centers = lloyd(source, centers, steps, reduce=reduce)

            # The scatter is taken about the centres: about the origin it would cancel in
            # float32 for clusters far apart compared with their spread.
            reference = _unit_precision_params(centers, kind)

            def resp_fn(chunk):
                labels = nearest_center(chunk.X, centers)
                return torch.nn.functional.one_hot(labels, K).T.to(chunk.X.dtype)

            def reseed_points(n):  # the samples farthest from every centre
                return lowest_scoring_samples(
                    source, lambda chunk: -squared_distances(chunk.X, centers).amin(1), n,
                    gather,
                )

        stats = accumulate(source, kind, K, params=reference, resp_fn=resp_fn)
        if comm is not None:
            stats = comm.reduce_stats(stats)
        return m_step(stats, kind, reg_covar, source.total_weight, reseed_points)

    def _run_gradient(
        self, source, start: GaussianParams, progress, *, epochs, lr, tol, reg_covar
    ) -> FitResult:
        """Maximum likelihood by Adam on unconstrained parameters, one step per chunk and
        epoch, with the variance floor `max(reg_covar, eps)` restored after every step
        (projected gradient)."""
        kind = self.covariance_type
        floor = max(reg_covar, torch.finfo(self.means.dtype).eps)
        logits = start.log_weights.detach().clone().requires_grad_(True)
        means = start.means.detach().clone().requires_grad_(True)
        raw = raw_from_precision_cholesky(start.prec_chol, kind).detach().requires_grad_(True)

        def terms():  # per chunk: the loss of one step, and its weighted log-likelihood
            for chunk in source:
                weight = chunk.weights_or_ones()
                log_lik = torch.logsumexp(
                    log_gaussian_prob(chunk.X, means, precision_cholesky_from_raw(raw, kind), kind)
                    + torch.log_softmax(logits, 0),
                    dim=1,
                )
                weighted = weight @ log_lik
                yield -weighted / weight.sum().clamp_min(1e-12), weighted

        def finish():
            return GaussianParams(
                torch.log_softmax(logits, 0), means.detach(),
                precision_cholesky_from_raw(raw.detach(), kind),
            )

        return run_adam(
            [logits, means, raw], terms, finish, lr=lr, max_steps=epochs, tol=tol,
            normaliser=source.total_weight,
            project=partial(_project_variance_floor, raw, kind, floor), progress=progress,
        )


class _MixtureEM(EMHooks[GaussianParams, GaussianStats]):
    """GaussianMixture's EM hooks: statistics summed over the row blocks of a `SampleSource`,
    in its centred coordinates.

    While iterating, the diagonal types use the expanded-square GEMM form where it is accurate
    (`_gaussian_em`); the M step that decides the returned parameters takes its statistics from
    residuals when that form's rounding would show in them.
    """

    def __init__(self, model: GaussianMixture, source: SampleSource, init: str,
                 reg_covar: float, comm: Communicator | None = None):
        self.model, self.source, self.init, self.reg_covar = model, source, init, reg_covar
        self.kind = model.covariance_type
        self.comm = comm
        self.workspace = Workspace()  # the E step's scratch memory, reused every iteration

    def initialise(self, generator: torch.Generator) -> GaussianParams:
        return self.model._initial_params(self.source, self.init, generator, self.reg_covar,
                                          self.comm)

    def statistics(self, params: GaussianParams, *, final: bool) -> GaussianStats:
        expanded = expanded_form_is_accurate(params, self.kind)
        if final and needs_accurate_final_step(params, self.kind):
            expanded = False
        return accumulate(self.source, self.kind, len(params.means), params=params,
                          expanded=expanded, workspace=self.workspace)

    def refines_final_step(self, params: GaussianParams) -> bool:
        return (expanded_form_is_accurate(params, self.kind)
                and needs_accurate_final_step(params, self.kind))

    def log_likelihood(self, stats: GaussianStats) -> float:
        return float(stats.log_likelihood) / self.source.total_weight  # mean per sample

    def m_step(self, params: GaussianParams, stats: GaussianStats) -> GaussianParams:
        return m_step(
            stats, self.kind, self.reg_covar, self.source.total_weight,
            reseed_points=partial(worst_explained, self.source, self.kind, params,
                                  gather=None if self.comm is None else self.comm.gather_lowest),
        )


def _project_variance_floor(raw: torch.Tensor, covariance_type: str, floor: float) -> None:
    """Restore var >= floor in place after an optimiser step."""
    with torch.no_grad():
        if covariance_type in ("diag", "spherical"):  # U = exp(raw) <= floor^-1/2
            raw.clamp_(max=-0.5 * math.log(floor))
            return
        prec_chol = precision_cholesky_from_raw(raw, covariance_type)
        covariances = covariance_from_precision_cholesky(prec_chol, covariance_type)
        eigenvalues = torch.linalg.eigvalsh(0.5 * (covariances + covariances.mT))
        if bool((eigenvalues.amin(-1) < floor).any()):
            floored = floor_covariance(covariances, covariance_type, floor)
            raw.copy_(raw_from_precision_cholesky(
                precision_cholesky_from_covariance(floored, covariance_type), covariance_type
            ))


def _unit_precision_params(centers: torch.Tensor, covariance_type: str) -> GaussianParams:
    """Parameters with the given means and identity precisions: the reference point of the
    initial statistics (only their means and whitening matter there)."""
    K, D = centers.shape
    shape = precision_cholesky_shape(covariance_type, K, D)
    if covariance_type in ("diag", "spherical"):
        prec_chol = centers.new_ones(shape)
    else:
        prec_chol = torch.eye(D, dtype=centers.dtype, device=centers.device).expand(shape)
    return GaussianParams(centers.new_zeros(K), centers, prec_chol)


def _distinct_rows(source: SampleSource | RowSample, n_rows: int, generator: torch.Generator):
    """`n_rows` distinct samples chosen uniformly at random, (n_rows, D)."""
    picks = torch.randperm(source.n_samples, generator=generator, device=source.device)[:n_rows]
    picks, order = picks.sort()
    rows = torch.empty(n_rows, source.n_features, dtype=source.dtype, device=source.device)
    offset = 0
    for chunk in source:
        inside = (picks >= offset) & (picks < offset + chunk.n_samples)
        rows[order[inside]] = chunk.X[picks[inside] - offset]
        offset += chunk.n_samples
    return rows


def _check_params(weights, means, covariances, covariance_type, tolerance=0.0):
    """Validate `from_params` arguments in float64; return them as float64 tensors."""
    means = to_numeric_tensor(means, name="means", dtype=torch.float64, device="cpu")
    if means.ndim != 2 or means.shape[0] == 0 or means.shape[1] == 0:
        raise ValueError(
            f"means must be 2-D (n_components, n_features), got shape {tuple(means.shape)}"
        )
    check_finite(means, name="means")
    n_components, n_features = means.shape
    weights = check_probabilities(weights, (n_components,), "weights", " to match means")
    covariances = check_covariances(
        covariances, covariance_type,
        covariance_shape(covariance_type, n_components, n_features), tolerance,
    )
    return weights, means, covariances
