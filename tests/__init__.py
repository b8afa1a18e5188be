"""goodbot test suite."""
