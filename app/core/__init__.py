"""Core logic of Helpdesk Voice that does no I/O of its own."""
