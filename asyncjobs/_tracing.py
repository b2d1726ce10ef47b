"""Tracing: OpenTelemetry spans for each enqueue and each run of a job, linked across processes.

Off unless enabled, with ``App(tracing=True)`` or ``ASYNCJOBS_TRACING=true``; it needs the
``asyncjobs[otel]`` extra (opentelemetry-api), and asking for it without the extra is a
:class:`ConfigurationError` naming it. Spans go to the global tracer provider
(``opentelemetry.trace.set_tracer_provider``); without an SDK configured none is made
(below).

- **Producer.** :meth:`Tracing.client_middleware` is the innermost client middleware of
  the App (it sees the options outer middleware chose, and only enqueues that reach
  Redis get a span). It starts a PRODUCER span ``send <job>`` around the write and puts
  the span's context, as the global propagator writes it (W3C ``traceparent`` and
  ``tracestate``, and ``baggage``, by default), in the job's payload under the key
  :data:`~asyncjobs._enqueue.TRACE_CONTEXT_KEY`. arq's worker reads only its own keys
  (``t f a k et``), so it ignores this one. In ``enqueue_many`` each job gets its own
  ``send <job>`` span and its own context the same way, but the span ends when the job
  joins its batch: the batch's write, one round trip per 1,000 jobs, is not in it.
- **Consumer.** :meth:`Tracing.execution_layer` is the outermost layer of the execution
  path, so its CONSUMER span ``process <job>`` covers the whole try (the kill switch's
  gate, the timeout, the dead letter). Its parent is the context from the payload: one
  trace from the web request that enqueued to the job's own spans. A payload without a
  context starts a fresh trace; one whose context cannot be read does too, with a
  ``trace.context_invalid`` warning, and the job runs as usual.

Without an OpenTelemetry SDK (no tracer provider set, only the API installed) every span
would be the API's no-op, so neither is made: the producer carries the context current
at the call, if any (as the API's no-op span would), and the consumer makes the payload's
context current around the job, read and checked as above; nothing is recorded.

Both spans carry ``messaging.system`` = ``"asyncjobs"`` (the spans, the context key and
the consumer are asyncjobs'; arq's own worker makes none), ``messaging.destination.name``
(the queue), ``messaging.message.id`` (the job id) and ``messaging.operation.type`` /
``messaging.operation.name`` (``send`` or ``process``; ``messaging.operation`` is the
older, deprecated name); ``process`` also ``asyncjobs.job.try``. A failed try records its
exception, ``error.type`` and status ERROR; a try the job ended with arq's ``Retry`` (or
that waits for its lock) does not, and a cancelled one gets a ``cancelled`` event. The
worker hands the payload's context and the job's queue to this layer in the job's
``ctx`` (``trace_context``, ``queue_name``).
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

import structlog

from . import _logs as logs
from ._arq import Retry
from ._exceptions import ConfigurationError
from ._naming import new_job_id
from ._version import __version__

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

    from ._core import Core, EnqueueRequest, ExecutionRequest
    from ._jobs import JobSpec
    from ._middleware import Handler, Middleware

MISSING_EXTRA = (
    "tracing is on (App(tracing=True) or ASYNCJOBS_TRACING=true) but OpenTelemetry is not "
    "installed: pip install 'asyncjobs[otel]', or turn tracing off"
)
SYSTEM = "asyncjobs"
"""The value of ``messaging.system`` on every span."""

_SYSTEM = "messaging.system"
_DESTINATION = "messaging.destination.name"
_MESSAGE_ID = "messaging.message.id"
_OPERATION_TYPE = "messaging.operation.type"
_OPERATION_NAME = "messaging.operation.name"
_JOB_TRY = "asyncjobs.job.try"
_ERROR_TYPE = "error.type"

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
"""A version-00 W3C ``traceparent`` exactly as OpenTelemetry's propagator writes it."""

_log = structlog.get_logger("asyncjobs.tracing")


class Tracing:
    """An App's tracer and the two places it traces: the client middleware and the
    execution layer. Raises :class:`ConfigurationError` if OpenTelemetry is missing."""

    def __init__(self) -> None:
        try:
            from opentelemetry import baggage, context, propagate, trace
        except ImportError as exc:
            raise ConfigurationError(MISSING_EXTRA) from exc
        self.tracer = trace.get_tracer("asyncjobs", __version__)
        self.producer, self.consumer = trace.SpanKind.PRODUCER, trace.SpanKind.CONSUMER
        self.in_context = trace.set_span_in_context
        self.attach, self.detach = context.attach, context.detach
        self.fresh = context.Context()
        """The empty context: a span started in it begins a trace of its own."""
        self._error = trace.StatusCode.ERROR
        self._status = trace.Status
        self._span_of = trace.get_current_span
        self._propagate = propagate
        self._span_context, self._flags = trace.SpanContext, trace.TraceFlags
        self._remote = trace.NonRecordingSpan
        self._textmap: object = None
        self._w3c = False
        """Whether :attr:`_textmap`, the global propagator last seen, is OpenTelemetry's
        default (W3C trace context, and baggage): then :meth:`parent` reads a plain
        ``traceparent`` itself, and the producer writes one, as that propagator would,
        without its general path."""
        self._provider = trace.get_tracer_provider
        self._no_sdk = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
        self._sdk = False
        """Whether a tracer provider of an SDK was seen (it cannot be replaced once set)."""
        self._baggage = baggage.get_all

    def recording(self) -> bool:
        """Whether spans can be recorded: a tracer provider other than the API's own
        (an SDK's) is set. Without one every span is the API's no-op, so the producer and
        the consumer skip making them and only carry the context along (see the module's
        docstring). Checked on each call until a provider appears, since an application
        may set its provider after the App was made."""
        if self._sdk:
            return True
        if isinstance(self._provider(), self._no_sdk):
            return False
        self._sdk = True
        # The tracer got before the provider was set is a proxy that looks the real one
        # up on every call: take the real one.
        self.tracer = self._provider().get_tracer("asyncjobs", __version__)
        return True

    async def client_middleware(
        self, request: EnqueueRequest, call_next: Handler[EnqueueRequest]
    ) -> Any:
        """A PRODUCER span ``send <job>`` around the rest of the enqueue, its context put
        in ``request.trace_context`` for the payload.

        The job id is chosen here when the call gave none (as the write would), so that
        the span can name it. Without an SDK no span is made: the context current at the
        call (one an instrumentation read from an incoming request, say) is carried as
        the API's no-op span would carry it."""
        if not self.recording():
            carrier = self._carrier(None)
            if carrier:
                request.trace_context = carrier
            return await call_next(request)
        options = request.options
        job_id = options.get("_job_id")
        if job_id is None:
            job_id = options["_job_id"] = new_job_id()
        spec = request.spec
        queue = options.get("_queue_name") or spec.queue or request.app.settings.queue_name
        span = self.tracer.start_span(
            "send " + spec.name,
            kind=self.producer,
            attributes={
                _SYSTEM: SYSTEM,
                _DESTINATION: queue,
                _MESSAGE_ID: job_id,
                _OPERATION_TYPE: "send",
                _OPERATION_NAME: "send",
            },
        )
        current = self.in_context(span)
        carrier = self._carrier(current)
        if carrier:  # empty when the span's context is invalid: nothing to carry
            request.trace_context = carrier
        token = self.attach(current)
        try:
            return await call_next(request)
        except Exception as exc:
            self.failed(span, exc)
            raise
        finally:
            self.detach(token)
            span.end()

    def _carrier(self, context: Context | None) -> dict[str, str]:
        """What the global propagator writes for ``context`` (None: the current one).

        With OpenTelemetry's default propagator and nothing but a span context to write
        (no trace state, no baggage), the ``traceparent`` is written here, exactly as
        that propagator writes it, without its general path: one per enqueue."""
        carrier: dict[str, str] = {}
        if self._default_textmap():
            span_context = self._span_of(context).get_span_context()
            if not span_context.is_valid:
                return carrier
            if not span_context.trace_state and not self._baggage(context):
                carrier["traceparent"] = (
                    f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
                    f"{span_context.trace_flags:02x}"
                )
                return carrier
        self._propagate.inject(carrier, context=context)
        return carrier

    def _default_textmap(self) -> bool:
        """Whether the global propagator is OpenTelemetry's default (see :attr:`_w3c`)."""
        textmap = self._propagate.get_global_textmap()
        if textmap is not self._textmap:
            self._textmap, self._w3c = textmap, _is_default_w3c(textmap)
        return self._w3c

    def execution_layer(self, spec: JobSpec, app: Core) -> Middleware[ExecutionRequest]:
        """The outermost execution layer for ``spec``: a CONSUMER span ``process <job>``."""
        return _ProcessSpan(self, spec, spec.queue or app.settings.queue_name)

    def parent(self, carrier: object, job: str, job_id: object, job_try: object) -> Context:
        """The context ``carrier`` (a payload's trace context) holds, or :attr:`fresh` with a
        ``trace.context_invalid`` warning naming the job when it cannot be read."""
        if isinstance(carrier, dict):
            if not carrier:
                return self.fresh
            found = self._w3c_parent(carrier)
            if found is not None:
                return found
            try:
                found = self._propagate.extract(carrier, context=self.fresh)
            except Exception as exc:  # a propagator given values it cannot read
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if self._span_of(found).get_span_context().is_valid:
                    return found
                problem = "it holds no valid trace context"
        else:
            problem = f"it is a JSON {type(carrier).__name__}, not an object"
        _log.warning(
            logs.TRACE_CONTEXT_INVALID,
            job=job,
            job_id=job_id,
            job_try=job_try,
            error=f"the payload's trace context cannot be read ({problem}); the job runs "
            "in a fresh trace",
            trace_context=repr(carrier)[:200],
        )
        return self.fresh

    def _w3c_parent(self, carrier: dict[Any, Any]) -> Context | None:
        """The context of a carrier holding a well-formed version-00 ``traceparent`` and
        nothing else (what a producer writes when it has no trace state or baggage to
        carry), read as the default global propagator reads it; None for anything else,
        which :meth:`parent` then hands to the propagator itself.

        The worker reads one context per job, and the propagator's general path (a
        composite of two, each parsing on its own) costs several times as much."""
        if not self._default_textmap():
            return None
        header = carrier.get("traceparent")
        if len(carrier) != 1 or not isinstance(header, str):
            return None
        match = _TRACEPARENT.fullmatch(header)
        if match is None:
            return None
        trace_id, span_id = int(match[1], 16), int(match[2], 16)
        if not trace_id or not span_id:
            return None
        span_context = self._span_context(
            trace_id, span_id, is_remote=True, trace_flags=self._flags(int(match[3], 16))
        )
        return self.in_context(self._remote(span_context), self.fresh)

    def failed(self, span: Span, exc: BaseException) -> None:
        """Record ``exc`` on ``span``: its exception event, ``error.type``, status ERROR."""
        span.record_exception(exc)
        span.set_attribute(_ERROR_TYPE, type(exc).__qualname__)
        span.set_status(self._status(self._error, f"{type(exc).__name__}: {exc}"))


def _is_default_w3c(textmap: object) -> bool:
    """Whether ``textmap`` is OpenTelemetry's default global propagator: a composite of
    exactly the W3C trace-context propagator and (optionally) the W3C baggage one."""
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if type(textmap) is not CompositePropagator:
        return False
    kinds = [type(one) for one in getattr(textmap, "_propagators", None) or ()]
    return kinds in (
        [TraceContextTextMapPropagator, W3CBaggagePropagator],
        [TraceContextTextMapPropagator],
    )


class _ProcessSpan:
    """The execution layer of :meth:`Tracing.execution_layer`."""

    __slots__ = ("name", "queue", "spec", "tracing")

    def __init__(self, tracing: Tracing, spec: JobSpec, queue: str) -> None:
        self.tracing, self.spec, self.queue = tracing, spec, queue
        self.name = "process " + spec.name

    async def __call__(
        self, request: ExecutionRequest, call_next: Handler[ExecutionRequest]
    ) -> Any:
        tracing, ctx = self.tracing, request.ctx
        job_id = ctx.get("job_id", "")
        job_try = ctx.get("job_try", 1)
        carrier = ctx.get("trace_context")
        if carrier is None:
            parent = tracing.fresh
        else:
            parent = tracing.parent(carrier, self.spec.name, job_id, job_try)
        if not tracing.recording():  # no SDK: no span, the payload's context current
            if carrier is None:
                return await call_next(request)
            passed = tracing.attach(parent)
            try:
                return await call_next(request)
            finally:
                tracing.detach(passed)
        span = tracing.tracer.start_span(
            self.name,
            context=parent,
            kind=tracing.consumer,
            attributes={
                _SYSTEM: SYSTEM,
                _DESTINATION: ctx.get("queue_name") or self.queue,
                _MESSAGE_ID: job_id,
                _OPERATION_TYPE: "process",
                _OPERATION_NAME: "process",
                _JOB_TRY: job_try,
            },
        )
        token = tracing.attach(tracing.in_context(span, parent))
        try:
            return await call_next(request)
        except Retry as exc:
            # The execution path turns a failure that will be retried into arq's Retry
            # raised from it; a Retry of the job's own (or a wait for its lock) is no error.
            if exc.__cause__ is not None:
                tracing.failed(span, exc.__cause__)
            raise
        except asyncio.CancelledError:
            span.add_event("cancelled")
            raise
        except Exception as exc:
            tracing.failed(span, exc)
            raise
        finally:
            tracing.detach(token)
            span.end()
