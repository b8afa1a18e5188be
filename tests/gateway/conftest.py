"""Gateway test fixtures: the session store's, on SQLite and PostgreSQL (``store``, ``target``)."""

from tests.sessions.conftest import (  # noqa: F401  (fixtures shared with the sessions tests)
    location,
    sessions_pg_schema,
    sqlite_template,
    store,
    target,
)
