"""The dashboard's implementation: a Starlette app of server-rendered pages.

:mod:`asyncjobs.web` is its public face. ``routes`` holds the pages and actions,
``reads`` what they read (through :mod:`asyncjobs._status` and the stores, the
same functions ``asyncjobs status`` uses), ``security`` the actor, the CSRF
token and the refusals; the Jinja2 templates are package data in
``templates/``.
"""

from __future__ import annotations

from .routes import dashboard

__all__ = ["dashboard"]
