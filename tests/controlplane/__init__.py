"""Control plane tests."""
