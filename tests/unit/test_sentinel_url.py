"""``ASYNCJOBS_REDIS_URL=redis+sentinel://...``: how it is read, and what a bad one says."""

from __future__ import annotations

import pytest

from asyncjobs import ConfigurationError, Settings
from asyncjobs._arq import RedisSettings, redis_settings
from asyncjobs._redis_url import SentinelURL, parse_sentinel_url
from asyncjobs._settings import redact


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database() -> None:
    settings = Settings.from_env(
        {"ASYNCJOBS_REDIS_URL": "redis+sentinel://:s%40cret@s1:26380,s2,[::1]:26381/jobs/3"}
    )
    assert settings.redis_sentinel == SentinelURL(
        sentinels=(("s1", 26380), ("s2", 26379), ("::1", 26381)),
        service="jobs",
        db=3,
        username=None,
        password="s@cret",
    )
    assert "s@cret" not in repr(settings.redis_sentinel)


def test_the_database_defaults_to_0_and_a_user_may_be_given() -> None:
    found = parse_sentinel_url("redis+sentinel://app:pw@s1:26379/jobs")
    assert found == SentinelURL((("s1", 26379),), "jobs", 0, "app", "pw")


def test_other_schemes_are_no_sentinel_urls() -> None:
    assert parse_sentinel_url("redis://localhost:6379/0") is None
    assert Settings(redis_url="redis://localhost:6379/0").redis_sentinel is None
    assert Settings().redis_sentinel is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://s1:26379", "names no service"),
        ("redis+sentinel://s1:26379/", "names no service"),
        ("redis+sentinel://s1:port/jobs", "has 'port' where a Sentinel's port goes"),
        ("redis+sentinel://s1:70000/jobs", "has '70000' where a Sentinel's port goes"),
        ("redis+sentinel://s1,,s2/jobs", "has an empty Sentinel address"),
        ("redis+sentinel:///jobs", "has an empty Sentinel address"),
        ("redis+sentinel://s1/jobs/zero", "has 'zero' where the database number goes"),
        ("redis+sentinel://s1/jobs/0/1", "has '0/1' where the database number goes"),
        ("redis+sentinel://s1/jobs?db=1", "takes no query string"),
    ],
)
def test_a_malformed_sentinel_url_is_one_error_showing_the_expected_form(
    url: str, message: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"ASYNCJOBS_REDIS_URL": url})
    said = str(info.value)
    assert said.startswith("ASYNCJOBS_REDIS_URL ")
    assert message in said
    assert said.endswith(
        "expected redis+sentinel://[[user]:password@]host1:26379,host2:26379/<service>/<db>"
    )


def test_a_bad_sentinel_url_does_not_show_its_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(redis_url="redis+sentinel://app:s3cret@s1:x/jobs")
    assert "s3cret" not in str(info.value)
    assert "app:***@" in str(info.value)
    assert redact("redis+sentinel://:s3cret@s1,s2/jobs/0") == "redis+sentinel://:***@s1,s2/jobs/0"


def test_arq_gets_its_own_sentinel_mode_for_the_workers_start() -> None:
    """arq's ``Worker`` connects with these before handing over to asyncjobs' loop."""
    rs = redis_settings(Settings(redis_url="redis+sentinel://:pw@s1:26380,s2/jobs/2"))
    assert isinstance(rs, RedisSettings)
    assert (rs.sentinel, rs.host, rs.sentinel_master) == (
        True,
        [("s1", 26380), ("s2", 26379)],
        "jobs",
    )
    assert (rs.database, rs.password) == (2, "pw")
