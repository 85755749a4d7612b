"""What a new user meets first: --version, help on every option, and pipes that end early."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from agentcpt.cli import build_parser
from synth.runstate import RunDir

REPO = Path(__file__).resolve().parents[2]


def agentcpt(*args: str) -> list[str]:
    return [sys.executable, "-m", "agentcpt.cli", *args]


def test_version_prints_the_installed_distributions_version() -> None:
    proc = subprocess.run(agentcpt("--version"), capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == f"agentcpt {version('agentcpt')}"


def _parsers(parser: argparse.ArgumentParser, path: str = "agentcpt") -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, f"{path} {name}")
    return found


def test_every_command_option_and_argument_has_help() -> None:
    missing = []
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{path} {c.dest}" for c in action._choices_actions if not c.help]  # the commands
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{path}: {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_status_json_into_a_pipe_closed_early_ends_quietly(tmp_path: Path) -> None:
    RunDir(tmp_path / "runs" / "r1").mark("running")
    proc = subprocess.Popen(
        agentcpt("status", "r1", "--json", "--output-dir", str(tmp_path / "runs")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `| head` that already has what it wants: the write gets EPIPE
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert stderr == ""
