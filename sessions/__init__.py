"""Sessions, beside the request path: conversations, inbox, confirmations, references, audit.

``sessions.store.SessionStore`` is the entry point; the gateway's composition root opens one.
"""
