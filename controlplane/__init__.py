"""The reference endpoint-management control plane: a separate service the gateway reaches over HTTP."""
