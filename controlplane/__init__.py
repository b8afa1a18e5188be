"""The reference endpoint-management control plane: a separate service reached over HTTP."""
