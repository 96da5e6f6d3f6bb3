"""Helpdesk Voice: a hands-free IT helpdesk assistant for the desktop."""

__version__ = "0.1.0"
