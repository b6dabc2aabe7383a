"""The HTTP API: one Powertools REST resolver behind API Gateway (and the local gateway)."""
