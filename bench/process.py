"""A benchmark's subprocess whose output goes to a log file."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


class LoggedProcess:
    """A subprocess whose stdout and stderr go to *log_file*; started once *ready* is logged."""

    def __init__(
        self, command: list[str], env: dict[str, str], log_file: Path, ready: str = "listening"
    ) -> None:
        self.log_file = log_file
        with log_file.open("w") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        self.wait_for_log(ready)

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        """Wait until *text* is in the log; raise if the process exits or *timeout* s pass."""
        deadline = time.monotonic() + timeout
        while text not in self.log_file.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.log_file.read_text()
                raise RuntimeError(f"{text!r} did not appear in the log:\n{log}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Terminate the process; kill it if it has not exited within 10 s."""
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
