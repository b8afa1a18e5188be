"""goodbot benchmarks: scripts that print figures beside a same-run baseline."""
