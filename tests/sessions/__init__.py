"""Session store tests."""
