"""The `asyncjobs` command in a subprocess, where it needs no server: help, the jobs it
knows, and a missing or malformed setting named in one error."""

from __future__ import annotations

from tests.conftest import cli


def test_help_lists_the_environment_variables() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for var in ("ASYNCJOBS_REDIS_URL", "ASYNCJOBS_DATABASE_URL", "ASYNCJOBS_IMPORTS"):
        assert var in result.stdout


def test_cli_migrate_without_a_database_url_says_how_to_set_one() -> None:
    result = cli("migrate")
    assert result.returncode == 1
    assert "ASYNCJOBS_DATABASE_URL is not set" in result.stderr
    assert "asyncjobs dev" in result.stderr


def test_cli_rejects_a_malformed_url_naming_the_variable() -> None:
    result = cli("migrate", env={"ASYNCJOBS_DATABASE_URL": "mysql://nope"})
    assert result.returncode != 0
    assert "ASYNCJOBS_DATABASE_URL must start with postgres:// or postgresql://" in result.stderr


def test_cli_jobs_list_shows_registered_jobs() -> None:
    result = cli("jobs", "list", env={"ASYNCJOBS_IMPORTS": "tests.workerjobs"})
    assert result.returncode == 0, result.stderr
    assert "invoice_job" in result.stdout
    assert "tests.workerjobs.InvoiceJob" in result.stdout
    assert "record_args" in result.stdout
