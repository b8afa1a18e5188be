"""Sessions, beside the request path: the Alembic environment, run on the caller's connection."""

from __future__ import annotations

from alembic import context

from sessions.db import VERSION_TABLE, include_name
from sessions.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    # Run through sessions.db.migrate, which always passes a connection (there is no alembic.ini).
    raise RuntimeError("run the gateway's migrations through sessions.db.migrate")


context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    include_name=include_name,
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
