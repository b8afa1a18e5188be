"""Sessions, beside the request path: the gateway's Alembic migrations (``sessions.db.migrate``)."""
