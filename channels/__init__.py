"""goodbot channels: verify each sender and translate its messages (Teams, Slack, email, CLI)."""
