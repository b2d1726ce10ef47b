"""``asyncjobs shell``: a Python REPL where top-level ``await`` works.

Every statement runs to completion on one event loop that lives as long as
the shell, so the App's pools (bound to that loop) stay usable between lines.
It reads from a terminal or from a pipe alike.
"""

from __future__ import annotations

import ast
import asyncio
import atexit
import code
import contextlib
import inspect
import sys
import types
from pathlib import Path
from typing import Any

BANNER = """asyncjobs shell: top-level await works; line editing, history, Tab completes.
In scope: app, flags, dead, enqueue, cancel, asyncjobs, asyncio, and the registered jobs.
  await flags.enable("disable_invoice_job", reason="...")
  await flags.list()
  await dead.list()
Ctrl-D exits."""
HISTORY = Path.home() / ".asyncjobs_history"


def _line_editing(namespace: dict[str, Any]) -> None:
    """readline's editing, history (kept in ~/.asyncjobs_history) and Tab completion."""
    try:
        import readline
        import rlcompleter
    except ImportError:  # a Python built without readline: plain input still works
        return
    readline.set_completer(rlcompleter.Completer(namespace).complete)
    readline.parse_and_bind("tab: complete")
    with contextlib.suppress(OSError):
        readline.read_history_file(HISTORY)
    readline.set_history_length(1000)

    def save() -> None:
        with contextlib.suppress(OSError):
            readline.write_history_file(HISTORY)

    atexit.register(save)


class AsyncConsole(code.InteractiveConsole):
    """An InteractiveConsole that compiles with top-level await and runs coroutines."""

    def __init__(self, namespace: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(namespace)
        self.loop = loop
        self.compile.compiler.flags |= ast.PyCF_ALLOW_TOP_LEVEL_AWAIT

    def runcode(self, codeobj: types.CodeType) -> None:
        try:
            result = types.FunctionType(codeobj, self.locals)()
            if inspect.iscoroutine(result):
                self.loop.run_until_complete(result)
        except SystemExit:
            raise
        except BaseException:
            self.showtraceback()


def run_shell() -> None:
    """Run the shell on the default App until end of input."""
    import asyncjobs
    from asyncjobs._app import get_app

    app = get_app()
    namespace: dict[str, Any] = {
        "asyncjobs": asyncjobs,
        "app": app,
        "flags": app.flags,
        "dead": app.dead,
        "enqueue": app.enqueue,
        "cancel": app.cancel,
        "asyncio": asyncio,
        "__name__": "__asyncjobs_shell__",
    }
    for spec in app.registry:
        namespace.setdefault(spec.target.__name__, spec.target)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    console = AsyncConsole(namespace, loop)
    if sys.stdin.isatty():
        _line_editing(namespace)
    try:
        console.interact(banner=BANNER if sys.stdin.isatty() else "", exitmsg="")
    finally:
        loop.run_until_complete(app.close())
        loop.close()
