"""Reading a Redis URL, the `redis` settings and the credential variables into one target (pure)."""

from __future__ import annotations

import pytest

from agent_runtime import errors
from agent_runtime.redisconn import RedisMode, RedisSettings, RedisTarget, location, parse

STANDALONE, CLUSTER, SENTINEL = RedisMode.STANDALONE, RedisMode.CLUSTER, RedisMode.SENTINEL
CASES = [
    ("redis://r:6380/2", None, RedisTarget(STANDALONE, (("r", 6380),), db=2)),
    (
        "rediss://u:p%40ss@r",
        None,
        RedisTarget(STANDALONE, (("r", 6379),), username="u", password="p@ss", tls=True),
    ),
    ("redis+cluster://a:7000,b,[::1]:7002", None, RedisTarget(CLUSTER, (("a", 7000), ("b", 6379), ("::1", 7002)))),
    ("rediss://cfg:6379", RedisSettings(mode=CLUSTER), RedisTarget(CLUSTER, (("cfg", 6379),), tls=True)),
    (
        "redis+sentinel://s1,s2:26380/agents/3",
        None,
        RedisTarget(SENTINEL, (("s1", 26379), ("s2", 26380)), db=3, master_name="agents"),
    ),
    (
        "redis://s1:26379",
        RedisSettings(mode=SENTINEL, master_name="m", tls_ca_file="/ca.crt"),
        RedisTarget(SENTINEL, (("s1", 26379),), master_name="m", tls=True, tls_ca_file="/ca.crt"),
    ),
]


@pytest.mark.parametrize(("url", "settings", "expected"), CASES)
def test_parse(url: str, settings: RedisSettings | None, expected: RedisTarget) -> None:
    assert parse(url, settings, environ={}) == expected


def test_credentials_from_the_environment_win_over_the_url() -> None:
    target = parse("redis://u:old@r", environ={"AGENT_REDIS_USERNAME": "svc", "AGENT_REDIS_PASSWORD": "new"})
    assert (target.username, target.password) == ("svc", "new")


@pytest.mark.parametrize(
    ("url", "settings", "message"),
    [
        ("http://r", None, "scheme"),
        ("redis+sentinel://s1:26379", None, "master name"),
        ("redis+cluster://a:7000/1", None, "only database 0"),
        ("redis://a,b", None, "names one host"),
        ("redis://r/queue", None, "must be a number"),
        ("redis+cluster://a", RedisSettings(mode=RedisMode.SENTINEL), "says cluster"),
    ],
)
def test_parse_refuses_with_a_reason(url: str, settings: RedisSettings | None, message: str) -> None:
    with pytest.raises(errors.ConfigError, match=message):
        parse(url, settings, environ={})


def test_location_drops_credentials() -> None:
    assert location("rediss+sentinel://u:secret@s1:26379,s2/agents/0") == "rediss+sentinel://s1:26379,s2/agents/0"
