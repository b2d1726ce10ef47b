from __future__ import annotations

import pytest

from asyncjobs import ConfigurationError, Settings


def test_from_env_reads_prefixed_variables() -> None:
    s = Settings.from_env(
        {
            "ASYNCJOBS_REDIS_URL": "redis://cache:6380/2",
            "ASYNCJOBS_DATABASE_URL": "postgresql://app@db/app",
            "ASYNCJOBS_IMPORTS": "app.jobs, app.more_jobs,",
            "ASYNCJOBS_MAX_JOBS": "25",
            "ASYNCJOBS_REDIS_TIMEOUT": "0.5",
            "ASYNCJOBS_LOG_FORMAT": "JSON",
        }
    )
    assert s.redis_url == "redis://cache:6380/2"
    assert s.database_url == "postgresql://app@db/app"
    assert s.imports == ("app.jobs", "app.more_jobs")
    assert s.max_jobs == 25
    assert s.redis_timeout == 0.5
    assert s.log_format == "json"


def test_unset_urls_are_none_until_required() -> None:
    s = Settings.from_env({})
    assert s.redis_url is None
    with pytest.raises(ConfigurationError, match="ASYNCJOBS_REDIS_URL is not set.*asyncjobs dev"):
        s.require_redis_url()
    with pytest.raises(ConfigurationError, match="ASYNCJOBS_DATABASE_URL is not set"):
        s.require_database_url()


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("ASYNCJOBS_REDIS_URL", "http://localhost:6379", "ASYNCJOBS_REDIS_URL must start with"),
        ("ASYNCJOBS_REDIS_URL", "redis://localhost:notaport/0", "ASYNCJOBS_REDIS_URL is malformed"),
        ("ASYNCJOBS_REDIS_URL", "redis://", "ASYNCJOBS_REDIS_URL has no host"),
        ("ASYNCJOBS_DATABASE_URL", "mysql://x@db/app", "ASYNCJOBS_DATABASE_URL must start with"),
        ("ASYNCJOBS_MAX_JOBS", "many", "ASYNCJOBS_MAX_JOBS must be a whole number"),
        ("ASYNCJOBS_MAX_JOBS", "0", "ASYNCJOBS_MAX_JOBS must be at least 1"),
        ("ASYNCJOBS_REDIS_TIMEOUT", "-1", "ASYNCJOBS_REDIS_TIMEOUT must be a positive"),
        ("ASYNCJOBS_POLL_DELAY", "soon", "ASYNCJOBS_POLL_DELAY must be a number of seconds"),
        ("ASYNCJOBS_LOG_FORMAT", "xml", "ASYNCJOBS_LOG_FORMAT must be one of"),
    ],
)
def test_a_bad_variable_is_one_clear_error_naming_it(var: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env({var: value})


def test_messages_do_not_leak_passwords() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"ASYNCJOBS_REDIS_URL": "http://user:s3cret@host:6379"})
    assert "s3cret" not in str(info.value)
    assert "***" in str(info.value)


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.max_jobs = 3  # type: ignore[misc]


def test_the_pooling_settings_are_read_and_a_bad_one_is_one_line_naming_it() -> None:
    s = Settings.from_env(
        {
            "ASYNCJOBS_DATABASE_LISTEN_URL": "postgresql://app@db-primary:5432/app",
            "ASYNCJOBS_DATABASE_POOL_MODE": "Transaction",
        }
    )
    assert s.database_listen_url == "postgresql://app@db-primary:5432/app"
    assert s.database_pool_mode == "transaction"
    assert Settings.from_env({}).database_pool_mode == "auto"
    for var, value, message in [
        (
            "ASYNCJOBS_DATABASE_POOL_MODE",
            "statement",
            "ASYNCJOBS_DATABASE_POOL_MODE must be one of",
        ),
        (
            "ASYNCJOBS_DATABASE_LISTEN_URL",
            "redis://x/0",
            "ASYNCJOBS_DATABASE_LISTEN_URL must start",
        ),
        (
            "ASYNCJOBS_DATABASE_LISTEN_URL",
            "postgresql://",
            "ASYNCJOBS_DATABASE_LISTEN_URL has no host",
        ),
    ]:
        with pytest.raises(ConfigurationError, match=message) as info:
            Settings.from_env({var: value})
        assert "\n" not in str(info.value)
