"""Request Tracker 5: tickets through RT's REST 2 API (``<RT>/REST/2.0``), with an auth token.

Built against RT 5.0.3 (Debian's ``request-tracker5``) and tested against a real one
(tests/test_connector_rt.py starts it, with an account that has only the rights named here). REST 2
and auth tokens are part of RT 5 itself: the account needs an auth token (in RT's web interface,
Logged in as > Settings > Auth Tokens, which takes the ManageAuthTokens right) and, on the queue,
SeeQueue, CreateTicket, ShowTicket and CommentOnTicket, and ShowTicketComments for notes to be added
exactly once (see comment below). Nothing else has to be set up in RT.

Where the idempotency key lives: at the end of the subject, as ``[HV:<key>]``. It has to be
somewhere every RT can search without an administrator preparing it: a custom field would have to
be created and granted first, and content searches need a full-text index (or scan every attachment,
which many sites switch off). The subject is a core column TicketSQL always searches. The marker
also tells the agent the ticket came from the voice assistant. :meth:`RequestTrackerConnector.find`
asks for ``Subject LIKE '[HV:<key>]'`` in every queue the account can see (a ticket an agent moved
to another queue is still found, so it is not filed twice) and keeps only subjects that contain the
marker exactly, since LIKE matches substrings and some databases treat ``_`` as a wildcard; the
oldest match wins when there are several. An agent who deletes the marker from the subject makes the
ticket unfindable by key; a retry would then file it again.

What it sends:

* create: ``POST /REST/2.0/ticket`` with Queue, Subject (summary and marker, at most RT's 200
  characters), Content (the description, then category, urgency, contact and the local id such as
  HD-1042), Requestor when the contact is an e-mail address (otherwise RT makes the account the
  requestor and the contact is only in the text) and Priority (low 0, normal 50, high and critical
  100: RT's own Low/Medium/High). Before the first create the queue is read
  (``GET /REST/2.0/queue/<name>``), because creating in a missing queue is refused with a 403 that
  reads like a missing right; RT answers the same for a queue the account may not see.
* open_tickets: TicketSQL ``Requestor.EmailAddress = '<e-mail>' AND Status = '__Active__'``, newest
  first (Created, then id), pages of :data:`PAGE_SIZE`, at most :data:`MAX_TICKETS`.
* comment: ``POST /REST/2.0/ticket/<id>/comment`` (a private comment, not a reply to the requestor).
  With a note's key (:meth:`RequestTrackerConnector.comment_with_key`) the text ends with the line
  ``[hv-note: <key>]``; :meth:`RequestTrackerConnector.has_comment` reads the ticket's attachments,
  ``GET /REST/2.0/ticket/<id>/attachments`` with ``fields=Content,TransactionId`` (REST 2 gives a
  listed attachment's text as it is, where ``GET /attachment/<id>`` gives it base64-encoded), pages of
  :data:`PAGE_SIZE`, and looks for that line. RT shows a comment's attachments only to those with
  ShowTicketComments: without that right the comments are hidden, the key is never seen, and a note
  whose first reply was lost is added again (at least once, as without keys).
* list_articles (the knowledge base, RT's own "Articles"): ``GET /REST/2.0/articles`` with a JSON
  search for every id (REST 2 answers a search without conditions with no items at all), pages of
  :data:`PAGE_SIZE` ordered by id, at most :data:`MAX_ARTICLES`, and ``fields=...,CustomFields`` so
  each item carries its custom fields' values and one request per page is enough (``GET
  /REST/2.0/article/<id>`` shows the same fields). An article's text is its "Content" custom field,
  the one RT's default class "General" has; an article without one gets the text of its other
  custom fields. Disabled ("deleted") articles are not listed: REST 2 leaves them out unless asked.
  The link is RT's self-service page for the article, which privileged and unprivileged users with
  ShowArticle can both open. The account needs, on each class to be read, SeeClass and ShowArticle,
  and SeeCustomField on the Content custom field; without the last the articles come back without
  text and are left out.

TicketSQL values are single-quoted with ``\\`` and ``'`` escaped (RT::SQL unescapes ``\\x`` to ``x``),
so a contact cannot add conditions. RT reads a quoted value that starts with ``CF.`` as a custom
field name whatever the quoting, so such a value is refused (``rejected``) rather than searched.
"""

from __future__ import annotations

import json as jsonlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote, urlsplit

import httpx

from app.tools.connectors._http import HttpApi, error_body, objects
from app.tools.connectors.base import (
    ConnectorError,
    RemoteArticle,
    RemoteTicket,
    TicketDraft,
    note_marker,
)

__all__ = [
    "MAX_ARTICLES",
    "MAX_TICKETS",
    "PAGE_SIZE",
    "PRIORITIES",
    "RequestTrackerConnector",
    "key_marker",
    "ticketsql_string",
]

API: Final = "/REST/2.0"
PAGE_SIZE: Final = 100  # REST 2's own maximum per page
MAX_TICKETS: Final = 200
MAX_ARTICLES: Final = 1000
MAX_ATTACHMENT_PAGES: Final = 20  # 2000 attachments: a ticket with more is not looked through further
ARTICLE_FIELDS: Final = "Name,Summary,LastUpdated,Class,CustomFields"
CONTENT_FIELD: Final = "content"  # the custom field holding an article's text, compared lowercased
SUBJECT_MAX: Final = 200  # Tickets.Subject is varchar(200)
FIELDS: Final = "Subject,Status,LastUpdated"
CHECK_URL: Final = (
    "Check the RT URL (the address of RT's web interface; https?) and that the API is not behind "
    "a login page."
)

PRIORITIES: Final[Mapping[str, int]] = {"low": 0, "normal": 50, "high": 100, "critical": 100}
_EMAIL = re.compile(r"^[^@\s<>(),;:\"\[\]\\]+@[^@\s<>(),;:\"\[\]\\]+\.[^@\s<>(),;:\"\[\]\\]+$")
_KEY = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
_TICKET_REF = re.compile(r"^\s*(?:RT\s*)?#?\s*(\d{1,10})\s*$", re.IGNORECASE)
_MARKER_AT_END = re.compile(r"\s*\[HV:[A-Za-z0-9._:-]+\]\s*$")
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_HTML_TAG = re.compile(r"<(?:p|div|br|ol|ul|li|h[1-6]|table|span|strong|em|b|i|a|pre|code)\b[^>]*>", re.I)


def key_marker(idempotency_key: str) -> str:
    """What the subject carries so that :meth:`RequestTrackerConnector.find` finds the ticket."""
    return f"[HV:{idempotency_key}]"


def ticketsql_string(value: str) -> str:
    """``value`` as a TicketSQL string literal that can only ever mean that string."""
    if value[:3].upper() == "CF.":
        raise ConnectorError("rejected", "Request Tracker cannot search for a value that starts with 'CF.'.")
    if any(ord(c) < 32 for c in value):
        raise ConnectorError("rejected", "Request Tracker cannot search for a value with control characters.")
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class RequestTrackerConnector:
    """Tickets in one RT queue, filed as the account that owns ``token``."""

    def __init__(self, client: httpx.Client, base_url: str, queue: str, token: str) -> None:
        self._base = base_url.rstrip("/")  # RT's web root, as in the browser: https://rt.example.com/rt
        self._host = urlsplit(self._base).netloc or self._base
        self._queue = queue
        self._token = token
        self._http = HttpApi(
            client,
            name="Request Tracker",
            host=self._host,
            url_setting="the Request Tracker URL",
            credentials="the auth token",
            auth_advice="An administrator must check the token and that its user is enabled.",
            config_advice=CHECK_URL,
            secrets=(token,),
        )
        self._queue_checked = False

    @property
    def name(self) -> str:
        return "Request Tracker"

    def find(self, idempotency_key: str) -> RemoteTicket | None:
        marker = key_marker(self._key(idempotency_key))
        body = self._request(
            "GET",
            "/tickets",
            params=[
                ("query", f"Subject LIKE {ticketsql_string(marker)}"),
                ("fields", FIELDS),
                ("orderby", "id"),
                ("order", "ASC"),
                ("per_page", "20"),
            ],
            action="look for the ticket",
        )
        for item in _items(body):
            if marker in str(item.get("Subject") or ""):
                return self._ticket(item)
        return None

    def create(self, draft: TicketDraft) -> RemoteTicket:
        marker = key_marker(self._key(draft.idempotency_key))
        self._check_queue()
        fields: dict[str, Any] = {
            "Queue": self._queue,
            "Subject": _subject(draft.summary, marker),
            "Content": _content(draft),
            "ContentType": "text/plain",
            "Priority": PRIORITIES.get(draft.urgency, PRIORITIES["normal"]),
        }
        contact = (draft.contact or "").strip()
        if _EMAIL.match(contact):
            fields["Requestor"] = contact
        body = self._request(
            "POST", "/ticket", json=fields, action=f"file the ticket in queue {self._queue!r}"
        )
        ticket_id = str(body.get("id", "")) if isinstance(body, dict) else ""
        if not ticket_id.isdigit():
            raise self._malformed()
        try:
            return self.get(ticket_id)
        except ConnectorError:
            # The ticket exists: failing now would make the delivery retry, find it and be right,
            # but saying what we know is as true and spares the retry.
            return RemoteTicket(
                number=f"RT #{ticket_id}",
                status="new",
                url=self._display_url(ticket_id),
                title=draft.summary,
                ref=ticket_id,
            )

    def get(self, ref: str) -> RemoteTicket:
        ticket_id = self._ticket_id(ref)
        body = self._request(
            "GET", f"/ticket/{ticket_id}", action=f"read ticket RT #{ticket_id}", ticket=ticket_id
        )
        if not isinstance(body, dict):
            raise self._malformed()
        return self._ticket(body)

    def comment(self, ref: str, text: str) -> None:
        ticket_id = self._ticket_id(ref)
        try:
            self._request(
                "POST",
                f"/ticket/{ticket_id}/comment",
                json={"Content": text, "ContentType": "text/plain"},
                action=f"comment on ticket RT #{ticket_id}",
                ticket=ticket_id,
            )
        except ConnectorError as exc:
            # RT answers a comment on a missing ticket with 400 "Permission Denied", as it does when
            # the right is missing; reading the ticket tells the two apart.
            if exc.problem in ("auth", "rejected"):
                self.get(ticket_id)
            raise

    def comment_with_key(self, ref: str, text: str, key: str) -> None:
        self.comment(ref, f"{text.rstrip()}\n\n{note_marker(self._key(key))}")

    def has_comment(self, ref: str, key: str) -> bool:
        ticket_id = self._ticket_id(ref)
        marker = note_marker(self._key(key))
        page = 1
        while page <= MAX_ATTACHMENT_PAGES:
            body = self._request(
                "GET",
                f"/ticket/{ticket_id}/attachments",
                params=[
                    ("fields", "Content,TransactionId"),
                    ("orderby", "id"),
                    ("order", "ASC"),
                    ("per_page", str(PAGE_SIZE)),
                    ("page", str(page)),
                ],
                action=f"read the comments of ticket RT #{ticket_id}",
                ticket=ticket_id,
            )
            items = _items(body)
            if not items and page == 1:
                # REST 2 lists a missing ticket's attachments as none at all, where every ticket has
                # at least its creation's: reading the ticket says not_found, as for the other calls.
                self.get(ticket_id)
            # The marker is the comment's last line; RT may keep a trailing newline after it.
            if any(marker in str(item.get("Content") or "") for item in items):
                return True
            pages = body.get("pages") if isinstance(body, dict) else None
            if len(items) < PAGE_SIZE or (isinstance(pages, int) and page >= pages):
                return False
            page += 1
        return False

    def open_tickets(self, contact: str) -> list[RemoteTicket]:
        email = contact.strip()
        if not _EMAIL.match(email):
            return []  # only an e-mail address was made a requestor; a spoken name may match several
        query = f"Requestor.EmailAddress = {ticketsql_string(email)} AND Status = '__Active__'"
        tickets: list[RemoteTicket] = []
        page = 1
        while len(tickets) < MAX_TICKETS:
            body = self._request(
                "GET",
                "/tickets",
                params=[
                    ("query", query),
                    ("fields", FIELDS),
                    ("orderby", "Created"),
                    ("order", "DESC"),
                    ("orderby", "id"),  # tickets made in the same second
                    ("order", "DESC"),
                    ("per_page", str(PAGE_SIZE)),
                    ("page", str(page)),
                ],
                action="list the contact's open tickets",
            )
            items = _items(body)
            tickets.extend(self._ticket(item) for item in items)
            pages = body.get("pages") if isinstance(body, dict) else None
            if len(items) < PAGE_SIZE or (isinstance(pages, int) and page >= pages):
                break
            page += 1
        return tickets[:MAX_TICKETS]

    def list_articles(self, known: Mapping[str, str] | None = None) -> list[RemoteArticle]:
        # Every page carries the bodies, so ``known`` saves nothing here and is not consulted.
        del known
        everything = jsonlib.dumps([{"field": "id", "operator": ">", "value": "0"}])
        articles: list[RemoteArticle] = []
        page = 1
        while len(articles) < MAX_ARTICLES:
            body = self._request(
                "GET",
                "/articles",
                params=[
                    ("query", everything),
                    ("fields", ARTICLE_FIELDS),
                    ("orderby", "id"),
                    ("order", "ASC"),
                    ("per_page", str(PAGE_SIZE)),
                    ("page", str(page)),
                ],
                action="list the knowledge base's articles",
            )
            items = _items(body)
            articles.extend(self._article(item) for item in items)
            # For an account that may not see every article, REST 2 gives no total and no page count:
            # only a short page says that was the last.
            pages = body.get("pages") if isinstance(body, dict) else None
            if len(items) < PAGE_SIZE or (isinstance(pages, int) and page >= pages):
                break
            page += 1
        return articles[:MAX_ARTICLES]

    # -- plumbing --------------------------------------------------------------------------------

    def _article(self, record: Mapping[str, Any]) -> RemoteArticle:
        article_id = str(record.get("id", ""))
        if not article_id.isdigit():
            raise self._malformed()
        updated = record.get("LastUpdated")
        text = _article_text(record.get("CustomFields"))
        return RemoteArticle(
            ref=article_id,
            title=" ".join(str(record.get("Name") or "").split()) or f"Article {article_id}",
            url=f"{self._base}/SelfService/Article/Display.html?id={article_id}",
            updated_at=updated if isinstance(updated, str) and _ISO.match(updated) else None,
            body=text,
            body_is_html=bool(_HTML_TAG.search(text)),
            summary=" ".join(str(record.get("Summary") or "").split()),
        )

    def _key(self, idempotency_key: str) -> str:
        if not _KEY.match(idempotency_key):
            raise ConnectorError(
                "rejected",
                "Request Tracker cannot store this ticket's idempotency key in the subject: "
                "it must be 1 to 100 letters, digits, '.', '_', ':' or '-'.",
            )
        return idempotency_key

    def _check_queue(self) -> None:
        if self._queue_checked:
            return
        if not self._queue.strip():
            raise ConnectorError("config", "No Request Tracker queue is configured.")
        body = self._request(
            "GET", f"/queue/{quote(self._queue, safe='')}", action=f"open queue {self._queue!r}", queue=True
        )
        if isinstance(body, dict) and str(body.get("Disabled", "0")) not in ("0", ""):
            raise ConnectorError(
                "config",
                f"The Request Tracker queue {self._queue!r} at {self._host} is disabled. "
                "An administrator must enable it or configure another queue.",
            )
        self._queue_checked = True

    def _ticket_id(self, ref: str) -> str:
        match = _TICKET_REF.match(ref)
        if match is None:
            raise ConnectorError(
                "not_found", f"Request Tracker has no ticket {ref[:40]!r}: RT tickets are numbers."
            )
        return str(int(match.group(1)))

    def _display_url(self, ticket_id: str) -> str:
        return f"{self._base}/Ticket/Display.html?id={ticket_id}"

    def _ticket(self, record: Mapping[str, Any]) -> RemoteTicket:
        ticket_id = str(record.get("id", ""))
        if not ticket_id.isdigit():
            raise self._malformed()
        updated = record.get("LastUpdated")
        # RT writes an unset date as the epoch.
        updated_at = (
            updated if isinstance(updated, str) and _ISO.match(updated) and updated[:4] != "1970" else None
        )
        return RemoteTicket(
            number=f"RT #{ticket_id}",
            status=str(record.get("Status") or "unknown"),
            url=self._display_url(ticket_id),
            title=_MARKER_AT_END.sub("", str(record.get("Subject") or "")),
            updated_at=updated_at,
            ref=ticket_id,
        )

    def _request(
        self,
        method: str,
        path: str,
        *,
        action: str,
        params: Sequence[tuple[str, str]] = (),
        json: Mapping[str, Any] | None = None,
        ticket: str | None = None,
        queue: bool = False,
    ) -> Any:
        if not self._token or any(c.isspace() or ord(c) < 32 for c in self._token):
            raise ConnectorError("config", "The Request Tracker auth token is empty or malformed.")
        response = self._http.send(
            method,
            self._base + API + path,
            params=params,
            json=json,
            headers={"Authorization": f"token {self._token}"},
            refuse=lambda response: self._error(response, action, ticket=ticket, queue=queue),
        )
        # RT itself answers a path outside its REST 2 API (a wrong URL) with its login page and HTTP
        # 200; so does a single sign-on proxy in front of RT. Either way the admin must act.
        login_page = ConnectorError(
            "config",
            f"Request Tracker at {self._host} answered with a web page instead of REST 2's JSON. {CHECK_URL}",
        )
        return self._http.json(response, not_json=login_page)

    def _error(
        self, response: httpx.Response, action: str, *, ticket: str | None, queue: bool
    ) -> ConnectorError:
        """RT's own meanings of a status; the rest as for any system (:meth:`HttpApi.refusal`)."""
        status = response.status_code
        said, from_rest2 = _rt_message(response)
        said = self._http.said(said)
        detail = f": {said}" if said else ""
        if queue and status in (403, 404) and from_rest2:
            # RT says 403 both for a queue that does not exist and for one the account may not see.
            return ConnectorError(
                "config",
                f"Request Tracker at {self._host} has no queue named {self._queue!r} that this account can "
                f"see (HTTP {status}). Check the queue name, and that the account has SeeQueue and "
                "CreateTicket on it.",
            )
        # A 403 is a missing right, not a refused token (401); RT answers some of those with 400.
        if status == 403 or (status == 400 and said.lower() == "permission denied"):
            return ConnectorError(
                "auth",
                f"Request Tracker did not let this account {action} (HTTP {status}){detail}. "
                "An administrator must grant the account the rights on the queue.",
            )
        if status == 404 and ticket is not None and from_rest2:
            return ConnectorError("not_found", f"Request Tracker has no ticket RT #{ticket}.")
        return self._http.refusal(
            response, action, said, missing=f"no REST 2 API under {urlsplit(self._base).path or '/'}"
        )

    def _malformed(self) -> ConnectorError:
        return self._http.malformed("without the fields REST 2 documents")


def _subject(summary: str, marker: str) -> str:
    summary = " ".join(summary.split()) or "Helpdesk Voice ticket"
    room = SUBJECT_MAX - len(marker) - 1
    if len(summary) > room:
        summary = summary[: room - 1].rstrip() + "…"
    return f"{summary} {marker}"


def _content(draft: TicketDraft) -> str:
    lines = [draft.description.rstrip(), "", f"Category: {draft.category}", f"Urgency: {draft.urgency}"]
    if draft.contact:
        lines.append(f"Contact: {draft.contact}")
    lines.append(f"Filed by Helpdesk Voice as {draft.local_id} at {draft.created_at}")
    return "\n".join(lines)


def _items(body: Any) -> list[Mapping[str, Any]]:
    items = objects(body, "items")
    if items is None:
        raise ConnectorError(
            "unavailable", "Request Tracker answered a search without REST 2's list of items."
        )
    return items


def _article_text(custom_fields: Any) -> str:
    """An article's text: its Content custom field, else its other custom fields' text, one per block."""
    if not isinstance(custom_fields, list):
        return ""
    content: list[str] = []
    others: list[str] = []
    for field in custom_fields:
        if not isinstance(field, dict) or not isinstance(field.get("values"), list):
            continue
        # Image and binary values come as objects (a download link): only text can be spoken.
        values = [value.strip() for value in field["values"] if isinstance(value, str) and value.strip()]
        if str(field.get("name") or "").strip().lower() == CONTENT_FIELD:
            content.extend(values)
        else:
            others.extend(values)
    return "\n\n".join(content or others)


def _rt_message(response: httpx.Response) -> tuple[str, bool]:
    """REST 2's ``message`` of a failure, and whether the answer was REST 2's JSON at all."""
    body = error_body(response)
    if not isinstance(body, dict) or not isinstance(body.get("message"), str):
        return "", False
    return body["message"], True
