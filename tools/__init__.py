"""goodbot tools: the agent's tools, re-checking policy per call and confirming mutations."""
