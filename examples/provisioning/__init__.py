"""A provisioning service on asyncjobs: the story of the seeds, as a small web app.

Customers ask the API for databases; each request writes a ``databases`` row in
state ``pending`` and enqueues ``create_database_job``; a worker provisions the
database and the row becomes ``ready``; the owner is mailed; ready databases
are backed up on a schedule; deleting one schedules a unique cleanup.

- ``schema.py``: the service's own tables (PostgreSQL).
- ``jobs.py``: the jobs and the reconcilers that make them self-healing
  (run with ``ASYNCJOBS_IMPORTS=examples.provisioning.jobs arq asyncjobs.WorkerSettings``).
- ``web.py``: the Starlette API (``uvicorn examples.provisioning.web:app``).
- ``fastapi_app.py`` and ``aiohttp_app.py``: the same API in FastAPI (a lifespan, and a
  dependency that gives handlers the App) and in aiohttp (a cleanup context);
  ``service.py`` is what the handlers of all three do.
- ``demo.py``: ``nox -s demo`` runs all of it and narrates.
"""
