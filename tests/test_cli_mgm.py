"""`cerebrum mgm` (cerebrum.cli_mgm): the seed's flags as written, through a parser built
here with add_command (cli.py adds it to its COMMANDS), and the same settings through
`cerebrum train mgm --set ...`."""

import argparse

import pytest

from cerebrum import cli
from cerebrum.cli_mgm import add_command


def parse(argv):
    parser = argparse.ArgumentParser(prog="cerebrum")
    add_command(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


SEED_FLAGS = ["mgm", "--hidden-dim", "128", "--experts-num", "16", "--k-experts", "4",
              "--num-heads", "12", "--learning-rate", "0.003", "--seq-len", "32",
              "--dataset-conversational", "--amp-off", "--flash-attention-off",
              "--nuanced-routing", "--sample-size", "40", "--validation-steps", "1",
              "--stage-steps", "1", "--n-layer", "1", "--memory-slots", "4",
              "--memory-width", "16", "--batch-size", "2", "--answers", "2", "--quiet"]


def test_the_seeds_example_runs_and_reports(tmp_path, capsys):
    args = parse([*SEED_FLAGS, "--out", str(tmp_path / "run")])
    assert args.dataset_conversational == "builtin" and args.dataset_cot is None
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "done: step 5" in out and "expert load:" in out and "curvatures" in out
    assert "answer accuracy (2 fresh built-in examples)" in out
    assert (tmp_path / "run" / "data" / "conversational.jsonl").is_file()
    # --skip-setup: no calibration stage (1 + 1 + 1 + 2 steps) ...
    args = parse([*SEED_FLAGS, "--skip-setup", "--stage-steps", "1,1,1,1,2",
                  "--out", str(tmp_path / "run2")])
    assert args.stage_steps == [1, 1, 1, 1, 2]
    assert args.handler(args) == 0
    assert "done: step 5" in capsys.readouterr().out
    # ... and it resumes the run in --out: a longer last stage continues from step 5
    args = parse([*SEED_FLAGS, "--skip-setup", "--stage-steps", "1,1,1,1,3",
                  "--out", str(tmp_path / "run2")])
    assert args.handler(args) == 0
    assert "done: step 6" in capsys.readouterr().out


def test_a_users_jsonl_is_a_subset(tmp_path, capsys):
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(f'{{"text": "Q: {i} plus 1?\\nA: {i + 1}\\n"}}\n'
                            for i in range(60)))
    args = parse(["mgm", "--dataset-cot", str(data), "--hidden-dim", "16", "--num-heads", "2",
                  "--experts-num", "8", "--n-layer", "1", "--seq-len", "16",
                  "--stage-steps", "1", "--memory-slots", "0", "--batch-size", "2",
                  "--quiet", "--out", str(tmp_path / "r")])
    assert args.handler(args) == 0
    assert "answer accuracy" not in capsys.readouterr().out  # no built-in subset
    args = parse(["mgm", "--dataset-cot", str(tmp_path / "none.jsonl"),
                  "--out", str(tmp_path / "r2")])
    with pytest.raises(FileNotFoundError, match="--dataset-cot: no such file"):
        args.handler(args)


def test_bad_flags_are_clear_errors(tmp_path):
    with pytest.raises(SystemExit):
        parse(["mgm", "--stage-steps", "a,b"])
    args = parse(["mgm", "--k-experts", "20", "--experts-num", "16", "--sample-size", "5",
                  "--out", str(tmp_path / "r")])
    with pytest.raises(ValueError, match=r"k_experts must be <= experts_num \(16\)"):
        args.handler(args)


def test_the_same_settings_through_cerebrum_train(tmp_path, capsys):
    corpus = tmp_path / "c"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"f{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 3)
    assert cli.main(["train", "mgm", "--corpus", str(corpus), "--validation", "0.1",
                     "--out", str(tmp_path / "run"), "--set", "hidden_dim=16",
                     "--set", "num_heads=2", "--set", "experts_num=8", "--set", "k_experts=2",
                     "--set", "n_layer=1", "--set", "seq_len=16", "--set", "stage_steps=1",
                     "--set", "amp_off=true", "--set", "nuanced_routing=true",
                     "--set", "batch_size=2", "--set", "memory_slots=2",
                     "--set", "verbose=false", "--steps", "5"]) == 0
    assert "done: step 5" in capsys.readouterr().out
