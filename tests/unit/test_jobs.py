from __future__ import annotations

from typing import Any

import pytest

from asyncjobs import DuplicateJobError, JobDefinitionError, Registry, job


def test_function_and_class_jobs_get_snake_case_names() -> None:
    registry = Registry()

    @job(registry=registry)
    async def send_invoice(ctx: dict[str, Any], invoice_id: int) -> None: ...

    @job(registry=registry, queue="billing", timeout=30)
    class ChargeCardJob:
        async def perform(self, card_id: int) -> None: ...

    assert sorted(registry.names()) == ["charge_card_job", "send_invoice"]
    spec = registry.get("charge_card_job")
    assert (spec.queue, spec.timeout, spec.is_class) == ("billing", 30.0, True)
    assert registry.resolve(ChargeCardJob) is spec
    assert registry.resolve("send_invoice").target is send_invoice


def test_two_jobs_with_one_name_is_an_error_at_registration() -> None:
    registry = Registry()

    @job(registry=registry)
    async def invoice_job(ctx: dict[str, Any]) -> None: ...

    with pytest.raises(DuplicateJobError, match="'invoice_job' is taken by .*invoice_job.*Rename"):

        @job(registry=registry)
        class InvoiceJob:
            async def perform(self) -> None: ...

    assert registry.get("invoice_job").target is invoice_job


def test_reregistering_the_same_definition_is_not_a_duplicate() -> None:
    registry = Registry()

    async def ping(ctx: dict[str, Any]) -> None: ...

    job(registry=registry)(ping)
    job(registry=registry)(ping)
    assert len(registry) == 1


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (lambda ctx: None, "is not a job"),
        (type("NoPerform", (), {}), "must define 'async def perform"),
    ],
)
def test_things_that_cannot_be_jobs_are_refused(target: Any, message: str) -> None:
    with pytest.raises(JobDefinitionError, match=message):
        job(registry=Registry())(target)


def test_job_parameters_may_not_start_with_underscore() -> None:
    async def bad(ctx: dict[str, Any], _secret: int) -> None: ...

    with pytest.raises(JobDefinitionError, match="'_secret'.*may not start with '_'"):
        job(registry=Registry())(bad)


def test_unknown_decorator_option_is_refused() -> None:
    with pytest.raises(JobDefinitionError, match="unknown option.*queu"):
        job(queu="x")  # type: ignore[call-overload]


def test_bad_custom_name_is_refused() -> None:
    async def f(ctx: dict[str, Any]) -> None: ...

    with pytest.raises(JobDefinitionError, match="not valid"):
        job(name="Bad Name!", registry=Registry())(f)
