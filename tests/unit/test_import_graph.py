"""What importing the core of signalbus drags in: neither the embedded server nor pika."""

from __future__ import annotations

import json
import subprocess
import sys

CORE = (
    "signalbus",
    "signalbus.cli",
    "signalbus.listener",
    "signalbus.bus",
    "signalbus.flush",
    "signalbus.triggers",
    "signalbus.alembic",
)

_PROGRAM = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def test_core_modules_import_neither_the_embedded_server_nor_pika() -> None:
    # A fresh interpreter: this one has imported everything the other tests needed.
    result = subprocess.run(
        [sys.executable, "-c", _PROGRAM, *CORE], capture_output=True, text=True, check=True
    )
    modules = json.loads(result.stdout)
    assert "signalbus.embedded" not in modules
    assert [name for name in modules if name == "pika" or name.startswith("pika.")] == []
