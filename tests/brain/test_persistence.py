"""The single-file format: round trips, safety against pickles, atomic writes, bad files."""

import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cerebrum import Cerebrum, CerebrumFileError, GaussianMixture, HiddenMarkov
from cerebrum._util import files

pytestmark = pytest.mark.filterwarnings("ignore::cerebrum.ConvergenceWarning")

COVARIANCE_TYPES = ["full", "diag", "tied", "spherical"]


def sequences(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, 3)) + (i % 2) * 2 for i, n in enumerate((40, 25, 33))]


def full_brain(covariance_type="diag", dtype="float32"):
    brain = Cerebrum()
    X = np.vstack(sequences())
    brain.fit_and_add(X, "gmm", n_components=2, covariance_type=covariance_type, dtype=dtype,
                      model_id="g", random_state=0)
    brain.fit_and_add(sequences(), "hmm", n_components=2, n_mix=2, dtype=dtype,
                      covariance_type=covariance_type, model_id="h", random_state=0,
                      max_iter=5)
    return brain


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_save_load_is_bitwise_and_scores_are_identical(tmp_path, covariance_type, dtype):
    brain = full_brain(covariance_type, dtype)
    brain.save(tmp_path / "brain.cbm")
    loaded = Cerebrum.load(tmp_path / "brain.cbm")
    before, after = brain.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].dtype == after[key].dtype
        assert torch.equal(before[key], after[key]), key
    X, seqs = np.vstack(sequences(1)), sequences(1)
    assert loaded.score("g", X) == brain.score("g", X)
    np.testing.assert_array_equal(loaded.get_log_likelihoods("h", seqs),
                                  brain.get_log_likelihoods("h", seqs))
    original = brain.models["h"].export_model("h")
    copy = loaded.models["h"].export_model("h")
    assert (copy.converged_, copy.n_iter_, copy.history_) == (
        original.converged_, original.n_iter_, original.history_)
    gmm = loaded.models["g"].export_model("g")
    assert gmm.lower_bounds_ == brain.models["g"].export_model("g").lower_bounds_


def test_assimilate_gives_the_same_scores_under_new_ids(tmp_path):
    source = full_brain()
    source.save(tmp_path / "other.cbm")
    brain = Cerebrum()
    brain.fit_and_add(np.vstack(sequences()), "gmm", n_components=1, model_id="g",
                      random_state=0)
    new_ids = brain.assimilate(tmp_path / "other.cbm")
    assert len(new_ids) == 2 and not {"g", "h"} & set(new_ids)
    X, seqs = np.vstack(sequences(2)), sequences(2)
    assert brain.score(new_ids[0], X) == source.score("g", X)
    assert brain.score(new_ids[1], seqs) == source.score("h", seqs)
    assert brain.score("g", X) != source.score("g", X)  # the existing model is untouched


def test_a_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "brain.cbm"
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(CerebrumFileError, match=r"brain\.cbm is not a Cerebrum file: a pickle"):
        Cerebrum.load(path)
    assert not marker.exists()
    torch.save({"x": torch.zeros(2)}, path)  # a torch.save zip archive
    with pytest.raises(CerebrumFileError, match="never loads"):
        Cerebrum.load(path)


def test_a_crash_mid_save_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "brain.cbm"
    brain = full_brain()
    brain.save(path)
    old = path.read_bytes()
    brain.fit_and_add(np.vstack(sequences()), "gmm", n_components=1, random_state=0)

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        brain.save(path)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["brain.cbm"]  # the temporary file is gone too
    assert set(Cerebrum.load(path).models.keys()) == {"g", "h"}


@pytest.mark.parametrize(("content", "message"), [
    (b"", "is empty"),
    (b"\x01\x02", "is truncated"),
    (b"hello world, this is not a tensor file", "not a Cerebrum file"),
])
def test_bad_files_name_themselves(tmp_path, content, message):
    path = tmp_path / "bad.cbm"
    path.write_bytes(content)
    with pytest.raises(CerebrumFileError, match=f"bad.cbm.*{message}|{message}"):
        Cerebrum.load(path)


def test_truncated_and_foreign_safetensors_files(tmp_path):
    good = tmp_path / "good.cbm"
    full_brain().save(good)
    cut = tmp_path / "cut.cbm"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CerebrumFileError, match=r"cut\.cbm"):
        Cerebrum.load(cut)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, foreign)
    with pytest.raises(CerebrumFileError, match="without Cerebrum metadata"):
        Cerebrum.load(foreign)
    with pytest.raises(FileNotFoundError, match=r"missing\.cbm"):
        Cerebrum.load(tmp_path / "missing.cbm")


def test_a_model_file_is_not_a_brain_and_versions_are_checked(tmp_path):
    brain = full_brain()
    brain.export_model("g", tmp_path / "g.cbm")
    with pytest.raises(CerebrumFileError, match="holds a 'manager', but a 'brain'"):
        Cerebrum.load(tmp_path / "g.cbm")
    data = (tmp_path / "g.cbm").read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    meta = json.loads(header["__metadata__"]["cerebrum"])
    meta["version"] = 99
    header["__metadata__"]["cerebrum"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    (tmp_path / "future.cbm").write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + size:])
    with pytest.raises(CerebrumFileError, match="format version 99"):
        Cerebrum().import_model("x", tmp_path / "future.cbm")


def test_unsaveable_modules_are_named():
    brain = Cerebrum()
    brain.add_model(torch.nn.Linear(2, 2), "lin")
    with pytest.raises(TypeError, match="cannot save a Linear: it belongs to no registered"):
        brain.save(os.devnull)


def test_models_added_directly_round_trip(tmp_path):
    brain = Cerebrum()
    gmm = GaussianMixture.from_params([0.3, 0.7], [[0.0], [2.0]], [[1.0], [0.5]],
                                      dtype=torch.float64)
    hmm = HiddenMarkov(2, 1)
    brain.add_model(gmm, "direct")
    brain.add_model(hmm, "unfitted")
    brain.save(tmp_path / "b.cbm")
    loaded = Cerebrum.load(tmp_path / "b.cbm")
    assert loaded.check_data() == {"direct": "gmm", "unfitted": "hmm"}
    X = np.linspace(-2, 4, 7)[:, None]
    assert loaded.score("direct", X) == brain.score("direct", X)
    assert not loaded.models["unfitted"].is_fitted


def test_import_model_from_a_file_creates_or_replaces_the_entry(tmp_path):
    brain = full_brain()
    brain.export_model("h", tmp_path / "h.cbm")
    other = Cerebrum()
    other.import_model("copy", tmp_path / "h.cbm")
    seqs = sequences(3)
    assert other.score("copy", seqs) == brain.score("h", seqs)
    other.import_model("copy", tmp_path / "h.cbm")  # replacing works too
    with pytest.raises(TypeError, match="model_id must be a str"):
        other.import_model(3, tmp_path / "h.cbm")
    with pytest.raises(ValueError, match="does not fit model 'copy'"):
        other.import_model("copy", {"nonsense": torch.zeros(1)})
