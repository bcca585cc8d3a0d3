"""Cerebrum: the top-level container of seed 000, and MMM, seed 001's name for the same facade.

A Cerebrum is an `nn.Module` whose `models` (an `nn.ModuleDict`) hold any number of models of
any registered family under string ids. As seed 000 describes, a Gaussian mixture or HMM fitted
through `fit_and_add` is kept inside an `MMMan` registered under the model id, the model itself
stored in that manager under the same id; other families are stored as they are.

Front ends (`score`, `get_log_likelihoods`, the getters) take a model id and, for a manager
entry, optional `data_ids`: None means the model stored under the entry's own id (the one
`fit_and_add` put there) or, when there is none, every model in it (a dict); one id gives its
value; a list gives a dict.

`classify(X)` answers seed 001's "which speaker said this": for each sample or sequence, the
id of the model under which it is most likely.

Shapes: N samples or frames, B sequences, D features, C candidate models.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from cerebrum._util.sequences import as_sequence_batch
from cerebrum._util.validation import check_device, check_seed
from cerebrum.brain import persistence, registry
from cerebrum.brain.managers import (
    MM,
    MMMan,
    ModelStore,
    check_id,
    load_state,
    random_letters,
)
from cerebrum.exceptions import CerebrumFileError

_MANAGERS = {"MMMan": MMMan, "MM": MM}


class Cerebrum(nn.Module):
    """Many models of any family under ids, with one API to fit, query, store and merge them.

    >>> brain = Cerebrum()
    >>> gmm_id = brain.fit_and_add(X, model_type="gmm", n_components=4, model_id="my_gmm")
    >>> brain.score("my_gmm", X_test)            # mean log-likelihood per sample
    >>> brain.save("brain.cbm"); brain = Cerebrum.load("brain.cbm")
    """

    def __init__(self):
        super().__init__()
        self.models = nn.ModuleDict()

    # ------------------------------------------------------------------ adding and removing

    def _new_id(self) -> str:
        return random_letters(set(self.models.keys()))

    def _check_new_id(self, model_id) -> str:
        if model_id is None:
            return self._new_id()
        model_id = check_id(model_id, name="model_id")
        if not isinstance(model_id, str):
            raise TypeError(f"model_id must be a str (a ModuleDict key), got int {model_id}")
        if model_id in self.models:
            raise ValueError(f"model_id {model_id!r} is already in use; choose another or "
                             "remove it with remove_model")
        return model_id

    def add_model(self, model: nn.Module, model_id: str | None = None) -> str:
        """Store any `nn.Module` under a new, unique id (generated when None); returns it."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        model_id = self._check_new_id(model_id)
        self.models[model_id] = model
        return model_id

    def remove_model(self, model_id: str) -> None:
        """Remove the entry `model_id`."""
        self._entry(model_id)
        del self.models[model_id]

    def fit_and_add(self, data, model_type: str = "gmm", model_id: str | None = None, *,
                    device=None, **kwargs) -> str:
        """Fit a new model of `model_type` on `data` and store it; returns its id.

        Keywords are the family's model arguments (for "gmm": n_components, covariance_type,
        dtype; "hmm" adds n_mix) and its fit arguments (method, max_iter, tol, random_state,
        lengths for sequences, verbose for a progress bar, ...). A failed fit adds nothing.
        """
        family = registry.get(model_type)
        model_id = self._check_new_id(model_id)
        device = check_device(device)
        if family.managed:
            manager = MMMan()
            manager.fit(data, family.name, data_id=model_id, device=device, **kwargs)
            return self.add_model(manager, model_id)
        config, fit_kwargs = family.split_arguments(kwargs)
        config = family.make_config(family.infer_config(data, config))
        seed = fit_kwargs.get("random_state")
        with torch.random.fork_rng(devices=[]):  # a seeded fit also gets seeded initial weights
            if seed is not None:
                torch.manual_seed(check_seed(seed))
            model = family.build(config, device=device)
        family.fit(model, data, **fit_kwargs)
        return self.add_model(model, model_id)

    # ------------------------------------------------------------------ queries

    def _entry(self, model_id) -> nn.Module:
        if not isinstance(model_id, str) or model_id not in self.models:
            raise ValueError(f"unknown model_id {model_id!r}; stored ids: "
                             f"{list(self.models.keys())}")
        return self.models[model_id]

    def _select_data(self, model_id, fn, data_ids=None):
        """Run fn(model, family) on the entry, or on the chosen models of a manager entry."""
        entry = self._entry(model_id)
        if isinstance(entry, ModelStore):
            if data_ids is None and not isinstance(entry, MM):
                data_ids = model_id if model_id in entry else None
            return entry._select(fn, data_ids)
        if data_ids is not None:
            raise ValueError(f"model {model_id!r} is a single {type(entry).__name__}; "
                             "data_ids applies only to manager entries")
        family = registry.family_of(entry)
        return fn(entry, family)

    def get_means(self, model_id, data_ids=None):
        """Means of a model (NumPy), or a dict of them (see the module docstring)."""
        return self._select_data(model_id, lambda m, f: m.get_means(), data_ids)

    def get_variances(self, model_id, data_ids=None):
        """Covariances of a model (NumPy), or a dict of them."""
        return self._select_data(model_id, lambda m, f: m.get_variances(), data_ids)

    def get_weights(self, model_id, data_ids=None):
        """Mixture weights of a model (NumPy), or a dict of them."""
        return self._select_data(model_id, lambda m, f: m.get_weights(), data_ids)

    def score(self, model_id, X, data_ids=None, **kwargs):
        """The model's score of X: for samples (N, D) a GaussianMixture's mean log-likelihood
        per sample; for sequences ((B, T, D), a list, or `lengths=`) the sum over them of
        their log-likelihoods (GaussianMixture: frames independent; HiddenMarkov: forward
        algorithm; hybrids: their bound)."""
        def score(model, family):
            return model.score(X, **kwargs) if family is None else family.score_model(
                model, X, **kwargs)

        return self._select_data(model_id, score, data_ids)

    def get_log_likelihoods(self, model_id, X, data_ids=None, **kwargs):
        """Per-sample (GMM) or per-sequence (HMM) log-likelihoods of X, as NumPy."""
        def per_unit(model, family):
            if family is None:
                raise TypeError(f"{type(model).__name__} is not of a registered family")
            return family.log_likelihoods(model, X, **kwargs)

        return self._select_data(model_id, per_unit, data_ids)

    def generate(self, model_id, prompt, **kwargs):
        """Continue a text prompt with a language model (see its `generate` for the options:
        max_new_tokens, temperature, top_k, top_p, random_state)."""
        entry = self._entry(model_id)
        family = None if isinstance(entry, ModelStore) else registry.family_of(entry)
        if family is None or family.trains_on != "text":
            raise TypeError(f"model {model_id!r} ({type(entry).__name__}) does not generate "
                            "text: only language models do")
        return entry.generate(prompt, **kwargs)

    def check_data(self) -> dict:
        """{model_id: family name} for single models, {model_id: {data_id: family}} for
        manager entries, and the class name for modules of no registered family."""
        summary = {}
        for model_id, entry in self.models.items():
            if isinstance(entry, ModelStore):
                summary[model_id] = entry.check_data()
            else:
                family = registry.family_of(entry)
                summary[model_id] = family.name if family else type(entry).__name__
        return summary

    # ------------------------------------------------------------------ classification

    def _candidates(self, model_ids):
        """[(label, model, family)] of the models classify compares."""
        if isinstance(model_ids, str):  # one id, not its characters
            model_ids = [model_ids]
        if model_ids is not None and not isinstance(model_ids, (list, tuple)):
            raise TypeError(f"model_ids must be a model id (str), a list of them or None, got "
                            f"{type(model_ids).__name__} {model_ids!r}")
        if model_ids is not None and not list(model_ids):
            raise ValueError("model_ids is empty")
        found = list(iter_models(self, model_ids))
        if not found:
            raise ValueError("no models to classify with: the brain is empty"
                             if not len(self.models) else "the selected entries hold no models")
        for label, model, family in found:
            if family is None:
                raise TypeError(f"model {label!r} ({type(model).__name__}) is not of a "
                                "registered family, so it cannot be scored")
            if family.sequence_log_likelihoods is None:
                raise TypeError(f"model {label!r} (family {family.name!r}) has no sequence "
                                "log-likelihood to compare; choose others with model_ids")
        return found

    def classify(self, X, model_ids=None, lengths=None):
        """The most likely model for each sample or sequence.

        X is samples (an (N, D) array without `lengths`: each row on its own) or sequences
        (a list of (T_i, D) arrays, a (B, T, D) array, or (N, D) with `lengths`). Every
        candidate gives log p(unit) in nats through its family: a GaussianMixture sums its
        frames' log-densities, a HiddenMarkov runs the forward algorithm, so models of
        different families compete on the same footing.

        Returns (labels, scores, candidates): labels (N,) or (B,) object array of the winning
        ids, scores (N or B, C) float64 log-likelihoods, candidates (C,) the ids in column
        order (a manager's model not stored under its entry's id is "entry/data_id").
        """
        found = self._candidates(model_ids)
        n_features = {family.n_features(model) for _, model, family in found}
        if len(n_features) > 1:
            raise ValueError(f"the candidate models differ in n_features ({sorted(n_features)});"
                             " choose comparable ones with model_ids")
        (D,) = n_features
        sequences = lengths is not None or isinstance(X, (list, tuple)) or np.ndim(X) == 3
        if not sequences:
            if np.ndim(X) != 2:
                raise ValueError(f"X must be (N, D) samples or sequences; got an array of "
                                 f"shape {np.shape(X)}")
            lengths = np.ones(len(X), dtype=np.int64)
        batch = as_sequence_batch(X, lengths, n_features=D, dtype=torch.float64,
                                  device="cpu", owner="the candidate models")
        frames = batch.X.numpy()
        lengths = batch.lengths.numpy()
        scores = np.column_stack([
            np.asarray(family.sequence_log_likelihoods(model, frames, lengths), np.float64)
            for _, model, family in found
        ])
        labels = np.array([label for label, _, _ in found], dtype=object)
        return labels[scores.argmax(1)], scores, labels

    # ------------------------------------------------------------------ state

    def export_model(self, model_id, filepath=None):
        """The entry's state dict; with `filepath`, write the entry to a single safe file
        instead (returns the path)."""
        entry = self._entry(model_id)
        if filepath is None:
            return entry.state_dict()
        kind, record, tensors = _entry_record(entry, "m")
        record["entry_id"] = model_id
        persistence.write_file(filepath, kind, record, tensors)
        return Path(filepath)

    def import_model(self, model_id, source):
        """Load into the entry `model_id` from a state dict (the entry must exist and match),
        or from a file written by `export_model` (creates the entry, or replaces it)."""
        if isinstance(source, dict):
            load_state(self._entry(model_id), source, what=f"model {model_id!r}")
            return model_id
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f"source must be a state dict or the path of a file written by "
                            f"export_model, got {type(source).__name__} {source!r:.60}")
        model_id = check_id(model_id, name="model_id")
        if not isinstance(model_id, str):
            raise TypeError(f"model_id must be a str (a ModuleDict key), got int {model_id}")
        kind, record, tensors = persistence.read_file(source, expect=("model", "manager"))
        entry = _entry_from_record(kind, record, tensors, source=str(source))
        persistence.check_every_tensor_is_claimed(record, tensors, source)
        _move_own_model(entry, record.get("entry_id"), model_id)
        self.models[model_id] = entry
        return model_id

    def save(self, path) -> Path:
        """Write the whole brain to one safe file (atomically); returns the path."""
        tensors: dict = {}
        entries = []
        for n, (model_id, entry) in enumerate(self.models.items()):
            kind, record, _ = _entry_record(entry, f"e{n}", tensors)
            entries.append({"id": model_id, "kind": kind, "record": record})
        record = {"class": type(self).__name__, "entries": entries}
        return persistence.write_file(path, "brain", record, tensors)

    @classmethod
    def load(cls, path, *, device=None):
        """A brain written by `save` (parameters on `device`, CPU by default)."""
        _, record, tensors = persistence.read_file(path, expect=("brain",), device=device)
        entries = _check_brain_record(record, source=str(path))  # before building anything
        persistence.check_every_tensor_is_claimed(record, tensors, path)
        brain = cls()
        try:
            for item in entries:
                brain.models[item["id"]] = _entry_from_record(
                    item["kind"], item["record"], tensors, source=str(path), device=device)
        except (KeyError, TypeError, AttributeError) as err:
            raise CerebrumFileError(f"{path}: bad brain record: {err!r}") from None
        return brain

    def assimilate(self, other_path) -> list[str]:
        """Copy every model of the brain saved at `other_path` into this one under new ids;
        returns the new ids. A manager's model stored under its old entry id moves to the new
        id, so `score(new_id, X)` answers as `score(old_id, X)` did."""
        other = Cerebrum.load(other_path)
        new_ids = []
        for old_id, entry in other.models.items():
            new_id = self._new_id()
            _move_own_model(entry, old_id, new_id)
            self.models[new_id] = entry
            new_ids.append(new_id)
        return new_ids


def iter_models(brain: Cerebrum, model_ids=None):
    """(label, model, family or None) for every model of the chosen entries: a single model
    is labelled by its entry id, a manager's models by the entry id when stored under it and
    "entry/data_id" otherwise. `model_ids` is a list of ids or one id."""
    if isinstance(model_ids, str):
        model_ids = [model_ids]
    for model_id in brain.models.keys() if model_ids is None else model_ids:
        entry = brain._entry(model_id)
        if isinstance(entry, ModelStore):
            for data_id in entry.ids:
                label = model_id if data_id == model_id else f"{model_id}/{data_id}"
                yield label, entry._model(data_id), entry._family(data_id)
        else:
            yield model_id, entry, registry.family_of(entry)


def _move_own_model(entry: nn.Module, old_id, new_id) -> None:
    """A manager entry keeps its own model under the entry's id: follow a change of id."""
    if isinstance(entry, ModelStore) and old_id is not None and old_id != new_id \
            and old_id in entry:
        entry._rename(old_id, new_id)


def _entry_record(entry: nn.Module, prefix: str, tensors: dict | None = None):
    tensors = {} if tensors is None else tensors
    if isinstance(entry, ModelStore):
        return "manager", entry.to_record(prefix, tensors), tensors
    return "model", persistence.model_record(entry, prefix, tensors), tensors


def _entry_from_record(kind, record, tensors, *, source, device=None) -> nn.Module:
    _check_entry_record(kind, record, source=source, where="entry record")
    if kind == "model":
        return persistence.model_from_record(record, tensors, source=source, device=device)
    return _MANAGERS[record["class"]].from_record(record, tensors, source=source,
                                                  device=device)


def _check_brain_record(record: dict, *, source: str) -> list:
    """The entries of a brain record, every one checked (layout, unique valid ids) before
    any model is built; a CerebrumFileError naming the file otherwise."""
    entries = persistence.expect_json(record.get("entries"), list, "brain's 'entries'", source)
    seen = set()
    for n, item in enumerate(entries):
        persistence.expect_json(item, dict, f"brain's entry {n}", source)
        entry_id = item.get("id")
        try:
            check_id(entry_id, name=f"the id of entry {n}")
        except (TypeError, ValueError) as err:
            raise CerebrumFileError(f"{source}: bad brain record: {err}") from None
        if not isinstance(entry_id, str):
            raise CerebrumFileError(f"{source}: bad brain record: the id of entry {n} must "
                                    f"be a string, got {entry_id!r}")
        if entry_id in seen:
            raise CerebrumFileError(f"{source}: bad brain record: two entries have the id "
                                    f"{entry_id!r}")
        seen.add(entry_id)
        _check_entry_record(item.get("kind"), item.get("record"), source=source,
                            where=f"record of entry {entry_id!r}")
    return entries


def _check_entry_record(kind, record, *, source: str, where: str) -> None:
    if kind == "model":
        persistence.check_model_record(record, source=source, where=where)
        return
    persistence.expect_json(record, dict, where, source)
    if kind != "manager" or record.get("class") not in _MANAGERS:
        raise CerebrumFileError(f"{source}: unknown entry kind {kind!r} / "
                                f"{record.get('class')!r} in the {where}")
    _MANAGERS[record["class"]].check_record(record, source=source, where=where)


class MMM(Cerebrum):
    """Seed 001's facade: the same container as Cerebrum, with seed 001's signatures.

    `fit_and_add(data, model_type='gmm'|'hmm', n_components=..., covariance_type=...)`,
    `score(model_id, X)`, `get_log_likelihoods(model_id, X, data_ids=None)`,
    `export_model(model_id, filepath)` (a file; without it the state dict),
    `import_model(model_id, path_or_state_dict)`, the getters, `save` / `MMM.load`.

    One name differs: in seed 001, `model_type='mmm'` is the deep hybrid VRMGT ("Train and Add
    a Deep MMM (VRMGT)"), while in seed 000 (`Cerebrum`) "mmm" is the MultiMixtureTransformer.
    MMM therefore maps 'mmm' to the "vrmgt" family.
    """

    MODEL_TYPE_ALIASES: ClassVar[dict[str, str]] = {"mmm": "vrmgt"}

    def fit_and_add(self, data, model_type: str = "gmm", model_id: str | None = None, *,
                    device=None, **kwargs) -> str:
        """Cerebrum.fit_and_add, with seed 001's 'mmm' meaning the VRMGT."""
        model_type = self.MODEL_TYPE_ALIASES.get(model_type, model_type)
        return super().fit_and_add(data, model_type, model_id, device=device, **kwargs)
