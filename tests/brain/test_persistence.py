"""The single-file format: round trips, safety against pickles, atomic writes, bad files."""

import dataclasses
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


# --------------------------------------------------------------------------- issue 16: files
# Files from a stranger: every size is checked against the tensors before anything is built,
# the metadata must have its layout, the content hash catches corruption, and saves clean up.


def _parts(path):
    """(the "cerebrum" header as a dict, the tensors) of a file."""
    from safetensors.torch import load

    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(json.loads(data[8:8 + size])["__metadata__"]["cerebrum"])
    return header, load(data)


def _write(path, header, tensors, *, with_hash=False):
    """A file as a stranger (or an older Cerebrum) writes it: no content hash unless asked."""
    from safetensors.torch import save

    from cerebrum.brain import persistence

    text = json.dumps(header)
    metadata = {"cerebrum": text}
    if with_hash:
        metadata[persistence.HASH_KEY] = persistence.content_hash(text, tensors)
    path.write_bytes(save(tensors, metadata=metadata))
    return path


def _model_records(node):
    """Every model record ({"family", "config", "tensors", ...}) inside a record."""
    if isinstance(node, dict):
        if {"family", "config", "tensors"} <= node.keys():
            yield node
        for value in node.values():
            yield from _model_records(value)
    elif isinstance(node, list):
        for value in node:
            yield from _model_records(value)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A brain file (a gmm and an hmm entry) and a single-model file of the gmm."""
    directory = tmp_path_factory.mktemp("saved")
    brain = full_brain()
    brain.save(directory / "brain.cbm")
    from cerebrum.brain import persistence

    tensors = {}
    record = persistence.model_record(brain.models["g"].export_model("g"), "model", tensors)
    persistence.write_file(directory / "g.cbm", "model", record, tensors)
    return directory


def test_a_tiny_file_declaring_huge_sizes_is_refused_before_anything_is_built(
        saved, tmp_path, monkeypatch):
    from cerebrum.brain import registry

    header, tensors = _parts(saved / "brain.cbm")
    gmm = next(r for r in _model_records(header["record"]) if r["family"] == "gmm")
    gmm["config"].update(n_components=200_000, n_features=20_000)  # 32 GB if built
    path = _write(tmp_path / "crafted.cbm", header, tensors)
    assert path.stat().st_size < 4096
    devices = []  # the default device of every build: "meta" allocates nothing
    family = registry.get("gmm")

    def recording_build(config, device=None):
        devices.append(torch.empty(0).device.type if device is None else str(device))
        return family.build(config, device=device)

    monkeypatch.setitem(registry._FAMILIES, "gmm",
                        dataclasses.replace(family, build=recording_build))
    with pytest.raises(CerebrumFileError,
                       match=r"crafted\.cbm: tensor e0\.\S+ is float32 of shape \(2,?\S*\), "
                             r"but a gmm model .* needs float32 of shape \(200000"):
        Cerebrum.load(path)
    assert devices == ["meta"]


def test_a_crafted_model_file_is_refused_on_import_too(saved, tmp_path):
    header, tensors = _parts(saved / "g.cbm")
    model = next(_model_records(header["record"]))
    model["config"]["n_components"] = 10**9
    with pytest.raises(CerebrumFileError, match=r"crafted\.cbm: tensor .* needs"):
        Cerebrum().import_model("x", _write(tmp_path / "crafted.cbm", header, tensors))


def test_a_config_with_a_huge_count_stops_its_skeleton_early():
    from cerebrum.brain import persistence, registry

    family = registry.get("gpt")
    small = family.build(family.make_config(dict(block_size=16, n_layer=1, n_head=2,
                                                  n_embd=8)))
    tensors = {}
    record = persistence.model_record(small, "m", tensors)
    record["config"]["n_layer"] = 10**7  # minutes and gigabytes of modules, even on meta
    with pytest.raises(CerebrumFileError, match=r"crafted\.cbm: the config of the gpt model "
                                                r"under 'm' .* declares more than \d+ tensors"):
        persistence.model_from_record(record, tensors, source="crafted.cbm")


def _entries(header):
    return header["record"]["entries"]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda h: [], "unexpected metadata (a JSON array"),
    (lambda h: None, "unexpected metadata (null)"),
    (lambda h: "a string", "unexpected metadata (a JSON string"),
    (lambda h: {**h, "record": []}, "the file's record must be a JSON object"),
    (lambda h: {**h, "record": {"entries": None}}, "'entries' must be a JSON array, got null"),
    (lambda h: {**h, "record": {"entries": [["g", "manager"]]}},
     "brain's entry 0 must be a JSON object, got a JSON array"),
    (lambda h: {**h, "record": {"entries": [{**_entries(h)[0], "record": [1]}]}},
     "record of entry 'g' must be a JSON object"),
    (lambda h: {**h, "record": {"entries": [{**_entries(h)[0], "id": 7}]}},
     "the id of entry 0 must be a string"),
    (lambda h: {**h, "record": {"entries": [_entries(h)[0], _entries(h)[0]]}},
     "two entries have the id 'g'"),
    (lambda h: {**h, "record": {"entries": [{**_entries(h)[0], "record": {
        **_entries(h)[0]["record"], "models": 2 * _entries(h)[0]["record"]["models"]}}]}},
     "two models have the id 'g'"),
    (lambda h: {**h, "record": {"entries": [{**_entries(h)[0], "record": {
        **_entries(h)[0]["record"], "models": [{"id": "g", "model": "gmm"}]}}]}},
     "model 'g' must be a JSON object, got a JSON string"),
])
def test_malformed_metadata_is_refused_naming_the_file(saved, tmp_path, edit, message):
    header, tensors = _parts(saved / "brain.cbm")
    path = _write(tmp_path / "bad.cbm", edit(header), tensors)
    with pytest.raises(CerebrumFileError, match=r"bad\.cbm") as info:
        Cerebrum.load(path)
    assert message in str(info.value) or pytest.fail(str(info.value))


def test_nan_and_wrongly_typed_tensors_are_refused(saved, tmp_path):
    header, tensors = _parts(saved / "brain.cbm")
    name = next(k for k in tensors if k.endswith(".means"))
    poisoned = dict(tensors)
    poisoned[name] = tensors[name].clone()
    poisoned[name].view(-1)[1] = float("nan")
    for with_hash in (False, True):  # a consistent hash does not make NaN acceptable
        with pytest.raises(CerebrumFileError, match=rf"nan\.cbm is damaged: tensor {name} "
                                                    r"holds 1 NaN"):
            Cerebrum.load(_write(tmp_path / "nan.cbm", header, poisoned, with_hash=with_hash))
    retyped = {**tensors, name: tensors[name].to(torch.int32)}
    with pytest.raises(CerebrumFileError, match=rf"int32\.cbm: tensor {name} is int32 of shape"
                                                r" .*needs float32"):
        Cerebrum.load(_write(tmp_path / "int32.cbm", header, retyped))


def test_a_nan_buffer_is_not_damage(tmp_path):
    """Buffers may mark "not set yet" with NaN; only parameters are refused for it."""
    from cerebrum.brain import persistence, registry

    class Marked(torch.nn.Module):
        def __init__(self, width):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(width))
            self.register_buffer("threshold", torch.tensor(float("nan")))

    @dataclasses.dataclass(frozen=True)
    class MarkedConfig:
        width: int

    family = registry.Family(
        name="marked_test", model_class=Marked, config_class=MarkedConfig,
        build=lambda config, device=None: Marked(config.width),
        config_of=lambda model: MarkedConfig(len(model.weight)),
        fit=lambda model, data: None, sequence_log_likelihoods=None,
        log_likelihoods=lambda model, X: None, infer_config=lambda data, fields: fields)
    registry.register(family)
    try:
        tensors = {}
        record = persistence.model_record(Marked(3), "m", tensors)
        persistence.write_file(tmp_path / "marked.cbm", "model", record, tensors)
        _, record, tensors = persistence.read_file(tmp_path / "marked.cbm")
        loaded = persistence.model_from_record(record, tensors, source="marked.cbm")
        assert torch.isnan(loaded.threshold) and loaded.weight.tolist() == [1.0] * 3
        tensors["m.weight"][0] = float("nan")
        with pytest.raises(CerebrumFileError, match=r"tensor m\.weight holds 1 NaN"):
            persistence.model_from_record(record, tensors, source="marked.cbm")
    finally:
        registry.unregister("marked_test")


def test_single_bit_flips_anywhere_are_refused(saved, tmp_path):
    data = bytearray((saved / "g.cbm").read_bytes())
    (size,) = struct.unpack("<Q", data[:8])
    rng = np.random.default_rng(16)
    # half of the flips in the tensor data, half anywhere (header, hash, sizes)
    positions = np.concatenate([rng.integers(8 + size, len(data), 100),
                                rng.integers(0, len(data), 100)])
    path = tmp_path / "flipped.cbm"
    for position, bit in zip(positions, rng.integers(0, 8, len(positions)), strict=True):
        flipped = bytearray(data)
        flipped[position] ^= 1 << int(bit)
        path.write_bytes(flipped)
        with pytest.raises(CerebrumFileError, match=r"flipped\.cbm"):
            Cerebrum().import_model("x", path)


def test_files_without_a_content_hash_still_load(saved, tmp_path):
    header, tensors = _parts(saved / "brain.cbm")
    old = Cerebrum.load(_write(tmp_path / "old.cbm", header, tensors))
    X = np.vstack(sequences(4))
    assert old.score("g", X) == Cerebrum.load(saved / "brain.cbm").score("g", X)


def test_a_file_with_a_content_hash_and_an_unknown_key_is_refused(saved, tmp_path):
    from safetensors.torch import load, save

    data = (saved / "g.cbm").read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    metadata = json.loads(data[8:8 + size])["__metadata__"]
    metadata["cerebrum.sha257"] = metadata.pop("cerebrum.sha256")  # a flip in the key's name
    (tmp_path / "k.cbm").write_bytes(save(load(data), metadata=metadata))
    with pytest.raises(CerebrumFileError, match=r"k\.cbm is damaged: unexpected metadata key"):
        Cerebrum().import_model("x", tmp_path / "k.cbm")


def test_directories_and_devices_are_no_such_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"no such file: {tmp_path} is a directory"):
        Cerebrum.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file: /dev/null is not a regular"):
        Cerebrum.load(os.devnull)


def test_saves_keep_the_umask_and_an_existing_files_mode(tmp_path):
    brain = full_brain()
    old_mask = os.umask(0o027)
    try:
        brain.save(tmp_path / "new.cbm")
        assert (tmp_path / "new.cbm").stat().st_mode & 0o777 == 0o640
        os.umask(0o002)
        brain.save(tmp_path / "other.cbm")
        assert (tmp_path / "other.cbm").stat().st_mode & 0o777 == 0o664
        (tmp_path / "new.cbm").chmod(0o604)
        brain.save(tmp_path / "new.cbm")  # replacing keeps the file's own mode
        assert (tmp_path / "new.cbm").stat().st_mode & 0o777 == 0o604
    finally:
        os.umask(old_mask)


def test_saving_over_a_directory_or_a_device_is_refused(tmp_path):
    brain = full_brain()
    (tmp_path / "dir.cbm").mkdir()
    with pytest.raises(ValueError, match=r"cannot save to .*dir\.cbm: it is a directory"):
        brain.save(tmp_path / "dir.cbm")
    os.mkfifo(tmp_path / "pipe.cbm")
    with pytest.raises(ValueError, match=r"pipe\.cbm: it is not a regular file"):
        brain.save(tmp_path / "pipe.cbm")
    assert sorted(os.listdir(tmp_path)) == ["dir.cbm", "pipe.cbm"]


def test_a_save_removes_the_temporary_files_of_killed_saves_to_that_path(tmp_path):
    import subprocess
    import sys
    import time

    # a real save killed (SIGKILL) between writing and renaming its temporary file
    script = (
        "import importlib.util, os, sys\n"
        "spec = importlib.util.spec_from_file_location('files', sys.argv[1])\n"
        "files = importlib.util.module_from_spec(spec); spec.loader.exec_module(files)\n"
        "files.os.replace = lambda *a: os.kill(os.getpid(), 9)\n"
        "files.write_bytes_atomically(sys.argv[2], b'x' * 100000)\n"
    )
    target = tmp_path / "brain.cbm"
    killed = subprocess.run([sys.executable, "-c", script, files.__file__, str(target)],
                            check=False)
    assert killed.returncode == -9
    left = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".brain.cbm.")
    # older versions named them without a pid: removed once they are an hour old
    legacy_old = tmp_path / ".brain.cbm.abcd1234.tmp"
    legacy_new = tmp_path / ".brain.cbm.x_yz5678.tmp"
    live = tmp_path / f".brain.cbm.{os.getppid()}.abcdefgh.tmp"  # a running process's
    other = tmp_path / ".other.cbm.99999999.abcdefgh.tmp"  # another target's
    for path in (legacy_old, legacy_new, live, other):
        path.write_bytes(b"partial")
    hour_ago = time.time() - 3700
    os.utime(legacy_old, (hour_ago, hour_ago))
    full_brain().save(target)
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["brain.cbm", legacy_new.name, live.name, other.name])
    assert set(Cerebrum.load(target).models.keys()) == {"g", "h"}


def test_an_hmm_saved_with_history_loads_it_as_lower_bounds(tmp_path):
    """Files written before the fit loop was shared name the HMM's curve `history_`."""
    from cerebrum.brain import registry

    rng = np.random.default_rng(0)
    model = HiddenMarkov(2, 2).fit(rng.normal(size=(60, 2)), max_iter=3, random_state=0)
    fresh = HiddenMarkov(2, 2)
    registry.get("hmm").restore_summary(fresh, {"converged_": True, "n_iter_": 3,
                                                "history_": model.lower_bounds_})
    assert fresh.lower_bounds_ == model.lower_bounds_ and fresh.n_iter_ == 3


def test_a_tensor_that_belongs_to_no_model_is_refused(tmp_path):
    """A brain file with one extra tensor, its content hash recomputed (the sweep's case)."""
    from cerebrum.brain import persistence

    rng = np.random.default_rng(0)
    brain = Cerebrum()
    brain.fit_and_add(rng.normal(size=(30, 2)), "gmm", model_id="g", n_components=1,
                      random_state=0)
    path = brain.save(tmp_path / "b.cbm")
    _, record, tensors = persistence.read_file(path)
    tensors["stray.weight"] = torch.zeros(3)
    persistence.write_file(tmp_path / "edited.cbm", "brain", record, tensors)
    with pytest.raises(CerebrumFileError, match=r"stray\.weight belong to no model"):
        Cerebrum.load(tmp_path / "edited.cbm")
