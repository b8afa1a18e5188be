"""Fakes of third-party services as real servers on 127.0.0.1, for tests and benchmarks."""
