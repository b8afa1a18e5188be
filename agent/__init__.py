"""goodbot agent: the loop that turns a message into tool calls, by rules or a model."""
