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
