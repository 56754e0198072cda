"""URL helpers shared by every layer: the one place a secret is taken out of a URL."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact"]


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs, reprs, errors and the CLI.

    Example:
        >>> redact("redis://:s3cret@cache:6379/2")
        'redis://:***@cache:6379/2'
        >>> redact("postgresql://app:pw@db/app")
        'postgresql://app:***@db/app'
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # an unparsable netloc: hide everything between // and @
        head, sep, rest = url.partition("//")
        return f"{head}{sep}***@{rest.rpartition('@')[2]}" if "@" in rest else url
    if password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
