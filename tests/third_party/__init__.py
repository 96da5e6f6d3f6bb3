"""Scenario scripts of third-party realtime clients; they run in .venv-clients (see common.py)."""
