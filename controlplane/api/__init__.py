"""Control plane HTTP API: one module per resource family, all under ``/api/v1``."""
