"""The CLI entry point: help lists the commands; a missing subcommand exits non-zero."""

import subprocess
import sys


def test_help_lists_bench():
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "--help"], capture_output=True, text=True, check=True)
    assert "bench" in out.stdout


def test_no_command_exits_2():
    from cluster.cli import main
    assert main([]) == 2
