"""Reading a payload's trace context: the worker's own reading of a plain ``traceparent``
gives what OpenTelemetry's propagator gives, and anything else goes to the propagator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from structlog.testing import capture_logs

from asyncjobs._tracing import Tracing

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"


def _read(tracing: Tracing, carrier: object) -> tuple[trace.SpanContext, list[dict[str, Any]]]:
    with capture_logs() as logs:
        found = tracing.parent(carrier, "job", "id", 1)
    return trace.get_current_span(found).get_span_context(), logs


def _propagator_reads(carrier: dict[str, str]) -> trace.SpanContext:
    found = propagate.extract(carrier, context=Context())
    return trace.get_current_span(found).get_span_context()


@pytest.mark.parametrize("flags", ["00", "01", "03"])
def test_a_plain_traceparent_is_read_as_the_propagator_reads_it(flags: str) -> None:
    tracing = Tracing()
    carrier = {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-{flags}"}
    assert tracing._w3c_parent(carrier) is not None  # read without the propagator
    read, logs = _read(tracing, carrier)
    assert read == _propagator_reads(carrier)
    assert (read.trace_id, read.span_id) == (int(TRACE_ID, 16), int(SPAN_ID, 16))
    assert read.is_remote
    assert read.trace_flags == int(flags, 16)
    assert logs == []


@pytest.mark.parametrize(
    "carrier",
    [
        {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01", "tracestate": "vendor=value"},
        {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01", "baggage": "customer=42"},
        {"traceparent": f"00-{TRACE_ID.upper()}-{SPAN_ID}-01"},
        {"traceparent": f"01-{TRACE_ID}-{SPAN_ID}-01-extra"},
        {"traceparent": f" 00-{TRACE_ID}-{SPAN_ID}-01"},
    ],
)
def test_anything_else_the_propagator_reads(carrier: dict[str, str]) -> None:
    tracing = Tracing()
    assert tracing._w3c_parent(carrier) is None
    read, _ = _read(tracing, carrier)
    assert read == _propagator_reads(carrier)
    if "tracestate" in carrier:
        assert read.trace_state.get("vendor") == "value"
    if "baggage" in carrier:
        found = tracing.parent(carrier, "job", "id", 1)
        assert baggage.get_baggage("customer", found) == "42"


@pytest.mark.parametrize(
    "carrier",
    [
        {"traceparent": f"00-{'0' * 32}-{SPAN_ID}-01"},
        {"traceparent": f"00-{TRACE_ID}-{'0' * 16}-01"},
        {"traceparent": "garbage"},
        {"traceparent": 42},
    ],
)
def test_an_unreadable_context_is_a_fresh_trace_with_a_warning(carrier: dict[str, Any]) -> None:
    read, logs = _read(Tracing(), carrier)
    assert not read.is_valid
    assert [entry["event"] for entry in logs] == ["trace.context_invalid"]


class _OwnHeader(TextMapPropagator):
    """A propagator of the application's own: the trace id and span id in ``x-trace``."""

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[Any] = default_getter,
    ) -> Context:
        value = (getter.get(carrier, "x-trace") or [""])[0]
        trace_id, _, span_id = value.partition(":")
        span = trace.NonRecordingSpan(
            trace.SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True)
        )
        return trace.set_span_in_context(span, context)

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[Any] = default_setter,
    ) -> None:
        pass

    @property
    def fields(self) -> set[str]:
        return {"x-trace"}


@pytest.fixture
def own_propagator() -> Iterator[None]:
    default = propagate.get_global_textmap()
    propagate.set_global_textmap(_OwnHeader())
    yield
    propagate.set_global_textmap(default)


@pytest.mark.usefixtures("own_propagator")
def test_a_propagator_the_application_set_is_the_one_that_reads() -> None:
    tracing = Tracing()
    carrier = {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01"}
    assert tracing._w3c_parent(carrier) is None
    read, _ = _read(tracing, {"x-trace": "abc:def"})
    assert (read.trace_id, read.span_id) == (0xABC, 0xDEF)


def _written_by_propagator(context: Context) -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier


@pytest.mark.parametrize("flags", [0, 1])
@pytest.mark.parametrize("state", ["", "vendor=value"])
@pytest.mark.parametrize("bag", [None, "42"])
def test_the_producer_writes_what_the_propagator_writes(
    flags: int, state: str, bag: str | None
) -> None:
    span = trace.NonRecordingSpan(
        trace.SpanContext(
            int(TRACE_ID, 16),
            int(SPAN_ID, 16),
            is_remote=False,
            trace_flags=trace.TraceFlags(flags),
            trace_state=trace.TraceState.from_header([state]) if state else None,
        )
    )
    context = trace.set_span_in_context(span, Context())
    if bag is not None:
        context = baggage.set_baggage("customer", bag, context)
    written = Tracing()._carrier(context)
    assert written == _written_by_propagator(context)
    assert written["traceparent"] == f"00-{TRACE_ID}-{SPAN_ID}-{flags:02x}"
    assert ("tracestate" in written) == bool(state)
    assert ("baggage" in written) == (bag is not None)


def test_the_producer_writes_nothing_for_no_valid_context() -> None:
    assert Tracing()._carrier(Context()) == {}
    assert _written_by_propagator(Context()) == {}


@pytest.mark.usefixtures("own_propagator")
def test_a_propagator_the_application_set_is_the_one_that_writes() -> None:
    span = trace.NonRecordingSpan(trace.SpanContext(1, 2, is_remote=False))
    assert Tracing()._carrier(trace.set_span_in_context(span, Context())) == {}
