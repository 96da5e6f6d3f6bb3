"""The embedded offline realtime server."""
