"""The HTTP API (port 8080): uploads, requests, statuses and results."""
