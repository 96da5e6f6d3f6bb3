"""Connectors to the company's ticket system: Request Tracker, ServiceNow, Jira Service Management and
a webhook."""

from app.tools.connectors.base import (
    ArticleSource,
    Connector,
    ConnectorError,
    KeyedComments,
    Problem,
    RemoteArticle,
    RemoteTicket,
    TicketDraft,
    note_marker,
)

__all__ = [
    "ArticleSource",
    "Connector",
    "ConnectorError",
    "KeyedComments",
    "Problem",
    "RemoteArticle",
    "RemoteTicket",
    "TicketDraft",
    "note_marker",
]
