"""goodbot sessions: conversations, confirmations, conversation references and the audit chain."""
