"""Control plane schema migrations (Alembic)."""
