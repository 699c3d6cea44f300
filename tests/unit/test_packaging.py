"""What the wheel installs, read from pyproject.toml the way setuptools reads its lists.

The wheel holds the signalbus package, every subpackage of it, and the trigger DDL of the
top-level sql/ directory as signalbus.sql; nothing else at the top level (refapp and bench
run from a checkout).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setuptools_config() -> dict[str, Any]:
    config: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["setuptools"]


def package_dir(name: str, config: dict[str, Any]) -> Path:
    """The directory setuptools installs package *name* from."""
    mapped = config.get("package-dir", {}).get(name)
    return ROOT / (mapped if mapped else name.replace(".", "/"))


def test_only_signalbus_is_installed(setuptools_config: dict[str, Any]) -> None:
    packages = setuptools_config["packages"]
    assert isinstance(packages, list)  # listed, not found (see pyproject.toml)
    assert {name.partition(".")[0] for name in packages} == {"signalbus"}


def test_every_package_of_signalbus_is_listed(setuptools_config: dict[str, Any]) -> None:
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "signalbus").rglob("__init__.py")
    }
    assert set(setuptools_config["packages"]) == on_disk | {"signalbus.sql"}
    for name in setuptools_config["packages"]:
        assert (package_dir(name, setuptools_config) / "__init__.py").is_file(), name


def test_the_trigger_sql_is_installed_as_signalbus_sql(setuptools_config: dict[str, Any]) -> None:
    assert package_dir("signalbus.sql", setuptools_config) == ROOT / "sql"
    assert setuptools_config["package-data"]["signalbus.sql"] == ["*.sql"]
    assert list((ROOT / "sql").glob("*.sql"))
    assert not list((ROOT / "signalbus").rglob("*.sql"))  # one copy, in sql/
