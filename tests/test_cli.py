"""The `cerebrum` command line, end to end."""

import subprocess
import sys

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
