"""URL helpers shared by every layer: the one place a secret is taken out of a URL.

Every URL or DSN that reaches a repr, a log line, an exception or the CLI goes through
:func:`redact`. It works on the text, not on :func:`urllib.parse.urlsplit`, because the
URLs it must handle are often not valid: a password with a raw ``@``, ``/``, ``?`` or
``#`` in it, several hosts (``redis+sentinel://:pw@h1:1,h2:2/svc``), no host at all
(``unix://:pw@/run/redis.sock?db=1``), a password in the query (``?password=pw``) or a
libpq keyword DSN (``host=db password=pw``). When the text is ambiguous it hides more
rather than less: the userinfo ends at the last ``@``, even one in the query.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["redact", "scrub", "secrets_of"]

MASK = "***"

# Query parameters (and libpq keywords) whose value is a secret.
_SECRET_NAMES = r"[\w.\-]*pass(?:word|wd)?|pwd"  # password, sslpassword, sentinel_password...
_QUERY_SECRET = re.compile(rf"(?i)(^|[?&;])({_SECRET_NAMES})=([^&;#]*)")
_KEYWORD_SECRET = re.compile(rf"(?i)(^|\s)({_SECRET_NAMES})(\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)")
# Below this length a secret cannot be told from ordinary text (see :func:`scrub`).
_MIN_SCRUBBED = 3


def _userinfo(url: str) -> tuple[str, str, str] | None:
    """``(head, userinfo, rest)``: ``head`` up to ``//`` (empty without one), ``rest`` from
    the host on; or None when ``url`` has no ``user[:password]@`` part."""
    start = url.find("//")  # no scheme check: "redis//:pw@host" must not leak either
    if start >= 0:
        head, body = url[: start + 2], url[start + 2 :]
    elif any(c.isspace() for c in url):
        return None  # a keyword DSN ("host=db password=pw"), or prose
    else:
        head, body = "", url  # no "//" at all: "app:pw@db/app"
    # A password may hold a raw "@", "/", "?" or "#": the userinfo ends at the LAST "@".
    # An "@" in the query ("?application_name=me@x") then hides the host too: more
    # hidden, never less.
    at = body.rfind("@")
    if at < 0:
        return None
    return head, body[:at], body[at + 1 :]


def redact(url: str) -> str:
    """``url`` with every password replaced by ``***``, for logs, reprs, errors and the CLI.

    Handles the password of the userinfo (``user:pw@``), ``password=``/``pass=`` query
    parameters, libpq keyword DSNs, and malformed URLs. The user name and the host stay.

    Example:
        >>> redact("redis://:s3cret@cache:6379/2")
        'redis://:***@cache:6379/2'
        >>> redact("postgresql://app:p@ss/word@db/app")
        'postgresql://app:***@db/app'
        >>> redact("redis+sentinel://:pw@h1:26379,h2:26379/mymaster?sentinel_password=pw2")
        'redis+sentinel://:***@h1:26379,h2:26379/mymaster?sentinel_password=***'
        >>> redact("unix:///run/redis.sock?db=1&password=s3cret")
        'unix:///run/redis.sock?db=1&password=***'
        >>> redact("host=db user=app password='s3 cret'")
        'host=db user=app password=***'
    """
    parts = _userinfo(url)
    if parts is not None:
        head, userinfo, rest = parts
        user, colon, password = userinfo.partition(":")
        if colon and password:
            url = f"{head}{user}:{MASK}@{rest}"
    url = _QUERY_SECRET.sub(lambda m: f"{m[1]}{m[2]}={MASK}" if m[3] else m[0], url)
    if "://" not in url:
        url = _KEYWORD_SECRET.sub(lambda m: f"{m[1]}{m[2]}{m[3]}{MASK}" if m[4] else m[0], url)
    return url


def secrets_of(url: str, *extra: object) -> tuple[str, ...]:
    """The passwords in ``url`` (as written and percent-decoded), and the ``extra`` ones
    that are non-empty strings: what :func:`scrub` takes out of error texts.

    Example:
        >>> secrets_of("redis://:p%40ss@cache/0", None)
        ('p%40ss', 'p@ss')
    """
    found: list[str] = []
    parts = _userinfo(url)
    if parts is not None:
        found.append(parts[1].partition(":")[2])
    found += [m[3] for m in _QUERY_SECRET.finditer(url)]
    if "://" not in url:
        found += [m[4].strip("'") for m in _KEYWORD_SECRET.finditer(url)]
    found += [s for s in extra if isinstance(s, str)]
    both = [variant for secret in found for variant in (secret, unquote(secret))]
    return tuple(dict.fromkeys(s for s in both if s))


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every occurrence of ``secrets`` (see :func:`secrets_of`) masked.

    For error messages built from a driver's text, which might quote what it was given.
    Secrets shorter than 3 characters are left alone: they cannot be told apart from the
    rest of the text.

    Example:
        >>> scrub("AUTH failed for s3cret", ("s3cret",))
        'AUTH failed for ***'
    """
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= _MIN_SCRUBBED and secret in text:
            text = text.replace(secret, MASK)
    return text
