"""The `cerebrum` command line, end to end."""

import subprocess
import sys

import numpy as np
import pytest

from cerebrum import cli, demo


def test_help_lists_demo(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "demo" in capsys.readouterr().out


def test_no_command_prints_usage_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "usage: cerebrum" in capsys.readouterr().err


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["frobnicate"])
    assert exit_info.value.code == 2


def test_user_error_is_one_line_without_traceback(monkeypatch, capsys):
    def broken(args):
        raise ValueError("X has 3 features, but this model was built with n_features=2")

    monkeypatch.setattr(cli, "_run_demo", broken)
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "cerebrum demo: error: X has 3 features, but this model was built with n_features=2"
    )


def test_python_dash_m_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "cerebrum", "--version"], capture_output=True, text=True,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.startswith("cerebrum ")


def test_demo_model_selection_on_digits():
    rows = demo.gmm_model_selection(components=(10, 40), covariance_types=("diag",))
    by_k = {row["n_components"]: row for row in rows}
    # Held to the numbers the demo prints: more components fit the density better (BIC) ...
    assert by_k[40]["bic"] < by_k[10]["bic"]
    # ... while K near the 10 true classes agrees best with the labels.
    assert by_k[10]["ari"] > by_k[40]["ari"] > 0.2
    table = demo.format_selection_table(rows)
    assert "40" in table.splitlines()[2] and table.splitlines()[2].rstrip().endswith("*")


def test_output_piped_into_head_exits_quietly():
    command = f"{sys.executable} -m cerebrum demo | head -n 1"
    result = subprocess.run(command, shell=True, capture_output=True, text=True, check=False)
    assert result.stdout.startswith("Cerebrum demo")
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------- brain verbs


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.save("a.npy", rng.normal(size=(200, 2)))
    np.save("b.npy", rng.normal(size=(200, 2)) + 5)
    with open("seqs.csv", "w") as out:
        out.write("speaker,x,y\n")
        for seq in range(4):
            for _ in range(30):
                x, y = rng.normal(size=2) + (5 if seq % 2 else 0)
                out.write(f"{seq},{x},{y}\n")
    return tmp_path


@pytest.mark.filterwarnings("ignore::cerebrum.ConvergenceWarning")
def test_brain_verbs_end_to_end(workdir, capsys):
    import numpy as np

    from cerebrum import Cerebrum

    assert cli.main(["fit", "gmm", "a.npy", "-k", "1", "--id", "A", "-o", "b.cbm",
                     "--seed", "0"]) == 0
    assert cli.main(["fit", "gmm", "b.npy", "-k", "1", "--id", "B", "-o", "b.cbm",
                     "--seed", "0", "--covariance", "full"]) == 0
    assert cli.main(["fit", "hmm", "seqs.csv", "--sequence-column", "speaker", "-k", "2",
                     "--id", "H", "-o", "b.cbm", "--seed", "0", "--max-iter", "3"]) == 0
    capsys.readouterr()
    brain = Cerebrum.load("b.cbm")
    assert brain.check_data() == {"A": {"A": "gmm"}, "B": {"B": "gmm"}, "H": {"H": "hmm"}}

    assert cli.main(["info", "b.cbm"]) == 0
    info = capsys.readouterr().out.splitlines()
    assert info[0].split() == ["id", "family", "sizes", "parameters", "fit"]
    # K=1, D=2, diag: 2 means + 2 variances
    assert info[1].startswith("A ") and "n_components=1" in info[1] and " 4 " in info[1]
    assert info[3].startswith("H ") and "hmm" in info[3]

    assert cli.main(["score", "b.cbm", "b.npy", "--id", "A", "--id", "B"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    X = np.load("b.npy")
    assert float(rows[1][1]) == pytest.approx(brain.score("B", X) * len(X), rel=1e-5)

    assert cli.main(["classify", "b.cbm", "b.npy", "--id", "A", "--id", "B"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 201 and all(line.split()[1] == "B" for line in lines[1:])

    assert cli.main(["sample", "b.cbm", "--id", "H", "-n", "7", "--sequences", "2",
                     "-o", "s.npz", "--seed", "1"]) == 0
    with np.load("s.npz") as drawn:
        assert drawn["X"].shape == (2, 7, 2) and drawn["labels"].shape == (2, 7)


@pytest.mark.parametrize(("argv", "message"), [
    (["info", "missing.cbm"], "no such file: missing.cbm"),
    (["fit", "gmm", "a.npy", "-k", "0", "-o", "x.cbm"], "n_components must be >= 1, got 0"),
    (["fit", "hmm", "a.npy", "-k", "2", "--lengths", "150,10", "-o", "x.cbm"],
     "lengths sum to 160"),
    (["score", "a.npy", "a.npy"], "a.npy is not a Cerebrum file"),
    (["fit", "hmm", "seqs.csv", "--sequence-column", "who", "-k", "2", "-o", "x.cbm"],
     "no column named 'who'; columns: speaker, x, y"),
])
def test_brain_verb_errors_are_one_line(workdir, capsys, argv, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not (workdir / "x.cbm").exists()


def _damaged_data_files():
    """A truncated .npz, a .npy of random bytes and a brain file of random bytes."""
    rng = np.random.default_rng(16)
    np.savez("full.npz", X=rng.normal(size=(300, 2)))
    with open("full.npz", "rb") as whole, open("cut.npz", "wb") as cut:
        data = whole.read()
        cut.write(data[:len(data) // 2])
    with open("noise.npy", "wb") as out:
        out.write(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with open("noise.cbm", "wb") as out:
        out.write(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())


@pytest.mark.parametrize(("argv", "message"), [
    (["fit", "gmm", "cut.npz", "-k", "1", "-o", "x.cbm"], "cut.npz"),
    (["fit", "gmm", "noise.npy", "-k", "1", "-o", "x.cbm"], "cannot read noise.npy"),
    (["fit", "gmm", "a.npy", "--key", "X", "-k", "1", "-o", "x.cbm"],
     "a.npy is a .npy file with a single table"),
    (["score", "noise.cbm", "a.npy"], "noise.cbm is not a Cerebrum file"),
    (["info", "."], "no such file: . is a directory"),
])
def test_damaged_data_and_brain_files_are_one_line_naming_the_file(workdir, capsys, argv,
                                                                   message):
    _damaged_data_files()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err, err
    assert not (workdir / "x.cbm").exists()


@pytest.mark.filterwarnings("ignore::cerebrum.ConvergenceWarning")
def test_an_unreadable_brain_file_is_one_line(workdir, capsys, monkeypatch):
    import pathlib

    assert cli.main(["fit", "gmm", "a.npy", "-k", "1", "-o", "b.cbm", "--seed", "0"]) == 0
    capsys.readouterr()

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "read_bytes", denied)  # chmod 000 (root reads anyway)
    assert cli.main(["info", "b.cbm"]) == 2
    assert capsys.readouterr().err.strip() == (
        "cerebrum info: error: cannot read b.cbm: Permission denied")


@pytest.mark.parametrize("verb", ["fit", "score", "classify", "info", "sample", "train", "eval",
                                  "export-hf",
                                  "generate", "demo"])
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([verb, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: cerebrum {verb}" in capsys.readouterr().out


def test_demo_identification_beats_chance_and_reports_every_method():
    rows = demo.identification()
    names = [row["method"] for row in rows]
    assert names[0].startswith("Cerebrum HiddenMarkov (S=4)")
    assert names[-1].startswith("Cerebrum GaussianMixture")
    assert len(rows) == 4  # hmmlearn is a dev dependency, so it is in the table
    for row in rows:
        if row["method"].startswith("Cerebrum"):
            assert row["accuracy"] > 0.6  # ten classes: chance is 0.1
    assert "accuracy" in demo.format_identification_table(rows)


# ---------------------------------------------------------------------------- language models


@pytest.fixture
def text_corpus(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(300):  # enough that the 1% validation split holds a few documents
        (corpus / f"f{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 3)
    (tmp_path / "cfg.toml").write_text(
        'n_layer = 1\nn_embd = 32\nn_head = 2\nblock_size = 64\nseq_len = 32\n'
        'batch_size = 4\nwarmup_steps = 2\ncheckpoint_every = 4\neval_every = 4\n'
        'optimizer = "muon"\n')
    return tmp_path


def test_train_eval_generate_and_resume(text_corpus, capsys):
    assert cli.main(["train", "gpt", "--corpus", "corpus", "--config", "cfg.toml",
                     "--steps", "4", "--out", "run", "--set", "lr=0.01",
                     "--set", "verbose=false"]) == 0
    assert "done: step 4" in capsys.readouterr().out
    assert sorted(p.name for p in (text_corpus / "run").glob("checkpoint-*")) == [
        "checkpoint-00000004.safetensors"]
    assert cli.main(["eval", "run", "--corpus", "corpus", "--brier-positions", "64"]) == 0
    out = capsys.readouterr().out.splitlines()
    bpb, brier = float(out[0].split()[0]), float(out[1].split()[0])
    assert out[0].endswith("bits per byte") and out[1].endswith("BrierLM")
    assert 0 < bpb < 9 and 0 <= brier <= 100
    assert "of the validation split of given corpus" in out[2]
    assert cli.main(["generate", "run", "--prompt", "def f", "-n", "8",
                     "--temperature", "0"]) == 0
    assert len(capsys.readouterr().out.rstrip("\n")) > 0  # 8 generated tokens, printed
    assert cli.main(["train", "gpt", "--corpus", "corpus", "--config", "cfg.toml",
                     "--steps", "6", "--out", "run", "--resume", "--set", "lr=0.01",
                     "--set", "verbose=false"]) == 0
    assert "done: step 6" in capsys.readouterr().out


def test_training_on_one_text_file_then_evaluating_works(tmp_path, monkeypatch, capsys):
    """A newcomer's first run: one text file, trained, then scored on its own held-out end
    without naming the corpus again."""
    monkeypatch.chdir(tmp_path)
    lines = [f"line {i}: the quick brown fox jumps over {i % 7} lazy dogs\n" for i in range(4000)]
    (tmp_path / "book.txt").write_text("".join(lines))  # about 220 KB: 14 blocks of 16 KiB
    assert cli.main(["train", "gpt", "--corpus", "book.txt", "--steps", "2", "--out", "run",
                     "--set", "n_layer=1", "--set", "n_embd=16", "--set", "n_head=2",
                     "--set", "block_size=32", "--set", "batch_size=2",
                     "--set", "verbose=false"]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "run", "--brier-positions", "16"]) == 0
    out = capsys.readouterr().out
    assert "bits per byte" in out and "the run's corpus: book.txt" in out
    assert cli.main(["eval", "run", "--split", "test", "--brier-positions", "0"]) == 0
    assert "of the test split" in capsys.readouterr().out
    assert cli.main(["train", "gpt", "--corpus", "book.txt", "--validation", "0", "--test",
                     "0", "--steps", "1", "--out", "run2", "--set", "n_layer=1",
                     "--set", "n_embd=16", "--set", "n_head=2", "--set", "block_size=32",
                     "--set", "verbose=false"]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "run2"]) == 2
    assert "holds no documents; hold out more with --validation" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "gpt", "--set", "n_layers=2"], "unknown argument n_layers"),
    (["train", "gpt", "--set", "optimizer=sgd", "--steps", "1"],
     "optimizer must be one of adamw, muon"),
    (["train", "gmm"], "does not train on text corpora"),
    (["train", "llama"], "unknown family 'llama'; language-model families: calm, gpt, mgm, neat"),
    (["train", "gpt", "--document-bytes", "4096"], "--document-bytes applies to --corpus"),
    (["train", "gpt", "--corpus", "missing/*.txt", "--steps", "1", "--set", "verbose=false"],
     "matches no file"),
    (["train", "gpt", "--config", "nothere.json"], "no such config file"),
    (["eval", "nowhere"], "no such checkpoint: nowhere"),
    (["generate", "broken.safetensors", "--prompt", "x"], "not a readable checkpoint"),
])
def test_language_model_verb_errors(text_corpus, capsys, argv, message):
    (text_corpus / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_two_identical_training_runs_give_identical_curves(text_corpus):
    runs = []
    for out in ("one", "two"):
        assert cli.main(["train", "gpt", "--corpus", "corpus", "--config", "cfg.toml",
                         "--steps", "3", "--out", out, "--set", "verbose=false"]) == 0
        runs.append(np.load(text_corpus / out / "curves.npz")["train_loss"])
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize(("argv", "message"), [
    (["--set", "lr=abc"], "lr must be a finite number, got 'abc'"),
    (["--set", "lr=Infinity"], "lr must be a finite number, got inf"),
    (["--set", "random_state=abc"], "must be an integer, got 'abc'"),
    (["--out", "cfg.toml"], "--out cfg.toml is a file, not a run directory"),
])
def test_training_settings_are_checked_before_training(text_corpus, capsys, argv, message):
    assert cli.main(["train", "gpt", "--corpus", "corpus", "--config", "cfg.toml",
                     "--steps", "1", "--set", "verbose=false", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (text_corpus / "runs").exists()


def test_a_config_file_that_is_not_json_is_named(tmp_path, capsys):
    bad = tmp_path / "settings.json"
    bad.write_bytes(b"\xff\xfe\x00binary")
    assert cli.main(["train", "gpt", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert f"--config {bad} is not a JSON file of settings" in capsys.readouterr().err
