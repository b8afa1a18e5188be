"""Policy layer tests."""
