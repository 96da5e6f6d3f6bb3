"""Jira Service Management (Cloud): customer requests through the Service Desk REST API.

Built from Atlassian's public references: "Jira Service Management Cloud REST API" (the ``request``
and ``servicedesk`` groups: ``POST /rest/servicedeskapi/request``, ``GET .../request/{issueIdOrKey}``,
``POST .../request/{issueIdOrKey}/comment``, ``GET .../request``, ``GET .../servicedesk/{id}``), and
"Jira Cloud platform REST API v3" (``POST /rest/api/3/search/jql``, the enhanced JQL search that
replaced the removed ``/rest/api/{2,3}/search``, paged by ``nextPageToken``; ``GET
/rest/api/3/user/search``). Not exercised against a real site: the tests replay recorded contracts
written from those references (tests/data/contracts/jsm). Auth is basic, ``email:api_token``.

Where the idempotency key lives: the request's description ends with the line
``Helpdesk Voice reference: <key>``, and :meth:`JiraServiceManagementConnector.find` searches the
service desk's project for that phrase with JQL ``text ~ "\\"<key>\\""``. Jira's search index is
eventually consistent, so a find in the first seconds after a create may miss; the delivery only calls
find when retrying, long after that.

Notes: :meth:`JiraServiceManagementConnector.comment_with_key` ends the comment's body with the line
``[hv-note: <key>]``, and :meth:`JiraServiceManagementConnector.has_comment` reads the request's
comments, ``GET /rest/servicedeskapi/request/{issueIdOrKey}/comment`` (public and internal, pages of
``start``/``limit`` until ``isLastPage``, at most :data:`MAX_COMMENTS`), looking for that line.

Who the request is for: ``raiseOnBehalfOf`` takes an Atlassian account id, not an e-mail address, so
an e-mail contact is looked up first (``/rest/api/3/user/search``); only an account whose visible
address is exactly the contact's is used. Otherwise the request is raised by the integration account,
and the contact is in the description either way.

Open tickets: ``GET /rest/servicedeskapi/request`` only lists the *authenticated* account's view
(``requestOwnership``: its own, participated, approver, organisation requests) and cannot filter by
another customer; it serves the case where the contact is the integration account itself, paged by
``start``/``limit`` until ``isLastPage``. For any other e-mail address the connector runs the JQL
``project = <id> AND reporter = "<e-mail>" AND statusCategory != Done ORDER BY created DESC`` (JQL
accepts an e-mail address for user fields), paged by ``nextPageToken``. Both stop at
:data:`MAX_TICKETS`. A spoken name is not looked up (it may match several people): no tickets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote, urlsplit

import httpx

from app.tools.connectors._http import HttpApi, error_body, objects
from app.tools.connectors.base import ConnectorError, RemoteTicket, TicketDraft, note_marker

__all__ = [
    "MAX_COMMENTS",
    "MAX_TICKETS",
    "PAGE_SIZE",
    "REFERENCE_PREFIX",
    "JiraServiceManagementConnector",
    "jql_string",
]

REFERENCE_PREFIX: Final = "Helpdesk Voice reference:"
PAGE_SIZE: Final = 50
MAX_TICKETS: Final = 200
MAX_COMMENTS: Final = 1000  # a request with more is not looked through further
SEARCH_FIELDS: Final = ("summary", "status", "updated")
_ISSUE_KEY = re.compile(r"^(?:[A-Z][A-Z0-9_]*-\d+|\d+)$")


def jql_string(value: str) -> str:
    """``value`` as a JQL double-quoted string, escaped so that nothing in it can end the string."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    # Line breaks cannot appear in a JQL string literal; as spaces they change no search we make.
    return '"' + re.sub(r"[\r\n\t]", " ", escaped) + '"'


def _phrase(key: str) -> str:
    """The key as an exact-phrase JQL text search: ``"\\"words\\""``.

    Jira's text search splits on punctuation anyway, so everything but letters, digits, ``-``,
    ``_`` and ``.`` becomes a space; what is left cannot close either quote level.
    """
    words = re.sub(r"[^A-Za-z0-9._-]+", " ", key).strip()
    return jql_string(f'"{words}"')


class JiraServiceManagementConnector:
    """Requests of one request type in one service desk, filed as the account behind ``api_token``."""

    def __init__(
        self,
        client: httpx.Client,
        site_url: str,
        email: str,
        api_token: str,
        service_desk_id: str,
        request_type_id: str,
        *,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self._base = site_url.rstrip("/")
        self._host = urlsplit(self._base).hostname or self._base
        self._http = HttpApi(
            client,
            name="Jira",
            host=self._host,
            url_setting="the Jira site URL",
            credentials="the account or its permissions",
            auth_advice="Check the e-mail address, the API token and that the account is an agent of the "
            "service desk.",
            config_advice="Check the site URL and the service desk settings.",
            secrets=(api_token,),
            auth=httpx.BasicAuth(email, api_token),
        )
        self._email = email
        self._service_desk_id = service_desk_id
        self._request_type_id = request_type_id
        self._page_size = page_size
        self._project_id: str | None = None

    @property
    def name(self) -> str:
        return "Jira Service Management"

    def find(self, idempotency_key: str) -> RemoteTicket | None:
        jql = f"project = {self._project()} AND text ~ {_phrase(idempotency_key)}"
        issues, _ = self._search(jql, max_results=1, token=None, action="look for the request")
        return self._issue_ticket(issues[0]) if issues else None

    def create(self, draft: TicketDraft) -> RemoteTicket:
        body: dict[str, Any] = {
            "serviceDeskId": self._service_desk_id,
            "requestTypeId": self._request_type_id,
            "requestFieldValues": {"summary": draft.summary, "description": _description(draft)},
        }
        account = self._account_id(draft.contact)
        if account:
            body["raiseOnBehalfOf"] = account
        answer = self._call(
            "POST", "/rest/servicedeskapi/request", json=body, action="file the request", desk=True
        )
        return self._request_ticket(answer)

    def get(self, ref: str) -> RemoteTicket:
        answer = self._call(
            "GET", f"/rest/servicedeskapi/request/{_key(ref)}", action=f"read request {ref}", record=ref
        )
        return self._request_ticket(answer)

    def comment(self, ref: str, text: str) -> None:
        # public: true, so the customer sees the handoff in the portal and by e-mail, as with a person.
        self._call(
            "POST",
            f"/rest/servicedeskapi/request/{_key(ref)}/comment",
            json={"body": text, "public": True},
            action=f"comment on request {ref}",
            record=ref,
        )

    def comment_with_key(self, ref: str, text: str, key: str) -> None:
        self.comment(ref, f"{text.rstrip()}\n\n{note_marker(key)}")

    def has_comment(self, ref: str, key: str) -> bool:
        marker = note_marker(key)
        start = 0
        while start < MAX_COMMENTS:
            page = self._call(
                "GET",
                f"/rest/servicedeskapi/request/{_key(ref)}/comment",
                params={
                    "public": "true",
                    "internal": "true",
                    "start": str(start),
                    "limit": str(self._page_size),
                },
                action=f"read the comments of request {ref}",
                record=ref,
            )
            values = objects(page, "values")
            if values is None:
                raise self._malformed()
            if any(marker in str(value.get("body") or "") for value in values):
                return True
            if page.get("isLastPage", True) is not False or not values:
                return False
            start += len(values)
        return False

    def open_tickets(self, contact: str) -> list[RemoteTicket]:
        contact = contact.strip()
        if "@" not in contact:
            return []
        if contact.casefold() == self._email.casefold():
            return self._own_open_requests()
        jql = (
            f"project = {self._project()} AND reporter = {jql_string(contact)} "
            "AND statusCategory != Done ORDER BY created DESC"
        )
        tickets: list[RemoteTicket] = []
        token: str | None = None
        while len(tickets) < MAX_TICKETS:
            issues, token = self._search(
                jql, max_results=self._page_size, token=token, action="list open requests"
            )
            tickets.extend(self._issue_ticket(issue) for issue in issues)
            if not token or not issues:
                break
        return tickets[:MAX_TICKETS]

    # -- plumbing --------------------------------------------------------------------------------

    def _own_open_requests(self) -> list[RemoteTicket]:
        found: list[tuple[int, RemoteTicket]] = []
        start = 0
        while len(found) < MAX_TICKETS:
            page = self._call(
                "GET",
                "/rest/servicedeskapi/request",
                params={
                    "serviceDeskId": self._service_desk_id,
                    "requestOwnership": "OWNED_REQUESTS",
                    "requestStatus": "OPEN_REQUESTS",
                    "start": str(start),
                    "limit": str(self._page_size),
                },
                action="list open requests",
                desk=True,
            )
            values = page.get("values") if isinstance(page, dict) else None
            if not isinstance(values, list):
                raise self._malformed()
            for value in values:
                created = value.get("createdDate") if isinstance(value, dict) else None
                millis = created.get("epochMillis") if isinstance(created, dict) else None
                found.append((millis if isinstance(millis, int) else 0, self._request_ticket(value)))
            if page.get("isLastPage", True) is not False or not values:
                break
            start += len(values)
        # The API orders by latest activity; the protocol promises newest first.
        found.sort(key=lambda pair: pair[0], reverse=True)
        return [ticket for _, ticket in found[:MAX_TICKETS]]

    def _project(self) -> str:
        if self._project_id is None:
            desk = self._call(
                "GET",
                f"/rest/servicedeskapi/servicedesk/{quote(self._service_desk_id, safe='')}",
                action="read the service desk",
                desk=True,
            )
            project = desk.get("projectId") if isinstance(desk, dict) else None
            if not isinstance(project, str | int) or not str(project).isdigit():
                raise self._malformed()
            self._project_id = str(project)
        return self._project_id

    def _account_id(self, contact: str | None) -> str | None:
        if not contact or "@" not in contact:
            return None
        try:
            users = self._call(
                "GET",
                "/rest/api/3/user/search",
                params={"query": contact.strip()},
                action="look up the customer",
            )
        except ConnectorError as error:
            # Searching users needs the "Browse users and groups" permission, which an agent account
            # may lack: the request matters more than whom it is raised for. Outages still stop it.
            if error.retryable:
                raise
            return None
        if not isinstance(users, list):
            raise self._malformed()
        matching = [
            u["accountId"]
            for u in users
            if isinstance(u, dict)
            and isinstance(u.get("accountId"), str)
            and str(u.get("emailAddress", "")).casefold() == contact.strip().casefold()
        ]
        # None or several: raising on behalf of a guess could show the request to the wrong person.
        return matching[0] if len(matching) == 1 else None

    def _search(
        self, jql: str, *, max_results: int, token: str | None, action: str
    ) -> tuple[list[Mapping[str, Any]], str | None]:
        body: dict[str, Any] = {"jql": jql, "fields": list(SEARCH_FIELDS), "maxResults": max_results}
        if token:
            body["nextPageToken"] = token
        answer = self._call("POST", "/rest/api/3/search/jql", json=body, action=action)
        issues = objects(answer, "issues")
        if issues is None:
            raise self._malformed()
        next_token = answer.get("nextPageToken")
        last = answer.get("isLast") is True
        return issues, next_token if isinstance(next_token, str) and next_token and not last else None

    def _issue_ticket(self, issue: Mapping[str, Any]) -> RemoteTicket:
        key = issue.get("key")
        fields = issue.get("fields")
        if not isinstance(key, str) or not key or not isinstance(fields, dict):
            raise self._malformed()
        status = fields.get("status")
        name = status.get("name") if isinstance(status, dict) else None
        return RemoteTicket(
            number=key,
            status=name if isinstance(name, str) and name else "unknown",
            url=f"{self._base}/browse/{key}",
            title=str(fields.get("summary") or ""),
            updated_at=_jira_time(fields.get("updated")),
            ref=key,
        )

    def _request_ticket(self, answer: Any) -> RemoteTicket:
        if not isinstance(answer, dict):
            raise self._malformed()
        key = answer.get("issueKey")
        if not isinstance(key, str) or not key:
            raise self._malformed()
        current = answer.get("currentStatus")
        status = current.get("status") if isinstance(current, dict) else None
        when = current.get("statusDate") if isinstance(current, dict) else None
        links = answer.get("_links")
        web = links.get("web") if isinstance(links, dict) else None
        return RemoteTicket(
            number=key,
            status=status if isinstance(status, str) and status else "unknown",
            url=web if isinstance(web, str) and web else f"{self._base}/browse/{key}",
            title=_summary(answer),
            updated_at=_jira_time(when.get("iso8601")) if isinstance(when, dict) else None,
            ref=key,
        )

    def _call(
        self,
        method: str,
        path: str,
        *,
        action: str,
        params: Mapping[str, str] | None = None,
        json: Mapping[str, Any] | None = None,
        record: str | None = None,
        desk: bool = False,
    ) -> Any:
        response = self._http.send(
            method,
            self._base + path,
            params=params,
            json=json,
            refuse=lambda response: self._error(response, action, record, desk),
        )
        # A comment may be answered 204 with no body at all.
        return self._http.json(response, not_json=self._malformed(), allow_empty=True)

    def _error(self, response: httpx.Response, action: str, record: str | None, desk: bool) -> ConnectorError:
        """A 404 for a request is that request missing; the rest as for any system."""
        said = self._http.said(_jira_message(response))
        if response.status_code == 404 and record is not None:
            detail = f": {said}" if said else ""
            return ConnectorError("not_found", f"Jira has no request {record}{detail}.")
        missing = (
            f"no service desk {self._service_desk_id} or request type {self._request_type_id}"
            if desk
            else "no such API"
        )
        return self._http.refusal(response, action, said, missing=missing)

    def _malformed(self) -> ConnectorError:
        return self._http.malformed("with something other than the documented JSON")


def _key(ref: str) -> str:
    if not _ISSUE_KEY.match(ref):
        raise ConnectorError("not_found", f"Jira has no request {ref[:40]!r}.")
    return ref


def _description(draft: TicketDraft) -> str:
    lines = [draft.description.rstrip(), ""]
    if draft.contact:
        lines.append(f"Contact: {draft.contact}")
    lines.append(f"Category: {draft.category}, urgency: {draft.urgency}")
    lines.append(f"Filed by Helpdesk Voice as {draft.local_id} at {draft.created_at}")
    lines.append(f"{REFERENCE_PREFIX} {draft.idempotency_key}")
    return "\n".join(lines)


def _summary(answer: Mapping[str, Any]) -> str:
    values = answer.get("requestFieldValues")
    if isinstance(values, list):
        for value in values:
            if (
                isinstance(value, dict)
                and value.get("fieldId") == "summary"
                and isinstance(value.get("value"), str)
            ):
                return str(value["value"])
    return ""


def _jira_message(response: httpx.Response) -> str:
    """The error said in either body Atlassian documents; "" when there is none.

    Service Desk API: ``{"errorMessage": ..., "i18nErrorMessage": {...}}``; platform API:
    ``{"errorMessages": [...], "errors": {"field": "message"}}``.
    """
    body = error_body(response)
    if not isinstance(body, dict):
        return ""
    parts: list[str] = []
    if isinstance(body.get("errorMessage"), str):
        parts.append(body["errorMessage"])
    messages = body.get("errorMessages")
    if isinstance(messages, list):
        parts.extend(m for m in messages if isinstance(m, str))
    errors = body.get("errors")
    if isinstance(errors, dict):
        parts.extend(f"{k}: {v}" for k, v in errors.items() if isinstance(v, str))
    return "; ".join(p for p in parts if p)


def _jira_time(value: Any) -> str | None:
    """Jira's "2026-12-04T16:07:12.000+0000" (or ISO 8601) as ISO 8601 with a colon in the offset."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z").isoformat()
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).isoformat()
    except ValueError:
        return None
