"""What every ticket-system connector offers, and how it fails.

A connector turns a queued ticket into one in the company's ticket system (Request Tracker,
ServiceNow, Jira Service Management, or a webhook) and reads tickets back. Connectors are plain
synchronous code over an :class:`httpx.Client` that the caller supplies (the delivery worker runs
them in its own thread; tests pass a transport that answers from recorded contracts), and they
never raise anything but :class:`ConnectorError`.

Exactly once: every draft carries an idempotency key, stable for its ticket across retries and
restarts. Before creating, the delivery asks the connector to :meth:`Connector.find` a ticket with
that key, so a retry after a lost reply finds the ticket the first try made instead of filing a
second one. Each connector stores the key where its system lets one search for it (a custom field,
a correlation id, a header the receiver deduplicates on) and says where in its module docstring.

Notes (comments added to a delivered ticket) are exactly once the same way, for connectors that are
also :class:`KeyedComments`: each note carries a key of its own, which the connector writes into the
comment (:func:`note_marker`, its last line) or sends as a header the receiver deduplicates on, and
after a try whose outcome is unknown the delivery asks :meth:`KeyedComments.has_comment` before adding
the note again. It is a protocol of its own, not part of :class:`Connector`, so that a wrapper or a
stand-in offering only ``comment`` still type-checks and gets the old at-least-once notes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

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

Problem = Literal[
    "auth",  # the credentials were refused: the user or admin must act; retrying will not help
    "config",  # the URL, queue or project is wrong or missing: the admin must act
    "unavailable",  # the system could not be reached or failed (5xx, timeout): retry later
    "rate_limited",  # 429: retry after ``retry_after`` seconds
    "rejected",  # the system refused this ticket (4xx other than the above): retrying will not help
    "not_found",  # no such ticket (get, comment)
]


class ConnectorError(Exception):
    """A connector's failure, said for a person (``message``) and classified for the delivery."""

    def __init__(self, problem: Problem, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.problem: Problem = problem
        self.message = message
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.problem in ("unavailable", "rate_limited")


@dataclass(frozen=True, slots=True)
class TicketDraft:
    """A ticket as the assistant filed it, ready to go to the company's system."""

    local_id: str  # the number the user heard, HD-1042
    idempotency_key: str  # stable for this ticket across retries, restarts and reinstalls
    summary: str
    description: str
    category: str  # one of app.tools.tickets.CATEGORIES
    urgency: str  # low, normal or high
    contact: str | None  # who to reach (an e-mail address or a name), if known
    created_at: str  # ISO 8601, UTC


@dataclass(frozen=True, slots=True)
class RemoteTicket:
    """A ticket as the company's system holds it."""

    number: str  # the system's own number as people say it: "RT #123", "INC0010042", "IT-17"
    status: str  # the system's own word (new, open, resolved, In Progress...)
    url: str | None = None  # where a person opens it in a browser
    title: str = ""
    updated_at: str | None = None  # ISO 8601 when the system says
    ref: str = ""  # the system's id for API calls when it differs from number (sys_id, issue key)


class Connector(Protocol):
    """One ticket system. Every method raises :class:`ConnectorError` and nothing else."""

    @property
    def name(self) -> str:
        """The system as the user hears it: "Request Tracker", "ServiceNow"."""
        ...

    def find(self, idempotency_key: str) -> RemoteTicket | None:
        """The ticket an earlier try made for this key, or None."""
        ...

    def create(self, draft: TicketDraft) -> RemoteTicket:
        """Files the ticket, storing its idempotency key where :meth:`find` looks."""
        ...

    def get(self, ref: str) -> RemoteTicket:
        """A ticket by the ``ref`` (or number) the system gave it."""
        ...

    def comment(self, ref: str, text: str) -> None:
        """Adds a comment (a handoff, diagnostics) to the ticket."""
        ...

    def open_tickets(self, contact: str) -> list[RemoteTicket]:
        """The contact's tickets that are not resolved or closed, newest first."""
        ...


def note_marker(key: str) -> str:
    """The line a comment ends with so that :meth:`KeyedComments.has_comment` can find it by key."""
    return f"[hv-note: {key}]"


@runtime_checkable
class KeyedComments(Protocol):
    """A connector whose comments carry a key it can look for later: notes exactly once.

    Both methods raise :class:`ConnectorError` and nothing else.
    """

    def comment_with_key(self, ref: str, text: str, key: str) -> None:
        """Adds ``text`` as a comment to the ticket, with ``key`` where :meth:`has_comment` looks."""
        ...

    def has_comment(self, ref: str, key: str) -> bool:
        """Whether the ticket already has the comment :meth:`comment_with_key` added with ``key``."""
        ...


@dataclass(frozen=True, slots=True)
class RemoteArticle:
    """A published article of the ticket system's own knowledge base."""

    ref: str  # the system's id for it (RT's article number, ServiceNow's sys_id)
    title: str
    url: str  # where a person reads it in a browser
    updated_at: str | None  # the system's last-updated stamp as it gives it; None when it gives none
    # The text as HTML or plain (Markdown-like) text; None when the caller already holds this
    # version (see :meth:`ArticleSource.list_articles`) and it was not fetched again.
    body: str | None
    body_is_html: bool = False
    summary: str = ""
    number: str = ""  # as people name it, when the system has such a number (KB0010001)


@runtime_checkable
class ArticleSource(Protocol):
    """A ticket system with a knowledge base (Request Tracker, ServiceNow; Jira and the webhook have none).

    Raises :class:`ConnectorError` and nothing else, like every connector method.
    """

    @property
    def name(self) -> str: ...

    def list_articles(self, known: Mapping[str, str] | None = None) -> list[RemoteArticle]:
        """Every published article the account may read.

        ``known`` maps the ``ref`` of articles the caller already holds to their ``updated_at``: a
        source that must fetch each body separately may skip those unchanged and return them with
        ``body`` None. One that gets the bodies with the list anyway returns them all.
        """
        ...
