"""Autogenerate an Alembic revision for the control plane from the models (development aid).

    .venv/bin/python deploy/new-migration.py REV_ID "message"

Runs against a fresh SQLite database brought to the previous head, so the revision holds
exactly what the models add. Review the file before committing it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine

import controlplane.models_release  # noqa: F401  (registers the part II tables)
from controlplane.db import alembic_config


def main() -> None:
    rev_id, message = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'gen.db'}")
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
        with engine.begin() as conn:
            command.revision(
                alembic_config(conn), message=message, autogenerate=True, rev_id=rev_id
            )
    for path in Path("controlplane/migrations/versions").glob(f"{rev_id}_*.py"):
        # autogenerate writes the JSONB variant with a bare Text(); qualify it.
        path.write_text(path.read_text().replace("astext_type=Text()", "astext_type=sa.Text()"))


if __name__ == "__main__":
    main()
