"""The fault matrix: each test proves one row of docs/reliability.md against the real parts."""
