"""libpq settings and URLs fit for log lines."""

from __future__ import annotations

import psycopg
import pytest

from signalbus.conninfo import connection_defaults, display_url, libpq_conninfo, url_passwords

URL = "postgresql+psycopg://user:pw-one@db.example:6543/shop?password=pw-two&sslmode=require"


def test_display_url_hides_every_password() -> None:
    shown = display_url(URL)
    assert "pw-one" not in shown and "pw-two" not in shown
    assert shown.startswith("postgresql+psycopg://user:***@db.example:6543/shop?")
    assert "password=***" in shown and "sslmode=require" in shown


def test_url_passwords() -> None:
    assert url_passwords(URL) == ["pw-one", "pw-two"]
    assert url_passwords("postgresql://db/shop") == []


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
