"""goodbot policy: principal resolution, deny-by-default decisions, redaction, rate limits."""
