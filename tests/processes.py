"""Subprocesses whose combined output the tests read as it comes."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
FLASK = str(Path(sys.executable).with_name("flask"))


class OutputProcess:
    """A process run in the project's root whose stdout and stderr are collected as it comes."""

    #: How long :meth:`wait_for_output` waits by default, in seconds.
    output_timeout: float = 30.0

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_output(self, text: str, timeout: float | None = None) -> None:
        """Wait until *text* is in the output; fail the test, showing it, after *timeout* s."""
        wait_until(
            lambda: text in self.output,
            self.output_timeout if timeout is None else timeout,
            lambda: f"{text!r} in the output:\n{self.output}",
        )

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit and return its status."""
        status = self.process.wait(timeout)
        self._reader.join(5)
        return status

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(5)
