"""The libpq settings of signalbus's connections."""

from __future__ import annotations

import psycopg
import pytest

from signalbus.conninfo import connection_defaults, libpq_conninfo


def test_libpq_conninfo_keeps_what_the_url_says() -> None:
    conninfo = libpq_conninfo(
        "postgresql+psycopg://u@h:5433/d?keepalives_idle=300", keepalives_idle=15, keepalives=1
    )
    parameters = psycopg.conninfo.conninfo_to_dict(conninfo)
    assert parameters["keepalives_idle"] == "300"
    assert str(parameters["keepalives"]) == "1"
    assert (parameters["host"], str(parameters["port"]), parameters["dbname"]) == ("h", "5433", "d")


@pytest.mark.parametrize("query", ["", "?connect_timeout=3"])
def test_connection_defaults_leave_the_url_its_own_settings(query: str) -> None:
    defaults = connection_defaults(f"postgresql+psycopg://h/d{query}", application_name="x")
    assert defaults["application_name"] == "x"
    assert ("connect_timeout" in defaults) == (query == "")
    assert defaults["keepalives_idle"] == 15
