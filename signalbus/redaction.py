"""Keeping secrets out of log lines, error messages and reprs.

Every log and error path of signalbus that may show a URL, or a driver's
message that may quote one, goes through this module: :func:`redact_url`
for URLs, a :class:`Redactor` for any other text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

import sqlalchemy as sa

__all__ = ["MASK", "Redactor", "redact_url", "url_secrets"]

#: What a secret is replaced with.
MASK = "***"

_QUERY_PASSWORD = re.compile(r"(?:^|(?<=&))password=[^&#]*")


def redact_url(url: str | sa.URL) -> str:
    """Return *url* with every password it carries replaced by ``***``.

    Passwords are found in the user information (``scheme://user:password@host``)
    and as a ``password`` query parameter (libpq takes one). The rest of the URL
    is kept as written. A string that cannot be parsed as a URL becomes
    ``"<unparsable URL>"``.

    >>> redact_url("amqp://user:secret@host:5672/%2F")
    'amqp://user:***@host:5672/%2F'
    """
    text = _as_text(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return "<unparsable URL>"
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.partition(":")[0]
        parts = parts._replace(netloc=f"{user}:{MASK}@{hostinfo}")
    query = _QUERY_PASSWORD.sub(f"password={MASK}", parts.query)
    return urlunsplit(parts._replace(query=query))


def url_secrets(url: str | sa.URL) -> list[str]:
    """Return the passwords *url* carries, in every form a message may quote them.

    Each password found by :func:`redact_url` comes as written in the URL,
    percent-decoded and percent-encoded.
    """
    try:
        parts = urlsplit(_as_text(url))
        password = parts.password
    except ValueError:
        return []
    written = [password] if password else []
    written += [value for key, value in parse_qsl(parts.query, keep_blank_values=True)
                if key == "password" and value]  # fmt: skip
    forms = {form for secret in written for form in (secret, unquote(secret), quote(secret, ""))}
    return sorted(forms, key=len, reverse=True)


class Redactor:
    """Replaces each of a set of secrets in a text by ``***``.

    >>> Redactor.for_urls("amqp://guest:s3cret@host/").redact("login s3cret refused")
    'login *** refused'
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        # Longest first: a secret containing another one is masked whole.
        self._secrets = sorted({secret for secret in secrets if secret}, key=len, reverse=True)

    @classmethod
    def for_urls(cls, *urls: str | sa.URL) -> Redactor:
        """Return a redactor of every password that *urls* carry (see :func:`url_secrets`)."""
        return cls(secret for url in urls for secret in url_secrets(url))

    def redact(self, text: str) -> str:
        """Return *text* with every secret replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    __call__ = redact


def _as_text(url: str | sa.URL) -> str:
    if isinstance(url, sa.URL):
        return url.render_as_string(hide_password=False)
    return url
