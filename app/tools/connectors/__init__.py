"""Connectors to the company's ticket system: Request Tracker, ServiceNow, Jira Service Management and
a webhook."""

from app.tools.connectors.base import Connector, ConnectorError, Problem, RemoteTicket, TicketDraft

__all__ = ["Connector", "ConnectorError", "Problem", "RemoteTicket", "TicketDraft"]
