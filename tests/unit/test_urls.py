"""taskguard.urls: the one redaction helper, against hostile passwords and odd URLs."""

from urllib.parse import quote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from taskguard.urls import redact, scrub, secrets_of


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:s3cret@cache:6379/2", "redis://:***@cache:6379/2"),
        ("redis://cache:6379/2", "redis://cache:6379/2"),
        ("redis://app@cache/0", "redis://app@cache/0"),  # a user name is not a secret
        # a raw "@", ":" or "/" in the password: the userinfo ends at the last "@"
        ("redis://app:p@ss@cache:6379/0", "redis://app:***@cache:6379/0"),
        ("redis://app:pa:ss@cache/0", "redis://app:***@cache/0"),
        ("redis://app:pa/ss@cache/0", "redis://app:***@cache/0"),
        ("redis://:p?ss#w@cache/0", "redis://:***@cache/0"),
        ("redis://:p%40ss@cache/0", "redis://:***@cache/0"),
        ("redis://:pässwörd@höst.example/0", "redis://:***@höst.example/0"),
        ("rediss://user:pw@host", "rediss://user:***@host"),
        (
            "rediss://user:pw@host:6380/0?ssl_cert_reqs=none",
            "rediss://user:***@host:6380/0?ssl_cert_reqs=none",
        ),
        ("unix://:pw@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        ("unix:///run/redis.sock?db=1&password=pw", "unix:///run/redis.sock?db=1&password=***"),
        ("redis://cache/0?pass=pw", "redis://cache/0?pass=***"),
        ("redis://cache/0?PASSWORD=pw&db=2", "redis://cache/0?PASSWORD=***&db=2"),
        ("redis+sentinel://:pw@h1:1,h2:2/svc", "redis+sentinel://:***@h1:1,h2:2/svc"),
        (
            "redis+sentinel://:pw@h1:1/svc?sentinel_password=pw2",
            "redis+sentinel://:***@h1:1/svc?sentinel_password=***",
        ),
        ("postgresql://app:pw@db:5432/app", "postgresql://app:***@db:5432/app"),
        (
            "postgresql+psycopg://app:p@w@db/app?sslmode=require&sslpassword=k",
            "postgresql+psycopg://app:***@db/app?sslmode=require&sslpassword=***",
        ),
        ("host=db user=app password=pw dbname=app", "host=db user=app password=*** dbname=app"),
        ("host=db password = 'p w' dbname=app", "host=db password = *** dbname=app"),
        # malformed: no port number, no colon after the scheme, IPv6
        ("redis://:pw@host:notaport/0", "redis://:***@host:notaport/0"),
        ("redis//:pw@host", "redis//:***@host"),
        ("app:pw@db/app", "app:***@db/app"),  # no scheme at all
        ("redis://:pw@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        ("not a url", "not a url"),
        ("", ""),
    ],
)
def test_redact(url: str, expected: str) -> None:
    assert redact(url) == expected


def test_an_at_sign_in_the_query_hides_more_never_less() -> None:
    redacted = redact("postgresql://app:pw@db/app?application_name=me@x")
    assert "pw" not in redacted
    assert redacted.startswith("postgresql://app:***@")


def test_secrets_of_gives_the_written_and_the_decoded_password() -> None:
    assert secrets_of("redis://:p%40ss@cache/0") == ("p%40ss", "p@ss")
    assert secrets_of("redis://cache/0?password=a%2Fb", None, "", "extra") == (
        "a%2Fb",
        "a/b",
        "extra",
    )
    assert secrets_of("redis://cache/0") == ()
    assert secrets_of("host=db password='p w'") == ("p w",)


def test_scrub_masks_secrets_of_three_characters_or_more() -> None:
    assert scrub("Error connecting with s3cret", ("s3cret",)) == "Error connecting with ***"
    assert scrub("a b c", ("a",)) == "a b c"  # too short to tell from the text around it


# ---------------------------------------------------------------- the property

_HOSTS = st.from_regex(r"\A[a-z][a-z0-9-]{2,12}(\.[a-z]{2,6})?\Z")
_PASSWORDS = st.text(min_size=3, max_size=40)
_USERS = st.sampled_from(["", "app", "default", "svc-user"])


def _forms(user: str, password: str, host: str) -> list[str]:
    encoded = quote(password, safe="")
    return [
        f"redis://{user}:{password}@{host}:6379/0",
        f"rediss://{user}:{password}@{host}:6380/1?ssl_cert_reqs=required",
        f"redis://{user}:{encoded}@{host}/0",
        f"redis+sentinel://{user}:{password}@{host}:26379,{host}-2:26379/mymaster",
        f"unix://{user}:{password}@/run/{host}.sock?db=1",
        f"redis://{host}:6379/0?db=1&password={encoded}",
        f"unix:///run/{host}.sock?pass={encoded}&db=2",
        f"postgresql://{user or 'app'}:{password}@{host}:5432/app?sslmode=require",
    ]


@given(user=_USERS, password=_PASSWORDS, host=_HOSTS)
def test_redacted_text_never_holds_the_password_and_shows_the_host(
    user: str, password: str, host: str
) -> None:
    encoded = quote(password, safe="")
    assume(password not in host and encoded not in host and password not in user)
    for url, rest in zip(_forms(user, password, host), _forms(user, "", host), strict=True):
        # `rest` is the URL around the password: a password that also shows there (as
        # "00/" does in host "a00" before path "/0") cannot be told apart from it.
        if password in rest or encoded in rest:
            continue
        redacted = redact(url)
        assert password not in redacted, url
        assert encoded not in redacted, url
        assert host in redacted, url
