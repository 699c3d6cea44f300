"""``flushmany``'s progress: a bar on a terminal, a line per model otherwise."""

from __future__ import annotations

import os
import pty
import subprocess

from tests.listener_processes import Database
from tests.processes import FLASK, ROOT

COMMAND = [FLASK, "--app", "tests.listener_app", "signalbus", "flushmany"]


def run_on_terminal(env: dict[str, str]) -> tuple[int, str]:
    """Run flushmany with its stderr on a pseudo-terminal; its status and what the terminal got."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        COMMAND, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=terminal
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    return process.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def test_on_a_terminal_a_bar_shows_each_model_going(
    database: Database, env: dict[str, str]
) -> None:
    database.insert("tick", 1, 2_500)
    status, output = run_on_terminal(env)
    assert status == 0, output
    assert "Tick" in output and "[####" in output
    assert "2500/2500" in output  # the bar reached the backlog it measured
    assert "Sent 2500 Tick signals in " in output
    assert len(database.sent()) == 2_500


def test_otherwise_a_line_per_model_and_no_bar(database: Database, env: dict[str, str]) -> None:
    database.insert("tick", 1, 300)
    result = subprocess.run(COMMAND, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert any("Sent 300 Tick signals in " in line for line in lines), result.stderr
    assert any("Sent 0 Flaky signals in " in line for line in lines), result.stderr
    assert "[#" not in result.stderr
