"""The model managers of seed 000: MM (one model type, its fits) and MMMan (many models).

Both keep fitted models under ids in an `nn.ModuleDict`, so `.to()`, `.state_dict()` and
optimisers see every parameter. Ids are integers for Gaussian mixtures and random six-letter
strings for everything else (seed 000), unless the caller names one; generated ids never
collide with stored ones.

Bulk getters take `data_ids`: None for all (a dict id -> value), one id (the value itself) or
a list of ids (a dict). What the numbers mean is the model's: `score` is scikit-learn's mean
log-likelihood per sample for a GaussianMixture and hmmlearn's sum over sequences for a
HiddenMarkov; `get_log_likelihoods` is per sample (GaussianMixture) or per sequence
(HiddenMarkov).
"""

from __future__ import annotations

import dataclasses
import numbers
import random
import string
from collections.abc import Callable

import torch
from torch import nn

from cerebrum._util.validation import check_device, check_finite, to_numeric_tensor
from cerebrum.brain import classical as _classical  # noqa: F401  (registers gmm and hmm)
from cerebrum.brain import persistence, registry
from cerebrum.exceptions import CerebrumFileError, NotFittedError

ID_LETTERS = 6


def check_id(value, *, name: str = "data_id"):
    """An id is an int (not bool) or a non-empty string without '.' (a ModuleDict key)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, str)):
        raise TypeError(f"{name} must be an int or a str, got {type(value).__name__} {value!r}")
    if isinstance(value, str) and (not value or "." in value):
        raise ValueError(f"{name} must be a non-empty string without '.', got {value!r}")
    return int(value) if isinstance(value, numbers.Integral) else value


def random_letters(taken, rng: random.Random | None = None) -> str:
    """Six random lowercase letters not in `taken`."""
    rng = rng or random.Random()
    while True:
        candidate = "".join(rng.choices(string.ascii_lowercase, k=ID_LETTERS))
        if candidate not in taken:
            return candidate


def load_state(module: nn.Module, state: dict, *, what: str) -> None:
    """load_state_dict (strict) with a ValueError that says what did not fit; a parameter
    holding NaN is refused (a buffer may: some families mark "not set yet" with NaN)."""
    parameters = dict(module.named_parameters())
    for name, value in state.items():
        if name in parameters and isinstance(value, torch.Tensor) \
                and value.is_floating_point() and bool(torch.isnan(value).any()):
            raise ValueError(f"the state dict for {what} has NaN in its parameter {name!r}")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"the state dict does not fit {what}: {err}") from None


class ModelStore(nn.Module):
    """Models under ids (int or str) with their family names; the shared core of MM and
    MMMan."""

    def __init__(self):
        super().__init__()
        self.store = nn.ModuleDict()
        self._ids: dict[str, int | str] = {}  # ModuleDict key -> the id as given
        self._families: dict[str, str] = {}  # ModuleDict key -> family name

    # ------------------------------------------------------------------ ids

    @staticmethod
    def _key(data_id) -> str:
        return f"i{data_id}" if isinstance(data_id, int) else f"s{data_id}"

    @property
    def ids(self) -> list:
        """The stored ids, in insertion order."""
        return list(self._ids.values())

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, data_id) -> bool:
        try:
            return self._key(check_id(data_id)) in self._ids
        except (TypeError, ValueError):
            return False

    def _new_id(self, family: str):
        if registry.get(family).id_scheme == "integer":
            used = [i for i in self._ids.values() if isinstance(i, int)]
            return max(used) + 1 if used else 0
        return random_letters({i for i in self._ids.values() if isinstance(i, str)})

    def _add(self, model: nn.Module, family: str, data_id=None):
        data_id = self._new_id(family) if data_id is None else check_id(data_id)
        key = self._key(data_id)
        if key in self._ids:
            raise ValueError(f"data_id {data_id!r} is already in use; unfit it first or "
                             "choose another id")
        self.store[key] = model
        self._ids[key] = data_id
        self._families[key] = family
        return data_id

    def _model(self, data_id) -> nn.Module:
        key = self._key(check_id(data_id))
        if key not in self._ids:
            raise ValueError(f"unknown data_id {data_id!r}; stored ids: {self.ids}")
        return self.store[key]

    def _family(self, data_id) -> registry.Family:
        return registry.get(self._families[self._key(check_id(data_id))])

    def _rename(self, old, new) -> None:
        """Store the model under `new` instead of `old` (keeps the order of the others)."""
        model, family = self._model(old), self._family(old).name
        self.unfit(old)
        self._add(model, family, new)

    # ------------------------------------------------------------------ seed verbs

    def unfit(self, data_id) -> None:
        """Remove the model stored under `data_id`."""
        self._model(data_id)
        key = self._key(check_id(data_id))
        del self.store[key]
        del self._ids[key]
        del self._families[key]

    def check_data(self) -> dict:
        """{id: family name} of every stored model."""
        return {self._ids[k]: self._families[k] for k in self._ids}

    def export_model(self, data_id):
        """The model object stored under `data_id` (not a copy, not a state dict)."""
        return self._model(data_id)

    def _select(self, fn: Callable, data_ids):
        """fn(model, family) for one id (the value) or for several / all ids (a dict)."""
        if data_ids is None:
            chosen = self.ids
        elif isinstance(data_ids, (list, tuple)):
            chosen = list(data_ids)
        else:
            return fn(self._model(data_ids), self._family(data_ids))
        if not chosen:
            raise ValueError("no models selected: the manager is empty" if data_ids is None
                             else "data_ids is an empty list")
        results = {}
        for data_id in chosen:
            try:
                results[data_id] = fn(self._model(data_id), self._family(data_id))
            except NotFittedError as err:  # which of the models, when several are asked
                raise NotFittedError(f"model {data_id!r}: {err}") from None
        return results

    def get_means(self, data_ids=None):
        """Means as NumPy (see the model's `get_means` for the shape)."""
        return self._select(lambda m, f: m.get_means(), data_ids)

    def get_variances(self, data_ids=None):
        """Covariances as NumPy, in the model's shape for its covariance type."""
        return self._select(lambda m, f: m.get_variances(), data_ids)

    def get_weights(self, data_ids=None):
        """Mixture weights as NumPy."""
        return self._select(lambda m, f: m.get_weights(), data_ids)

    def score(self, X, data_ids=None, **kwargs):
        """Each selected model's score of X (a float per model): samples (N, D) by the
        model's own `score`; sequences ((B, T, D), a list, or `lengths=`) by the sum of their
        log-likelihoods, from a GaussianMixture (frames independent) as from a HiddenMarkov."""
        return self._select(lambda m, f: f.score_model(m, X, **kwargs), data_ids)

    def get_log_likelihoods(self, X, data_ids=None, **kwargs):
        """Per-sample (GMM) or per-sequence (HMM) log-likelihoods of X under each model."""
        return self._select(lambda m, f: f.log_likelihoods(m, X, **kwargs), data_ids)

    def forward(self, *args, **kwargs):
        """Managers hold GMMs / HMMs, which have no forward pass to reconstruct input with."""
        held = ", ".join(sorted(set(self._families.values()))) or "no"
        raise TypeError(
            f"this {type(self).__name__} entry holds {held} models, which have no forward pass "
            "(no 'reconstruction'): compare models with brain.classify(X) or score one with "
            "brain.score(model_id, X)")

    # ------------------------------------------------------------------ persistence

    def to_record(self, prefix: str, tensors: dict) -> dict:
        """The JSON record of the manager (tensors go into `tensors`)."""
        return {
            "class": type(self).__name__,
            **self._own_record(),
            "models": [
                {"id": data_id,
                 "model": persistence.model_record(self.store[key], f"{prefix}.{n}", tensors)}
                for n, (key, data_id) in enumerate(self._ids.items())
            ],
        }

    def _own_record(self) -> dict:
        return {}

    @classmethod
    def check_record(cls, record, *, source: str, where: str = "manager record") -> None:
        """A CerebrumFileError unless `record` has this manager's layout, its models' ids
        valid and unique (checked before any model is built)."""
        persistence.expect_json(record, dict, where, source)
        models = persistence.expect_json(record.get("models"), list, f"{where}'s 'models'",
                                         source)
        seen = set()
        for n, item in enumerate(models):
            persistence.expect_json(item, dict, f"{where}'s model {n}", source)
            try:
                data_id = check_id(item.get("id"), name=f"the id of model {n}")
            except (TypeError, ValueError) as err:
                raise CerebrumFileError(f"{source}: bad {where}: {err}") from None
            if cls._key(data_id) in seen:
                raise CerebrumFileError(f"{source}: bad {where}: two models have the id "
                                        f"{data_id!r}")
            seen.add(cls._key(data_id))
            persistence.check_model_record(item.get("model"), source=source,
                                           where=f"{where}'s model {data_id!r}")

    def _fill_from_record(self, record: dict, tensors: dict, source: str, device=None):
        for item in record["models"]:
            model = persistence.model_from_record(item["model"], tensors, source=source,
                                                  device=device)
            self._add(model, item["model"]["family"], item["id"])
        return self


class MMMan(ModelStore):
    """Many GaussianMixture / HiddenMarkov models under ids (seed 000's multi-model manager).

    `fit(data, model_type, data_id=None, **kw)` absorbs a ready model instance or fits a new
    one through `MM`; the getters, `score` and `get_log_likelihoods` work on one id, a list of
    ids or all of them (see the module docstring).
    """

    def fit(self, data, model_type: str = "gmm", data_id=None, *, device=None, **kwargs):
        """Store `data` if it is a model of `model_type`, else fit a new one on it; returns
        the id. Keywords are the family's model arguments (n_components, covariance_type,
        n_mix, ...) and its fit arguments (max_iter, tol, lengths, random_state, ...)."""
        family = registry.get(model_type)
        device = check_device(device)
        if isinstance(data, nn.Module):
            if not isinstance(data, family.model_class):
                raise TypeError(
                    f"data is a {type(data).__name__}, not a {family.model_class.__name__} "
                    f"(model_type={model_type!r})"
                )
            if kwargs:
                raise TypeError(f"absorbing a ready model takes no other arguments, got "
                                f"{', '.join(sorted(kwargs))}")
            return self._add(data, family.name, data_id)
        if data_id is not None:
            data_id = check_id(data_id)
            if data_id in self:
                raise ValueError(f"data_id {data_id!r} is already in use; unfit it first or "
                                 "choose another id")
        config, fit_kwargs = family.split_arguments(kwargs)
        wrapper = MM(model_type, data=data, device=device, **config)
        fitted_id = wrapper.fit(data, **fit_kwargs)
        return self._add(wrapper._model(fitted_id), family.name, data_id)

    @classmethod
    def from_record(cls, record, tensors, *, source, device=None) -> MMMan:
        cls.check_record(record, source=source)
        return cls()._fill_from_record(record, tensors, source, device)


class MM(ModelStore):
    """One model type with its fits (seed 000's single-model wrapper).

    `MM("gmm", n_features=16, n_components=4)` describes the model; each `fit(X)` trains a
    fresh one and keeps it under a data id (returned), and the latest fit is `model` (also
    `gmm` or `hm`, the seed's names). The getters and scores use the latest fit unless given a
    `data_id`. Fitting is EM by default, `method="gradient"` for seed 000's Adam MLE.

    Args:
        model_type: a registered family ("gmm", "hmm").
        n_features: D; taken from `data` when omitted and `data` is given.
        data: optional, only to infer n_features.
        **config: the family's model arguments (n_components, covariance_type, n_mix, dtype).
    """

    def __init__(self, model_type: str = "gmm", n_features: int | None = None, *, data=None,
                 device=None, **config):
        super().__init__()
        self.family = registry.get(model_type)
        self.model_type = self.family.name
        if n_features is not None:
            config["n_features"] = n_features
        elif data is not None:
            config = self.family.infer_config(data, config)
        self.config = self.family.make_config(config)
        self.n_features = self.config.n_features
        self.device = device
        self._latest = None

    @property
    def model(self) -> nn.Module:
        """The latest fitted (or imported) model."""
        if self._latest is None:
            raise ValueError(f"this MM holds no fitted {self.model_type} model yet: call fit")
        return self._model(self._latest)

    @property
    def gmm(self) -> nn.Module:
        return self.model

    @property
    def hm(self) -> nn.Module:
        return self.model

    def _prepare_tensor(self, X) -> torch.Tensor:
        """X (an array, list or tensor) as a tensor in this MM's dtype (float32 unless the
        config says float64) on its device, checked numeric and finite (seed 000's helper)."""
        dtype = getattr(torch, self.config.dtype)
        tensor = to_numeric_tensor(X, name="X", dtype=dtype, device=self.device or "cpu")
        check_finite(tensor, name="X")
        return tensor

    def fit(self, X, data_id=None, **fit_kwargs):
        """Fit a fresh model on X (and `lengths=` for sequences) and store it; returns its id.
        A failed fit stores nothing."""
        self.family.check_arguments(fit_kwargs, config=False)
        if data_id is not None and data_id in self:
            raise ValueError(f"data_id {data_id!r} is already in use; unfit it first or "
                             "choose another id")
        model = self.family.build(self.config, device=self.device)
        self.family.fit(model, X, **fit_kwargs)
        self._latest = self._add(model, self.model_type, data_id)
        return self._latest

    def unfit(self, data_id) -> None:
        super().unfit(data_id)
        if data_id == self._latest:
            self._latest = self.ids[-1] if self.ids else None

    def _rename(self, old, new) -> None:
        latest = self._latest
        super()._rename(old, new)
        self._latest = new if latest == old else latest

    def _select(self, fn, data_ids):
        return super()._select(fn, self._latest if data_ids is None else data_ids)

    def get_means(self, data_id=None):
        """Means of the latest fit (or of `data_id`) as NumPy."""
        return super().get_means(data_id)

    def get_variances(self, data_id=None):
        """Covariances of the latest fit (or of `data_id`) as NumPy."""
        return super().get_variances(data_id)

    def get_weights(self, data_id=None):
        """Mixture weights of the latest fit (or of `data_id`) as NumPy."""
        return super().get_weights(data_id)

    def score(self, X, data_id=None, **kwargs):
        """The model's `score`: mean log-likelihood per sample (GMM), sum over sequences (HMM)."""
        return super().score(X, data_id, **kwargs)

    def get_log_likelihoods(self, X, data_id=None, **kwargs):
        """Per-sample (GMM) or per-sequence (HMM) log-likelihoods."""
        return super().get_log_likelihoods(X, data_id, **kwargs)

    def export_model(self, filepath=None, data_id=None):
        """Write the latest fit (or `data_id`) to a single-model file at `filepath`; without
        a path, return the model object (as MMMan does)."""
        data_id = self._latest if data_id is None else data_id
        model = self._model(data_id) if data_id is not None else self.model
        if filepath is None:
            return model
        tensors: dict = {}
        record = persistence.model_record(model, "model", tensors)
        persistence.write_file(filepath, "model", record, tensors)
        return filepath

    def import_model(self, source, data_id=None):
        """Load a model from a file written by `export_model` (stored as a new fit) or from a
        state dict (loaded into the latest fit, or into a new model when there is none).
        Returns the id it is stored under."""
        if isinstance(source, dict):
            fresh = self._latest is None
            model = self.family.build(self.config, device=self.device) if fresh else self.model
            load_state(model, source, what=f"this MM's {self.model_type} model")
            if fresh:
                self._latest = self._add(model, self.model_type, data_id)
            return self._latest
        _, record, tensors = persistence.read_file(source, expect=("model",),
                                                   device=self.device)
        model = persistence.model_from_record(record, tensors, source=str(source))
        persistence.check_every_tensor_is_claimed(record, tensors, source)
        if record["family"] != self.model_type:
            raise ValueError(f"{source} holds a {record['family']} model, but this MM wraps "
                             f"{self.model_type} models")
        self._latest = self._add(model, self.model_type, data_id)
        return self._latest

    def _own_record(self) -> dict:
        return {"family": self.model_type, "config": dataclasses.asdict(self.config),
                "latest": self._latest}

    @classmethod
    def check_record(cls, record, *, source: str, where: str = "manager record") -> None:
        """ModelStore.check_record, and the family and config of the MM itself: its models
        are of its family and `latest` is one of their ids."""
        super().check_record(record, source=source, where=where)
        family = persistence.expect_json(record.get("family"), str, f"{where}'s 'family'",
                                         source)
        persistence.expect_json(record.get("config"), dict, f"{where}'s 'config'", source)
        ids = []
        for item in record["models"]:
            if item["model"]["family"] != family:
                raise CerebrumFileError(
                    f"{source}: bad {where}: an MM of {family} models holds a "
                    f"{item['model']['family']!r} model (id {item['id']!r})")
            ids.append(check_id(item["id"]))
        latest = record.get("latest")
        if latest is not None and latest not in ids:
            raise CerebrumFileError(f"{source}: bad {where}: its latest model {latest!r} is "
                                    f"not one of its models {ids}")

    @classmethod
    def from_record(cls, record, tensors, *, source, device=None) -> MM:
        cls.check_record(record, source=source)
        try:
            wrapper = cls(record["family"], device=device, **record["config"])
        except (TypeError, ValueError) as err:
            raise CerebrumFileError(f"{source}: bad manager record: {err}") from None
        wrapper._fill_from_record(record, tensors, source, device)
        wrapper._latest = record.get("latest")
        return wrapper
