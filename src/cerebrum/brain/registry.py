"""The family registry: how Cerebrum builds, fits, scores and stores each kind of model.

A family is registered once under a name (`"gmm"`, `"hmm"`, later `"mmm"`, `"gpt"`, ...) as a
`Family`: its model class, a config dataclass that holds what is needed to rebuild the model
(the architecture, never the data), a builder, a fit routine, the names of the fitted
attributes saved with it, and the verbs the managers call. Cerebrum, the persistence layer and
the CLI only ever go through this table, so a new family plugs in without touching them.

Fit settings (max_iter, tol, epochs, ...) are not part of the config: they are keyword
arguments of the family's fit routine, checked by name against its signature.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn


@dataclass(frozen=True)
class Family:
    """How to handle one kind of model.

    Attributes:
        name: the `model_type` users pass ("gmm").
        model_class: instances of this class belong to the family.
        config_class: a dataclass; `config_class(**fields)` must validate and raise ValueError.
        build: config -> a new, unfitted model.
        config_of: model -> its config (to store or copy a model built elsewhere).
        fit: (model, data, **fit_kwargs) -> None, fitting in place.
        summary_attributes: fitted attributes (plain Python values) stored with the model.
        renamed_summary: (old name, new name) of summary attributes renamed since files were
            written: an old file's value is restored under the new name.
        sequence_log_likelihoods: (model, X (N, D), lengths (B,)) -> (B,) NumPy log p of each
            sequence, in nats; what `classify` compares across families. A family documents
            what the number is (exact, or a bound); None when it has no such number (language
            models of text).
        log_likelihoods: (model, X, **kw) -> NumPy, the family's per-sample or per-sequence
            log-likelihoods (the managers' `get_log_likelihoods`).
        score: (model, X, **kw) -> float, what the managers' `score` answers; None: the
            model's own `score(X, **kw)`. A family that scores more kinds of data than its
            model does (a GaussianMixture asked to score sequences) says so here.
        id_scheme: how a manager names a model of this family when the caller does not:
            "integer" (0, 1, ...: seed 000's Gaussian mixtures) or "letters" (six random
            lowercase letters: everything else).
        takes_sequences: whether `fit` models sequences (and so takes `lengths`), not only
            independent samples.
        sample: (model, n, *, n_sequences, random_state) -> (X, labels), NumPy: draws from
            the model (`cerebrum sample`); None when the family cannot sample.
        infer_config: (data, given fields) -> fields completed from the data (n_features, ...).
        managed: True for families that Cerebrum keeps inside an MMMan (seed 000: "for gmm/hmm,
            uses a transient MMMan ... and registers that manager under model_id").
        feature_field: the config field that holds the number of observed features.
        description: one line for `cerebrum info` and error messages.
        trains_on: "arrays" (numeric frames or sequences) or "text" (a corpus: the
            language-model families, which the `cerebrum train` command lists).
        fit_parameters: the keywords `fit` accepts after (model, data); read from its
            signature when not given (a fit that takes **settings names them here).
    """

    name: str
    model_class: type[nn.Module]
    config_class: type
    build: Callable[[Any], nn.Module]
    config_of: Callable[[nn.Module], Any]
    fit: Callable[..., None]
    sequence_log_likelihoods: Callable[[nn.Module, Any, Any], np.ndarray] | None
    log_likelihoods: Callable[..., np.ndarray]
    infer_config: Callable[[Any, dict], dict]
    managed: bool = False
    summary_attributes: tuple[str, ...] = ()
    renamed_summary: tuple[tuple[str, str], ...] = ()
    feature_field: str = "n_features"
    description: str = ""
    trains_on: str = "arrays"
    fit_parameters: tuple[str, ...] = ()
    score: Callable[..., float] | None = None
    id_scheme: str = "letters"
    takes_sequences: bool = False
    sample: Callable[..., tuple] | None = None

    def __post_init__(self):
        if self.trains_on not in ("arrays", "text"):
            raise ValueError(f"trains_on must be 'arrays' or 'text', got {self.trains_on!r}")
        if self.id_scheme not in ("integer", "letters"):
            raise ValueError(f"id_scheme must be 'integer' or 'letters', got "
                             f"{self.id_scheme!r}")
        if not self.fit_parameters:
            names = tuple(
                name for name, p in inspect.signature(self.fit).parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            )[2:]  # after (model, data)
            object.__setattr__(self, "fit_parameters", names)

    def n_features(self, model: nn.Module) -> int:
        """How many features an observation of `model` has."""
        return getattr(self.config_of(model), self.feature_field)

    @property
    def config_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.config_class))

    def check_arguments(self, arguments: dict, *, config: bool = True) -> None:
        """Raise TypeError naming any keyword that is neither a model argument (when `config`)
        nor a fit argument, with the accepted ones."""
        accepted = set(self.fit_parameters) | (set(self.config_fields) if config else set())
        unknown = sorted(set(arguments) - accepted)
        if unknown:
            model = f"model arguments: {', '.join(self.config_fields)}; " if config else ""
            raise TypeError(
                f"unknown argument{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for "
                f"model_type={self.name!r}; {model}fit arguments: "
                f"{', '.join(self.fit_parameters)}"
            )

    def split_arguments(self, arguments: dict) -> tuple[dict, dict]:
        """(model arguments, fit arguments) of `fit_and_add`-style keywords, checked."""
        self.check_arguments(arguments)
        config_fields = {k: v for k, v in arguments.items() if k in self.config_fields}
        fit_kwargs = {k: v for k, v in arguments.items() if k in self.fit_parameters}
        return config_fields, fit_kwargs

    def make_config(self, fields: dict):
        """The config from a mapping (a JSON object from a file, or keywords)."""
        unknown = sorted(set(fields) - set(self.config_fields))
        if unknown:
            raise ValueError(
                f"unknown config field(s) {', '.join(unknown)} for family {self.name!r}; "
                f"expected {', '.join(self.config_fields)}"
            )
        try:
            return self.config_class(**fields)
        except TypeError as err:  # a required field is missing
            raise TypeError(f"model_type={self.name!r}: {err}") from None

    def score_model(self, model: nn.Module, X, **kwargs) -> float:
        """The managers' `score`: the family's `score` hook, or the model's own."""
        return (self.score or type(model).score)(model, X, **kwargs)

    def summary(self, model: nn.Module) -> dict:
        return {name: getattr(model, name, None) for name in self.summary_attributes}

    def restore_summary(self, model: nn.Module, summary: dict) -> None:
        summary = dict(summary)
        for old, new in self.renamed_summary:  # files written before a rename
            if old in summary and new not in summary:
                summary[new] = summary.pop(old)
        for name in self.summary_attributes:
            if name in summary:
                setattr(model, name, summary[name])


_FAMILIES: dict[str, Family] = {}


def register(family: Family, *, replace: bool = False) -> Family:
    """Add a family to the registry (`replace=True` to redefine an existing name)."""
    if not isinstance(family, Family):
        raise TypeError(f"family must be a Family, got {type(family).__name__}")
    if family.name in _FAMILIES and not replace:
        raise ValueError(f"a family named {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def names() -> list[str]:
    """The registered family names, in registration order."""
    return list(_FAMILIES)


def get(name: str) -> Family:
    """The family registered as `name`; an unknown name lists the registered ones."""
    if not isinstance(name, str) or name not in _FAMILIES:
        raise ValueError(
            f"unknown model_type {name!r}; registered families: {', '.join(_FAMILIES)}"
        )
    return _FAMILIES[name]


def family_of(model: nn.Module) -> Family | None:
    """The family of `model`: the one whose model class is nearest in its class hierarchy."""
    mro = type(model).__mro__
    matches = [f for f in _FAMILIES.values() if f.model_class in mro]
    return min(matches, key=lambda f: mro.index(f.model_class)) if matches else None


def unregister(name: str) -> Family:
    """Remove a family from the registry (a plugin's tests, a redefinition); returns it."""
    family = get(name)
    del _FAMILIES[name]
    return family
