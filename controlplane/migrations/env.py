"""Alembic environment for the control plane: runs on the connection the caller hands in."""

from __future__ import annotations

from alembic import context

import controlplane.models_release  # noqa: F401  (registers the part II tables)
from controlplane.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    # Run from the `goodbot controlplane migrate` command, which always passes a connection.
    raise RuntimeError("run migrations through `goodbot controlplane migrate`")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
