"""Connectors to the company's ticket system: Request Tracker, ServiceNow, Jira Service Management and
a webhook."""

from app.tools.connectors.base import (
    ArticleSource,
    Connector,
    ConnectorError,
    Problem,
    RemoteArticle,
    RemoteTicket,
    TicketDraft,
)

__all__ = [
    "ArticleSource",
    "Connector",
    "ConnectorError",
    "Problem",
    "RemoteArticle",
    "RemoteTicket",
    "TicketDraft",
]
