"""Middleware: an onion of ``async def mw(request, call_next)``, composed once.

Client middleware wraps every enqueue and gets an :class:`EnqueueRequest`;
returning without awaiting ``call_next(request)`` rejects the enqueue, and
``enqueue()`` returns ``None`` (return ``None`` to do so). Server middleware
wraps every job execution in the worker and gets an :class:`ExecutionRequest`;
what it returns is the job's result, and what it raises is the job's failure.

The first middleware in a list is the outermost. The requests themselves are
defined with the App's low layer, in :mod:`asyncjobs._core`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, Self, SupportsIndex, TypeVar

R = TypeVar("R")
Handler = Callable[[R], Awaitable[Any]]
Middleware = Callable[[R, Handler[R]], Awaitable[Any]]


class _Layer(Generic[R]):
    __slots__ = ("_middleware", "_next")

    def __init__(self, middleware: Middleware[R], call_next: Handler[R]) -> None:
        self._middleware = middleware
        self._next = call_next

    def __call__(self, request: R) -> Awaitable[Any]:
        return self._middleware(request, self._next)


class MiddlewareList(list[Middleware[R]]):
    """A list of middleware that counts its changes (``version``), so a chain composed
    from it can tell that it must be composed again: middleware added after the first
    enqueue takes effect on the next one."""

    version = 0

    def _changed(self) -> None:
        self.version += 1

    def append(self, item: Middleware[R]) -> None:
        super().append(item)
        self._changed()

    def extend(self, items: Iterable[Middleware[R]]) -> None:
        super().extend(items)
        self._changed()

    def insert(self, index: SupportsIndex, item: Middleware[R]) -> None:
        super().insert(index, item)
        self._changed()

    def remove(self, item: Middleware[R]) -> None:
        super().remove(item)
        self._changed()

    def pop(self, index: SupportsIndex = -1) -> Middleware[R]:
        item = super().pop(index)
        self._changed()
        return item

    def clear(self) -> None:
        super().clear()
        self._changed()

    def __setitem__(self, index: Any, value: Any) -> None:
        super().__setitem__(index, value)
        self._changed()

    def __delitem__(self, index: Any) -> None:
        super().__delitem__(index)
        self._changed()

    def __iadd__(self, items: Iterable[Middleware[R]]) -> Self:  # type: ignore[override,misc]
        super().__iadd__(items)
        self._changed()
        return self

    def sort(self, *args: Any, **kwargs: Any) -> None:
        super().sort(*args, **kwargs)
        self._changed()

    def reverse(self) -> None:
        super().reverse()
        self._changed()


def compose(middlewares: Sequence[Middleware[R]], handler: Handler[R]) -> Handler[R]:
    """One callable that runs ``middlewares`` (first = outermost) around ``handler``."""
    call: Handler[R] = handler
    for middleware in reversed(middlewares):
        call = _Layer(middleware, call)
    return call
