"""Keeping passwords out of URLs and texts shown to people."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from signalbus.redaction import Redactor, redact_url, url_secrets

PG_URL = "postgresql+psycopg://user:pw-one@db.example:6543/shop?password=pw-two&sslmode=require"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:guest@localhost:5672/%2F", "amqp://guest:***@localhost:5672/%2F"),
        ("amqps://u:p%40ss%2F@host/vh?heartbeat=30", "amqps://u:***@host/vh?heartbeat=30"),
        ("amqp://u:p@ss@host", "amqp://u:***@host"),
        ("amqp://:secret@[::1]:5672/", "amqp://:***@[::1]:5672/"),
        ("amqp://u:@host", "amqp://u:***@host"),
        ("amqp://user@host:5672/%2F", "amqp://user@host:5672/%2F"),
        ("amqp://host", "amqp://host"),
        ("amqp://localhost/?x=a@b", "amqp://localhost/?x=a@b"),
        ("amqp://u:secret@[::1", "<unparsable URL>"),
        (PG_URL, "postgresql+psycopg://user:***@db.example:6543/shop?password=***&sslmode=require"),
        (
            "postgresql://h/d?sslmode=require&password=x",
            "postgresql://h/d?sslmode=require&password=***",
        ),
        ("postgresql://h/d?xpassword=1", "postgresql://h/d?xpassword=1"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_takes_sqlalchemy_urls() -> None:
    url = sa.make_url("postgresql://u:p%40ss@h/d")
    assert redact_url(url) == "postgresql://u:***@h/d"


def test_url_secrets_come_in_every_form() -> None:
    assert set(url_secrets(PG_URL)) >= {"pw-one", "pw-two"}
    assert {"p@ss/", "p%40ss%2F"} <= set(url_secrets("amqps://u:p%40ss%2F@host/"))
    assert url_secrets("postgresql://db/shop") == []
    assert url_secrets("amqp://u:secret@[::1") == []


def test_redactor_masks_the_longest_secret_whole() -> None:
    redact = Redactor(["abc", "abcdef", None, ""])
    assert redact("x abcdef y abc") == "x *** y ***"
    assert Redactor()("nothing to hide") == "nothing to hide"


def test_redactor_for_urls() -> None:
    redact = Redactor.for_urls(PG_URL, sa.make_url("amqp://g:p%40ss@h/"))
    assert redact("pw-one pw-two p@ss p%40ss") == "*** *** *** ***"
