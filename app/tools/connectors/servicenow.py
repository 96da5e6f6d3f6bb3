"""ServiceNow: incidents through the Table API (``/api/now/table/incident``), basic auth.

Built from ServiceNow's public REST API reference, "Table API" (GET/POST ``/now/table/{tableName}``,
GET/PATCH ``/now/table/{tableName}/{sys_id}``), and "Encoded query strings". Not exercised against a
real instance: the tests replay recorded contracts written from that reference (tests/data/contracts).

Where the idempotency key lives: ``correlation_id`` of the incident, with ``correlation_display`` set
to "Helpdesk Voice". :meth:`ServiceNowConnector.find` asks for ``correlation_id=<key>``.

What it sends:

* create: ``POST /api/now/table/incident`` with short_description, description (the contact and the
  assistant's category are written into it too), urgency (low 3, normal 2, high and critical 1),
  impact (3, one user, or 2 for critical: the assistant files for one person, so claiming a wider
  impact would inflate the priority), category (mapped to the out-of-the-box incident choices),
  correlation_id, correlation_display, assignment_group when configured, and caller_id when the
  contact is an e-mail address that matches exactly one ``sys_user`` (looked up first).
* comment with a note's key (:meth:`ServiceNowConnector.comment_with_key`): the text ends with the
  line ``[hv-note: <key>]``. :meth:`ServiceNowConnector.has_comment` asks the journal table, where
  every entry of a journal field is a record: ``GET /api/now/table/sys_journal_field`` with
  ``name=incident^element=comments^element_id=<sys_id>^valueLIKE[hv-note: <key>]`` and
  ``sysparm_limit=1``. Out of the box only admins may read ``sys_journal_field``; the integration
  user needs a read ACL on it (or a role that has one) for notes to be exactly once.
* get and comment take the ``sys_id`` (the ``ref``) or the incident number (``INC0010042``), which is
  looked up with ``number=<number>`` first.
* find, get, open_tickets: raw values (``sysparm_display_value=false``), because display values are
  localised and dates come in the user's time zone; raw ``state`` is a number mapped to a word here
  and raw dates are UTC.
* open_tickets: ``active=true^caller_id.email=<e-mail>^ORDERBYDESCsys_created_on``, pages of
  :data:`PAGE_SIZE` (or ``page_size``) by ``sysparm_offset`` while the ``Link`` header has
  ``rel="next"`` (or, without a Link header, while pages come back full), at most :data:`MAX_TICKETS`.
  The offset is computed here rather than following the Link URL, so the credentials only ever go to
  the configured instance.

The knowledge base (``list_articles``), from the reference's "Knowledge Management REST API"
(the Knowledge API plugin, ``sn_km_api``, must be active): ``GET /api/sn_km_api/knowledge/articles``
with ``filter=workflow_state=published``, ``fields=short_description,number,sys_updated_on``, pages
of ``limit`` by ``offset`` while ``meta.end`` is short of ``meta.count`` (at most
:data:`MAX_ARTICLES`), then ``GET /api/sn_km_api/knowledge/articles/{sys_id}`` for the HTML
``content`` of each article that is new or whose ``sys_updated_on`` changed since the caller's copy.
Neither ``search_id`` nor ``update_view`` is sent, so the sync does not count as people reading the
articles. The link is the Service Portal's article page (``/sp?id=kb_article_view&sys_kb_id=...``),
where the API's own relative ``link`` also points. An article that vanishes between the list and
its fetch (404) is left out; any other failure fails the whole listing, so the caller keeps its copy.

Encoded queries cannot quote a value: ``^`` separates conditions (``^OR``, ``^NQ`` would add
conditions of the caller's choosing) and a value starting with ``javascript:`` is evaluated on the
instance. No escape for either is documented, so such values are refused (``rejected``) rather than
sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from app.tools.connectors._http import HttpApi, error_body, objects
from app.tools.connectors.base import (
    ConnectorError,
    RemoteArticle,
    RemoteTicket,
    TicketDraft,
    note_marker,
)

__all__ = ["MAX_ARTICLES", "MAX_TICKETS", "PAGE_SIZE", "STATES", "ServiceNowConnector"]

TABLE: Final = "incident"
JOURNAL_TABLE: Final = "sys_journal_field"
PAGE_SIZE: Final = 50
MAX_TICKETS: Final = 200
FIELDS: Final = "sys_id,number,state,short_description,sys_updated_on"
KNOWLEDGE_API: Final = "/api/sn_km_api/knowledge/articles"
ARTICLE_FIELDS: Final = "short_description,number,sys_updated_on"
MAX_ARTICLES: Final = 1000

STATES: Final[Mapping[str, str]] = {
    "1": "New",
    "2": "In Progress",
    "3": "On Hold",
    "6": "Resolved",
    "7": "Closed",
    "8": "Canceled",
}
_URGENCY: Final[Mapping[str, str]] = {"low": "3", "normal": "2", "high": "1", "critical": "1"}
_IMPACT: Final[Mapping[str, str]] = {"critical": "2"}
_CATEGORY: Final[Mapping[str, str]] = {
    "network": "network",
    "hardware": "hardware",
    "software": "software",
    "email": "software",
}
_SYS_ID = re.compile(r"^[0-9a-f]{32}$")
_NUMBER = re.compile(r"^[A-Z]{2,8}[0-9]{4,12}$")  # safe in an encoded query: no ^, no javascript:


class ServiceNowConnector:
    """Incidents in one ServiceNow instance, filed as ``user`` (who needs ``itil`` or equivalent)."""

    def __init__(
        self,
        client: httpx.Client,
        instance_url: str,
        user: str,
        password: str,
        assignment_group: str | None = None,
        *,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self._base = instance_url.rstrip("/")
        self._host = urlsplit(self._base).hostname or self._base
        self._http = HttpApi(
            client,
            name="ServiceNow",
            host=self._host,
            url_setting="the ServiceNow instance URL",
            credentials="the credentials or their roles",
            auth_advice="An administrator must check the integration user.",
            config_advice="Check the instance URL.",
            secrets=(password,),
            auth=httpx.BasicAuth(user, password),
        )
        self._assignment_group = assignment_group
        self._page_size = page_size

    @property
    def name(self) -> str:
        return "ServiceNow"

    def find(self, idempotency_key: str) -> RemoteTicket | None:
        key = _query_value(idempotency_key, "the ticket's idempotency key")
        body = self._request(
            "GET",
            f"/api/now/table/{TABLE}",
            params={
                "sysparm_query": f"correlation_id={key}",
                "sysparm_limit": "1",
                "sysparm_fields": FIELDS,
                "sysparm_display_value": "false",
                "sysparm_exclude_reference_link": "true",
            },
            action="look for the ticket",
        )
        records = _result_list(body)
        return self._ticket(records[0]) if records else None

    def create(self, draft: TicketDraft) -> RemoteTicket:
        key = _query_value(draft.idempotency_key, "the ticket's idempotency key")
        fields: dict[str, str] = {
            "short_description": draft.summary,
            "description": _description(draft),
            "urgency": _URGENCY.get(draft.urgency, "2"),
            "impact": _IMPACT.get(draft.urgency, "3"),
            "category": _CATEGORY.get(draft.category, "inquiry"),
            "correlation_id": key,
            "correlation_display": "Helpdesk Voice",
        }
        if self._assignment_group:
            fields["assignment_group"] = self._assignment_group
        caller = self._caller_sys_id(draft.contact)
        if caller:
            fields["caller_id"] = caller
        body = self._request(
            "POST",
            f"/api/now/table/{TABLE}",
            params={
                "sysparm_fields": FIELDS,
                "sysparm_display_value": "false",
                "sysparm_exclude_reference_link": "true",
            },
            json=fields,
            action="file the ticket",
        )
        return self._ticket(_result_record(body))

    def get(self, ref: str) -> RemoteTicket:
        if _NUMBER.match(ref):
            return self._by_number(ref)
        body = self._request(
            "GET",
            self._record_path(ref),
            params={
                "sysparm_fields": FIELDS,
                "sysparm_display_value": "false",
                "sysparm_exclude_reference_link": "true",
            },
            action=f"read ticket {ref}",
            record=ref,
        )
        return self._ticket(_result_record(body))

    def comment(self, ref: str, text: str) -> None:
        sys_id = self._by_number(ref).ref if _NUMBER.match(ref) else ref
        # ``comments`` is a journal field: writing it appends an "Additional comment" the caller
        # sees; it does not replace earlier ones.
        self._request(
            "PATCH",
            self._record_path(sys_id),
            params={"sysparm_fields": "sys_id", "sysparm_exclude_reference_link": "true"},
            json={"comments": text},
            action=f"comment on ticket {ref}",
            record=ref,
        )

    def comment_with_key(self, ref: str, text: str, key: str) -> None:
        marker = note_marker(_query_value(key, "the note's key"))
        self.comment(ref, f"{text.rstrip()}\n\n{marker}")

    def has_comment(self, ref: str, key: str) -> bool:
        marker = note_marker(_query_value(key, "the note's key"))
        sys_id = self._by_number(ref).ref if _NUMBER.match(ref) else ref
        self._record_path(sys_id)  # refuses what is not a sys_id before it reaches the query
        body = self._request(
            "GET",
            f"/api/now/table/{JOURNAL_TABLE}",
            params={
                "sysparm_query": f"name={TABLE}^element=comments^element_id={sys_id}^valueLIKE{marker}",
                "sysparm_fields": "sys_id",
                "sysparm_limit": "1",
            },
            action=f"read the comments of ticket {ref}",
        )
        return bool(_result_list(body))

    def open_tickets(self, contact: str) -> list[RemoteTicket]:
        if "@" not in contact:
            return []  # only an e-mail address names one caller; a spoken name may match several
        email = _query_value(contact.strip(), "the contact's e-mail address")
        tickets: list[RemoteTicket] = []
        offset = 0
        while len(tickets) < MAX_TICKETS:
            response, body = self._exchange(
                "GET",
                f"/api/now/table/{TABLE}",
                params={
                    "sysparm_query": f"active=true^caller_id.email={email}^ORDERBYDESCsys_created_on",
                    "sysparm_fields": FIELDS,
                    "sysparm_display_value": "false",
                    "sysparm_exclude_reference_link": "true",
                    "sysparm_limit": str(self._page_size),
                    "sysparm_offset": str(offset),
                },
                json=None,
                action="list the caller's open tickets",
                record=None,
            )
            page = _result_list(body)
            tickets.extend(self._ticket(record) for record in page)
            link = response.headers.get("Link")
            more = 'rel="next"' in link if link is not None else len(page) == self._page_size
            if not more or not page:
                break
            offset += len(page)
        return tickets[:MAX_TICKETS]

    def list_articles(self, known: Mapping[str, str] | None = None) -> list[RemoteArticle]:
        known = known or {}
        listed: list[tuple[str, str, str, str | None]] = []  # sys_id, number, title, updated
        offset = 0
        while len(listed) < MAX_ARTICLES:
            body = self._knowledge(
                KNOWLEDGE_API,
                params={
                    "filter": "workflow_state=published",
                    "fields": ARTICLE_FIELDS,
                    "limit": str(self._page_size),
                    "offset": str(offset),
                },
                action="list the knowledge base's articles",
            )
            result = body.get("result") if isinstance(body, dict) else None
            page = objects(result, "articles")
            meta = result.get("meta") if isinstance(result, dict) else None
            if page is None or not isinstance(meta, dict):
                raise self._not_knowledge_api()
            listed.extend(_listed_article(item) for item in page)
            offset += len(page)
            count, end = meta.get("count"), meta.get("end")
            if not page or not isinstance(count, int) or not isinstance(end, int) or end >= count:
                break
        articles: list[RemoteArticle] = []
        for sys_id, number, title, updated in listed[:MAX_ARTICLES]:
            url = f"{self._base}/sp?id=kb_article_view&sys_kb_id={sys_id}"
            if updated is not None and known.get(sys_id) == updated:
                articles.append(RemoteArticle(sys_id, title, url, updated, None, number=number))
                continue
            try:
                record = self._knowledge(
                    f"{KNOWLEDGE_API}/{sys_id}",
                    params={},
                    action=f"read knowledge article {number or sys_id}",
                )
            except ConnectorError as error:
                if error.problem == "not_found":
                    continue  # retired or deleted since the list was read
                raise
            result = record.get("result") if isinstance(record, dict) else None
            if not isinstance(result, dict) or not isinstance(result.get("content"), str):
                raise self._not_knowledge_api()
            title = _clean(result.get("short_description")) or title
            articles.append(
                RemoteArticle(sys_id, title, url, updated, result["content"], True, number=number)
            )
        return articles

    # -- plumbing --------------------------------------------------------------------------------

    def _knowledge(self, path: str, *, params: Mapping[str, str], action: str) -> Any:
        """A Knowledge Management API call; a 404 for one article is that article gone."""
        single = path != KNOWLEDGE_API

        def refuse(response: httpx.Response) -> ConnectorError:
            said = self._http.said(_servicenow_message(response))
            if response.status_code == 404 and single and error_body(response) is not None:
                return ConnectorError("not_found", f"ServiceNow has no such knowledge article: {said}")
            return self._http.refusal(
                response,
                action,
                said,
                missing="no Knowledge Management API at /api/sn_km_api (is the Knowledge API plugin active?)",
            )

        response = self._http.send("GET", self._base + path, params=params, refuse=refuse)
        return self._http.json(response, not_json=self._not_knowledge_api())

    def _not_knowledge_api(self) -> ConnectorError:
        return self._http.malformed("with something other than the Knowledge Management API's JSON")

    def _caller_sys_id(self, contact: str | None) -> str | None:
        if not contact or "@" not in contact:
            return None
        try:
            email = _query_value(contact.strip(), "the contact's e-mail address")
        except ConnectorError:
            return None  # the contact still reaches the ticket, in the description
        try:
            body = self._request(
                "GET",
                "/api/now/table/sys_user",
                params={
                    "sysparm_query": f"email={email}",
                    "sysparm_fields": "sys_id",
                    "sysparm_limit": "2",
                },
                action="look up the caller",
            )
        except ConnectorError as error:
            # An integration user may file incidents without being allowed to read sys_user: the
            # ticket matters more than its caller field. Outages still stop it, to be retried whole.
            if error.retryable:
                raise
            return None
        users = _result_list(body)
        # Two accounts with one address: picking either could show the ticket to the wrong person.
        if len(users) != 1:
            return None
        sys_id = users[0].get("sys_id")
        return sys_id if isinstance(sys_id, str) and sys_id else None

    def _by_number(self, number: str) -> RemoteTicket:
        """The incident people call ``number`` (INC0010042): the protocol lets get() take either."""
        body = self._request(
            "GET",
            f"/api/now/table/{TABLE}",
            params={
                "sysparm_query": f"number={number}",
                "sysparm_limit": "1",
                "sysparm_fields": FIELDS,
                "sysparm_display_value": "false",
                "sysparm_exclude_reference_link": "true",
            },
            action=f"read ticket {number}",
        )
        records = _result_list(body)
        if not records:
            raise ConnectorError("not_found", f"ServiceNow has no incident {number}.")
        return self._ticket(records[0])

    def _record_path(self, ref: str) -> str:
        if not _SYS_ID.match(ref):
            raise ConnectorError("not_found", f"ServiceNow has no incident with the id {ref[:40]!r}.")
        return f"/api/now/table/{TABLE}/{ref}"

    def _ticket(self, record: Mapping[str, Any]) -> RemoteTicket:
        sys_id = record.get("sys_id")
        number = record.get("number")
        if not isinstance(sys_id, str) or not isinstance(number, str) or not sys_id or not number:
            raise self._malformed()
        state = str(record.get("state", ""))
        return RemoteTicket(
            number=number,
            status=STATES.get(state, state or "unknown"),
            url=f"{self._base}/{TABLE}.do?sys_id={sys_id}",
            title=str(record.get("short_description") or ""),
            updated_at=_iso(record.get("sys_updated_on")),
            ref=sys_id,
        )

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str],
        action: str,
        json: Mapping[str, Any] | None = None,
        record: str | None = None,
    ) -> Any:
        return self._exchange(method, path, params=params, json=json, action=action, record=record)[1]

    def _exchange(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str],
        json: Mapping[str, Any] | None,
        action: str,
        record: str | None,
    ) -> tuple[httpx.Response, Any]:
        response = self._http.send(
            method,
            self._base + path,
            params=params,
            json=json,
            refuse=lambda response: self._error(response, action, record),
        )
        return response, self._http.json(response, not_json=self._malformed())

    def _error(self, response: httpx.Response, action: str, record: str | None) -> ConnectorError:
        """A 404 for a record is that record missing; the rest as for any system."""
        said = self._http.said(_servicenow_message(response))
        # The Table API answers a wrong table name with 404 too, saying "Invalid table".
        if (
            response.status_code == 404
            and record is not None
            and not said.lower().startswith("invalid table")
        ):
            detail = f": {said}" if said else ""
            return ConnectorError("not_found", f"ServiceNow has no incident {record}{detail}.")
        return self._http.refusal(
            response, action, said, missing=f"no incident table at /api/now/table/{TABLE}"
        )

    def _malformed(self) -> ConnectorError:
        return self._http.malformed("with something other than the Table API's JSON")


def _description(draft: TicketDraft) -> str:
    lines = [draft.description.rstrip(), ""]
    if draft.contact:
        lines.append(f"Contact: {draft.contact}")
    lines.append(f"Category (as filed): {draft.category}")
    lines.append(f"Filed by Helpdesk Voice as {draft.local_id} at {draft.created_at}")
    return "\n".join(lines)


def _query_value(value: str, what: str) -> str:
    """``value`` if it can stand alone after ``=`` in an encoded query; refused otherwise."""
    if not value or "^" in value or any(ord(c) < 32 for c in value):
        raise ConnectorError(
            "rejected", f"ServiceNow cannot search for {what}: it contains '^' or a control character."
        )
    if value.lower().lstrip().startswith("javascript:"):
        raise ConnectorError(
            "rejected", f"ServiceNow cannot search for {what}: it starts with 'javascript:'."
        )
    return value


def _result_list(body: Any) -> list[Mapping[str, Any]]:
    result = objects(body, "result")
    if result is None:
        raise ConnectorError(
            "unavailable", "ServiceNow answered without the list of records the Table API documents."
        )
    return result


def _result_record(body: Any) -> Mapping[str, Any]:
    result = body.get("result") if isinstance(body, dict) else None
    if not isinstance(result, dict):
        raise ConnectorError("unavailable", "ServiceNow answered without the record the Table API documents.")
    return result


def _servicenow_message(response: httpx.Response) -> str:
    """The ``error.message`` (and ``detail``) of a Table API failure; "" when absent."""
    body = error_body(response)
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ""
    return " - ".join(
        str(error[k]) for k in ("message", "detail") if isinstance(error.get(k), str) and error[k]
    )


def _clean(value: Any) -> str:
    # Titles come with the trailing tabs and line breaks the instance's editors leave in them.
    return " ".join(value.split()) if isinstance(value, str) else ""


def _listed_article(item: Mapping[str, Any]) -> tuple[str, str, str, str | None]:
    """sys_id, number, title and last update of one item of the article list."""
    raw_id = item.get("id")
    # The list names each article "<table>:<sys_id>" (kb_knowledge:9e52...).
    sys_id = raw_id.rpartition(":")[2] if isinstance(raw_id, str) else ""
    if not _SYS_ID.match(sys_id):
        raise ConnectorError(
            "unavailable", "ServiceNow listed a knowledge article without the sys_id the API documents."
        )
    fields = item.get("fields")
    updated_field = fields.get("sys_updated_on") if isinstance(fields, dict) else None
    updated = updated_field.get("value") if isinstance(updated_field, dict) else None
    number = _clean(item.get("number"))
    title = _clean(item.get("title")) or number or sys_id
    return sys_id, number, title, updated if isinstance(updated, str) and updated.strip() else None


def _iso(value: Any) -> str | None:
    """Table API raw date-times ("2026-12-04 16:07:00", UTC) as ISO 8601."""
    if not isinstance(value, str) or not re.match(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$", value):
        return None
    return value.replace(" ", "T") + "Z"
