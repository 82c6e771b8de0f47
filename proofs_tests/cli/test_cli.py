"""The command line as a whole (refattn.cli): bad usage exits 2 without a traceback; `python -m refattn`
and the console script agree.
"""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["report", "--seq-len", "0"], ["report", "--seq-len", "x"], ["report", "--bogus"]],
)
def test_bad_usage_exits_2_without_traceback(argv):
    proc = subprocess.run([sys.executable, "-m", "refattn", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("refattn")


def test_python_dash_m_and_console_script_agree():
    proc = subprocess.run([sys.executable, "-m", "refattn", "info"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "refattn" in proc.stdout


def test_an_internal_error_exits_3_with_the_traceback(monkeypatch, capsys):
    """A plain exception from inside a subcommand is refattn's bug: exit 3, the traceback, and a
    request to report it; a boundary check's InputError stays a one-line usage error (exit 2)."""
    from refattn import cli
    from refattn._validation import InputError
    from refattn.cli import info

    def broken(args):
        raise ValueError("an internal invariant failed")

    monkeypatch.setattr(info, "run", broken)
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["info"].set_defaults(func=broken)
    assert cli.main(["info"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "an internal invariant failed" in err and "bug in refattn" in err

    def user_mistake(args):
        raise InputError("m: must be >= 1, got 0")

    parser._subparsers._group_actions[0].choices["info"].set_defaults(func=user_mistake)
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip() == "refattn info: error: m: must be >= 1, got 0"


def test_a_closed_pipe_is_not_an_error():
    """``refattn theory lemma2 --json | head -1``: the reader leaves early; no BrokenPipeError traceback."""
    import subprocess
    import sys

    p = subprocess.run(f"{sys.executable} -m refattn theory lemma2 --json | head -c 10", shell=True,
                       capture_output=True, text=True, timeout=300)
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr


@pytest.mark.parametrize("argv", [["report", "--seed", "-1"], ["theory", "lemma2", "--seed", "x"]])
def test_a_bad_seed_is_a_usage_error(argv, capsys):
    from refattn import cli

    assert cli.main(argv) == 2
    assert "--seed" in capsys.readouterr().err
