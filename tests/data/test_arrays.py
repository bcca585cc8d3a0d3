"""Reading users' numeric files (.npy, .npz, .csv) for the command line."""

import numpy as np
import pytest

from cerebrum.data import load_arrays


def test_npy_2d_and_3d(tmp_path):
    flat = np.arange(12.0).reshape(6, 2)
    np.save(tmp_path / "f.npy", flat)
    X, lengths = load_arrays(tmp_path / "f.npy")
    np.testing.assert_array_equal(X, flat) and lengths is None
    assert lengths is None
    np.save(tmp_path / "s.npy", flat.reshape(3, 2, 2))
    X, lengths = load_arrays(tmp_path / "s.npy")
    np.testing.assert_array_equal(X, flat)
    np.testing.assert_array_equal(lengths, [2, 2, 2])


def test_npz_with_lengths_and_keys(tmp_path):
    np.savez(tmp_path / "a.npz", X=np.ones((5, 3)), lengths=[2, 3])
    X, lengths = load_arrays(tmp_path / "a.npz")
    assert X.shape == (5, 3) and lengths.tolist() == [2, 3]
    np.savez(tmp_path / "b.npz", first=np.ones((2, 1)), second=np.zeros((4, 1)))
    with pytest.raises(ValueError, match="name the one to use with --key"):
        load_arrays(tmp_path / "b.npz")
    assert load_arrays(tmp_path / "b.npz", key="second")[0].shape == (4, 1)


def test_csv_header_and_sequence_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,a,b\n7,1,2\n7,3,4\n9,5,6\n7,7,8\n")
    X, lengths = load_arrays(path, sequence_column="id")
    np.testing.assert_array_equal(X, [[1, 2], [3, 4], [5, 6], [7, 8]])
    assert lengths.tolist() == [2, 1, 1]  # runs of equal ids, in file order
    X, lengths = load_arrays(path, sequence_column="0")
    assert lengths.tolist() == [2, 1, 1]
    plain = tmp_path / "p.csv"
    plain.write_text("1,2\n3,4\n")
    assert load_arrays(plain)[0].tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize(("name", "content", "message"), [
    ("e.csv", "", "is empty"),
    ("r.csv", "1,2\n3\n", "different numbers of columns"),
    ("n.csv", "a,b\n1,x\n", "not all cells are numbers"),
    ("h.csv", "a,b\n", "header but no rows"),
    ("t.txt", "1", "unsupported file type"),
])
def test_bad_files(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        load_arrays(tmp_path / name)


def test_object_arrays_are_refused(tmp_path):
    np.save(tmp_path / "o.npy", np.array(["a", "b"]))
    with pytest.raises(ValueError, match="expected real numbers"):
        load_arrays(tmp_path / "o.npy")


# issue 16: damaged or mislabelled files name themselves; --key and lengths are never ignored
# or truncated silently


def test_damaged_numpy_files_name_themselves(tmp_path):
    rng = np.random.default_rng(16)
    np.savez(tmp_path / "full.npz", X=rng.normal(size=(500, 3)), lengths=[200, 300])
    data = (tmp_path / "full.npz").read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 40):
        (tmp_path / "cut.npz").write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"cannot read .*cut\.npz"):
            load_arrays(tmp_path / "cut.npz")
    (tmp_path / "noise.npy").write_bytes(rng.integers(0, 256, 1000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=r"cannot read .*noise\.npy as a NumPy \.npy file"):
        load_arrays(tmp_path / "noise.npy")
    np.save(tmp_path / "one.npy", np.ones((4, 2)))
    (tmp_path / "one.npz").write_bytes((tmp_path / "one.npy").read_bytes())
    with pytest.raises(ValueError, match=r"one\.npz is a single \.npy array"):
        load_arrays(tmp_path / "one.npz")
    (tmp_path / "full.npy").write_bytes(data)
    with pytest.raises(ValueError, match=r"full\.npy is an \.npz archive"):
        load_arrays(tmp_path / "full.npy")
    with pytest.raises(FileNotFoundError, match="a directory"):
        load_arrays(tmp_path)


def test_key_is_refused_for_files_with_one_table(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"key='X'.*a\.npy is a \.npy file"):
        load_arrays(tmp_path / "a.npy", key="X")
    (tmp_path / "a.csv").write_text("1,2\n3,4\n")
    with pytest.raises(ValueError, match=r"a\.csv is a \.csv file"):
        load_arrays(tmp_path / "a.csv", key="X")


@pytest.mark.parametrize(("lengths", "message"), [
    (np.array([150.7, 49.3]), "must be whole numbers, got 150.7"),
    (np.array([2**64 - 1], dtype=np.uint64),
     "must be between 0 and 2\\*\\*63 - 1, got 18446744073"),
    (np.array(["a", "b"]), "must be integers, got dtype <U1"),
])
def test_lengths_are_never_truncated_or_wrapped(tmp_path, lengths, message):
    np.savez(tmp_path / "s.npz", X=np.ones((200, 1)), lengths=lengths)
    with pytest.raises(ValueError, match=rf"s\.npz: sequence lengths {message}"):
        load_arrays(tmp_path / "s.npz")
    np.save(tmp_path / "s.npy", np.ones((200, 1)))
    with pytest.raises(ValueError, match=f"lengths: sequence lengths {message}"):
        load_arrays(tmp_path / "s.npy", lengths=lengths)
    assert load_arrays(tmp_path / "s.npy", lengths=np.array([150.0, 50.0]))[1].tolist() == [
        150, 50]
