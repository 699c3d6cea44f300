"""How tests/postgres_fixtures.py picks the test session's PostgreSQL server."""

from __future__ import annotations

import pytest

from tests.postgres_fixtures import LOCAL_SERVER, PgServer, select_pg_server, server_from_url


def test_select_pg_server_prefers_env_url() -> None:
    env = {"SIGNALBUS_TEST_DATABASE_URL": "postgresql://root:s%40cret@db.example:6543/test"}
    server = select_pg_server(env, probe=lambda _: pytest.fail("must not probe"))
    assert server == PgServer("db.example", 6543, "root", "s@cret", "test")
    assert server.maintenance_dbname == "test"
    assert server.url("x") == "postgresql+psycopg://root:s%40cret@db.example:6543/x"


def test_select_pg_server_falls_back_to_local_then_embedded() -> None:
    assert select_pg_server({}, probe=lambda s: s == LOCAL_SERVER) == LOCAL_SERVER
    assert select_pg_server({"SIGNALBUS_TEST_DATABASE_URL": ""}, probe=lambda s: False) is None
    assert server_from_url("postgresql://127.0.0.1/") == PgServer("127.0.0.1", 5432, "postgres")
