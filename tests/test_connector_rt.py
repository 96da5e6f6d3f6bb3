"""The Request Tracker connector against a real RT 5 (tests/rt_server.py), plus its error mapping.

The ``rt`` fixture starts one RT for the session. Without RT installed those tests skip with the
reason, unless HELPDESK_VOICE_REQUIRE_DEVICES=1 (CI sets it), where they fail; an RT that is
installed but does not start always fails. The ``Mocked`` tests need no RT: they pin down how each
HTTP failure becomes a :class:`ConnectorError`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.tools.connectors.base import (
    ArticleSource,
    Connector,
    ConnectorError,
    KeyedComments,
    TicketDraft,
    note_marker,
)
from app.tools.connectors.rt import PAGE_SIZE, RequestTrackerConnector, key_marker, ticketsql_string
from tests import rt_server
from tests.connector_cases import refused
from tests.rt_server import RtInstance, RtUnavailable, attachment_texts, rest, running_rt


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client() as http:
        yield http


@contextlib.contextmanager
def rt_showing_comments(directory: Path) -> Iterator[RtInstance]:
    """An RT of its own whose account also has ShowTicketComments, the right ``has_comment`` needs.

    The session's ``rt`` grants exactly the rights the connector needs to file and comment, and
    keeps them so; this one adds the one right notes exactly once need, and nothing else.
    """
    with contextlib.ExitStack() as stack:
        with pytest.MonkeyPatch.context() as patch:  # the rights are read while RT is set up
            patch.setattr(rt_server, "AGENT_RIGHTS", (*rt_server.AGENT_RIGHTS, "ShowTicketComments"))
            try:
                instance = stack.enter_context(running_rt(directory))
            except RtUnavailable as exc:
                if exc.missing and os.environ.get("HELPDESK_VOICE_REQUIRE_DEVICES") != "1":
                    pytest.skip(str(exc))
                pytest.fail(f"Request Tracker is required here but could not start: {exc}")
        yield instance


@pytest.fixture(scope="module")
def rt_comments(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RtInstance]:
    with rt_showing_comments(tmp_path_factory.mktemp("rt-comments")) as instance:
        yield instance


@pytest.fixture
def connector(rt: RtInstance, client: httpx.Client) -> RequestTrackerConnector:
    return RequestTrackerConnector(client, rt.base_url, rt.queue, rt.token)


def unique(prefix: str = "") -> str:
    return prefix + uuid.uuid4().hex[:12]


def draft(contact: str | None = None, **changes: Any) -> TicketDraft:
    local = f"HD-{uuid.uuid4().int % 9000 + 1000}"
    fields: dict[str, Any] = {
        "local_id": local,
        "idempotency_key": f"hv-{uuid.uuid4().hex[:16]}-{local}",
        "summary": "VPN drops every ten minutes",
        "description": "The VPN client disconnects every ten minutes since this morning.",
        "category": "network",
        "urgency": "high",
        "contact": contact,
        "created_at": "2026-12-04T16:07:00+00:00",
    }
    fields.update(changes)
    return TicketDraft(**fields)


# -- against the real RT ---------------------------------------------------------------------------


def test_rt_server_is_private_and_answers(rt: RtInstance) -> None:
    """The throwaway RT is the one in the session directory and speaks REST 2 to its token."""
    assert rest(rt, "GET", "/rt")["Version"].startswith("5.")
    agent = httpx.get(f"{rt.base_url}/REST/2.0/rt", headers={"Authorization": f"token {rt.token}"})
    assert agent.status_code == 200
    assert (rt.directory / "rt.sqlite").is_file()
    assert rest(rt, "GET", f"/queue/{rt.queue}")["Name"] == rt.queue


def test_create_files_the_ticket_and_find_finds_it_by_key(
    rt: RtInstance, connector: RequestTrackerConnector
) -> None:
    contact = f"{unique('alice-')}@example.com"
    filed = draft(contact)
    as_protocol: Connector = connector  # mypy checks that the class implements the protocol
    ticket = as_protocol.create(filed)

    assert ticket.ref.isdigit()
    assert ticket.number == f"RT #{ticket.ref}"
    assert ticket.url == f"{rt.base_url}/Ticket/Display.html?id={ticket.ref}"
    assert ticket.title == filed.summary
    assert ticket.status == "new"
    assert ticket.updated_at is not None

    raw = rest(rt, "GET", f"/ticket/{ticket.ref}")
    assert raw["Subject"] == f"{filed.summary} {key_marker(filed.idempotency_key)}"
    assert raw["Queue"]["id"] == str(rest(rt, "GET", f"/queue/{rt.queue}")["id"])
    assert [r["id"] for r in raw["Requestor"]] == [contact]
    assert raw["Priority"] == "100"
    content = "\n".join(attachment_texts(rt, ticket.ref).values())
    for expected in (
        filed.description,
        "Category: network",
        "Urgency: high",
        f"Contact: {contact}",
        filed.local_id,
    ):
        assert expected in content

    assert connector.find(filed.idempotency_key) == ticket
    assert connector.find(unique("hv-never-filed-")) is None


def test_find_is_exact_about_the_key(connector: RequestTrackerConnector) -> None:
    """HD-1 is not HD-10, and a LIKE wildcard in the key does not match other keys."""
    base = unique("hv-")
    ten = connector.create(draft(idempotency_key=f"{base}-HD-10"))
    assert connector.find(f"{base}-HD-1") is None
    assert connector.find(f"{base}-HD-1_") is None
    found = connector.find(f"{base}-HD-10")
    assert found is not None and found.ref == ten.ref


def test_a_retry_finds_the_first_ticket_instead_of_filing_again(
    rt: RtInstance, connector: RequestTrackerConnector
) -> None:
    """The delivery's exactly-once step, ``find(key) or create(draft)``, run twice, files one ticket."""
    filed = draft(f"{unique('bob-')}@example.com")
    first = connector.find(filed.idempotency_key) or connector.create(filed)
    again = connector.find(filed.idempotency_key) or connector.create(filed)
    assert again == first
    query = f"Subject LIKE {ticketsql_string(key_marker(filed.idempotency_key))}"
    assert rest(rt, "GET", "/tickets", params={"query": query})["count"] == 1


def test_get_by_ref_or_number(connector: RequestTrackerConnector) -> None:
    ticket = connector.create(draft(None, urgency="low", summary="Printer on floor 3 jams"))
    assert connector.get(ticket.ref) == ticket
    assert connector.get(ticket.number) == ticket
    with pytest.raises(ConnectorError) as missing:
        connector.get("999999")
    assert missing.value.problem == "not_found"
    with pytest.raises(ConnectorError) as nonsense:
        connector.get("INC0010042")
    assert nonsense.value.problem == "not_found"


def test_comment_is_added_to_the_ticket(rt: RtInstance, connector: RequestTrackerConnector) -> None:
    ticket = connector.create(draft(f"{unique('carol-')}@example.com"))
    text = f"Handoff from Helpdesk Voice {unique()}: the caller restarted the router twice."
    connector.comment(ticket.ref, text)

    history = rest(rt, "GET", f"/ticket/{ticket.ref}/history", params={"fields": "Type"})["items"]
    comments = [str(item["id"]) for item in history if item["Type"] == "Comment"]
    assert len(comments) == 1
    assert attachment_texts(rt, ticket.ref)[comments[0]].strip() == text

    with pytest.raises(ConnectorError) as missing:
        connector.comment("999999", "nobody reads this")
    assert missing.value.problem == "not_found"


def test_a_keyed_comment_is_found_by_its_key_and_only_by_it(
    rt_comments: RtInstance, client: httpx.Client
) -> None:
    connector = RequestTrackerConnector(client, rt_comments.base_url, rt_comments.queue, rt_comments.token)
    keyed: KeyedComments = connector  # mypy checks that the class implements the protocol
    ticket = connector.create(draft(f"{unique('frank-')}@example.com"))
    key = f"{unique('hv-')}-HD-1001-note-000001-9f3a61c2"
    assert not keyed.has_comment(ticket.ref, key)
    text = f"Handoff {unique()}: the caller restarted the router twice."
    keyed.comment_with_key(ticket.ref, text + "\n", key)

    assert keyed.has_comment(ticket.ref, key)
    assert keyed.has_comment(ticket.number, key)  # "RT #17" as well as "17"
    assert not keyed.has_comment(ticket.ref, key[:-1])  # a key that is a prefix of it is another key
    history = rest(rt_comments, "GET", f"/ticket/{ticket.ref}/history", params={"fields": "Type"})["items"]
    (comment,) = [str(item["id"]) for item in history if item["Type"] == "Comment"]
    assert attachment_texts(rt_comments, ticket.ref)[comment].strip() == f"{text}\n\n{note_marker(key)}"

    with pytest.raises(ConnectorError) as missing:
        keyed.has_comment("999999", key)
    assert missing.value.problem == "not_found"


def test_without_show_ticket_comments_rt_hides_the_comments_and_their_keys(
    rt: RtInstance, connector: RequestTrackerConnector
) -> None:
    """The documented limit: the session's RT grants no ShowTicketComments, so the key is never seen."""
    ticket = connector.create(draft())
    key = f"{unique('hv-')}-HD-1001-note-000001-9f3a61c2"
    connector.comment_with_key(ticket.ref, "Handed over to a technician.", key)
    assert note_marker(key) in "".join(attachment_texts(rt, ticket.ref).values())  # RT has it
    assert not connector.has_comment(ticket.ref, key)  # the account cannot see it


def test_open_tickets_are_the_contacts_active_ones_newest_first(
    rt: RtInstance, connector: RequestTrackerConnector
) -> None:
    alice = f"{unique('o.brien-')}'x@example.com"  # an apostrophe is valid in an address, and quoted
    bob = f"{unique('bob-')}@example.com"
    older = connector.create(draft(alice, summary="Laptop fan is loud"))
    resolved = connector.create(draft(alice, summary="Password reset"))
    newer = connector.create(draft(alice, summary="Outlook asks for the password"))
    bobs = connector.create(draft(bob, summary="Monitor flickers"))
    rest(rt, "PUT", f"/ticket/{resolved.ref}", json={"Status": "resolved"})

    mine = connector.open_tickets(alice)
    assert [t.ref for t in mine] == [newer.ref, older.ref]
    assert [t.title for t in mine] == ["Outlook asks for the password", "Laptop fan is loud"]
    assert [t.ref for t in connector.open_tickets(bob)] == [bobs.ref]
    # RT compares addresses without case.
    assert [t.ref for t in connector.open_tickets(f"  {bob.upper()}  ")] == [bobs.ref]
    assert connector.open_tickets("Alice O'Brien") == []  # a name was never made a requestor
    # Quoted, the would-be condition is part of one address: its own ticket only, not everyone's.
    assert connector.open_tickets("x'OR'1'='1@example.com") == []
    sly = f"{unique('x')}'OR'1'='1@example.com"
    slys = connector.create(draft(sly, summary="Keyboard missing keys"))
    assert [t.ref for t in connector.open_tickets(sly)] == [slys.ref]


def test_an_unknown_queue_is_a_configuration_problem(rt: RtInstance, client: httpx.Client) -> None:
    wrong = RequestTrackerConnector(client, rt.base_url, "No Such Queue", rt.token)
    with pytest.raises(ConnectorError) as refused:
        wrong.create(draft("dave@example.com"))
    assert refused.value.problem == "config"
    assert "'No Such Queue'" in refused.value.message
    assert rt.token not in refused.value.message


def test_a_wrong_base_url_is_a_configuration_problem(rt: RtInstance, client: httpx.Client) -> None:
    wrong = RequestTrackerConnector(client, rt.base_url + "/helpdesk", rt.queue, rt.token)
    calls: list[Callable[[], object]] = [
        lambda: wrong.find("hv-x-HD-1"),
        lambda: wrong.get("1"),
        lambda: wrong.create(draft()),
    ]
    for call in calls:
        with pytest.raises(ConnectorError) as refused:
            call()
        assert refused.value.problem == "config", refused.value.message


@pytest.mark.parametrize("token", ["1-27-0123456789abcdef0123456789abcdef", "not-a-token"])
def test_a_wrong_token_is_an_auth_problem(rt: RtInstance, client: httpx.Client, token: str) -> None:
    wrong = RequestTrackerConnector(client, rt.base_url, rt.queue, token)
    calls: list[Callable[[], object]] = [
        lambda: wrong.find("hv-x-HD-1"),
        lambda: wrong.create(draft()),
        lambda: wrong.get("1"),
        lambda: wrong.comment("1", "x"),
        lambda: wrong.open_tickets("erin@example.com"),
    ]
    for call in calls:
        with pytest.raises(ConnectorError) as refused:
            call()
        assert refused.value.problem == "auth"
        assert not refused.value.retryable
        assert token not in refused.value.message


def test_rt_that_does_not_answer_is_unavailable(client: httpx.Client) -> None:
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = RequestTrackerConnector(client, f"http://127.0.0.1:{port}", "Helpdesk", "1-27-secret")
    calls: list[Callable[[], object]] = [
        lambda: down.find("hv-x-HD-1"),
        lambda: down.create(draft()),
        lambda: down.get("1"),
    ]
    for call in calls:
        with pytest.raises(ConnectorError) as failed:
            call()
        assert failed.value.problem == "unavailable"
        assert failed.value.retryable
        assert "secret" not in failed.value.message


def test_list_articles_reads_each_published_article_with_its_content(
    rt: RtInstance, connector: RequestTrackerConnector
) -> None:
    name = unique("Badge printing ")
    html = "<p>Tap your badge.</p><ol><li>Hold it flat.</li><li>Wait for the beep.</li></ol>"
    made = rest(
        rt,
        "POST",
        "/article",
        json={"Class": "General", "Name": name, "Summary": "Badge", "CustomFields": {"Content": html}},
    )
    as_source: ArticleSource = connector  # mypy checks the class is an article source too
    (article,) = [a for a in as_source.list_articles() if a.title == name]
    assert article.ref == str(made["id"]) and article.body == html and article.body_is_html
    assert article.summary == "Badge" and article.url.endswith(
        f"/SelfService/Article/Display.html?id={made['id']}"
    )
    assert article.updated_at is not None and article.updated_at.endswith("Z")

    plain = rest(
        rt,
        "POST",
        "/article",
        json={"Class": "General", "Name": unique("Plain "), "CustomFields": {"Content": "1. One.\n2. Two."}},
    )
    listed = {a.ref: a for a in connector.list_articles()}
    assert not listed[str(plain["id"])].body_is_html
    httpx.delete(f"{rt.base_url}/REST/2.0/article/{plain['id']}", auth=("root", rt.root_password), timeout=20)
    assert str(plain["id"]) not in {a.ref for a in connector.list_articles()}


# -- the error mapping, without RT -----------------------------------------------------------------

TOKEN = "1-27-s3cr3tt0k3n"
Handler = Callable[[httpx.Request], httpx.Response]


def mocked(handler: Handler, queue: str = "Helpdesk") -> RequestTrackerConnector:
    return RequestTrackerConnector(
        httpx.Client(transport=httpx.MockTransport(handler)), "https://rt.example.com/rt", queue, TOKEN
    )


def answer(status: int, body: object = None, **headers: str) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        if body is None:
            return httpx.Response(status, headers=headers)
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handle


def refusal(
    handler: Handler, call: Callable[[RequestTrackerConnector], object] | None = None
) -> ConnectorError:
    connector = mocked(handler)
    return refused(lambda: (call or (lambda c: c.find("hv-0123456789abcdef-HD-1")))(connector), TOKEN)


def test_mocked_429_is_rate_limited_with_retry_after() -> None:
    error = refusal(answer(429, {"message": "Slow down"}, **{"Retry-After": "7"}))
    assert (error.problem, error.retry_after, error.retryable) == ("rate_limited", 7.0, True)
    assert "Slow down" in error.message
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    dated = refusal(answer(429, None, **{"Retry-After": later}))
    assert dated.retry_after is not None and 100 < dated.retry_after <= 120
    assert refusal(answer(429)).retry_after is None


@pytest.mark.parametrize("status", [500, 502, 503])
def test_mocked_5xx_is_unavailable(status: int) -> None:
    error = refusal(answer(status, {"message": "Database is locked"}))
    assert error.problem == "unavailable" and error.retryable
    assert f"HTTP {status}" in error.message and "Database is locked" in error.message


@pytest.mark.parametrize(
    "failure",
    [httpx.ReadTimeout("timed out"), httpx.ConnectTimeout("timed out"), httpx.ConnectError("refused")],
)
def test_mocked_timeouts_and_refusals_are_unavailable(failure: httpx.TransportError) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise failure

    error = refusal(handle)
    assert error.problem == "unavailable"
    assert "rt.example.com" in error.message


def test_mocked_statuses_map_to_problems() -> None:
    echo = {"message": f"bad token {TOKEN}"}  # even if RT repeated the token, the message must not
    assert refusal(answer(401, echo)).problem == "auth"
    assert refusal(answer(403, {"message": "Forbidden"})).problem == "auth"
    assert refusal(answer(400, {"message": "Invalid query"})).problem == "rejected"
    assert refusal(answer(422, {"message": "Unprocessable"})).problem == "rejected"
    assert refusal(answer(404, "<html>Not Found</html>")).problem == "config"
    assert refusal(answer(302, None, Location="https://sso.example.com/login")).problem == "config"
    assert refusal(answer(200, "<html>Sign in</html>")).problem == "config"
    assert refusal(answer(200, {"unexpected": True})).problem == "unavailable"
    assert refusal(answer(404, {"message": "Not Found"}), lambda c: c.get("42")).problem == "not_found"
    assert refusal(answer(404, "<html>Not Found</html>"), lambda c: c.get("42")).problem == "config"


def test_mocked_unknown_queue_names_the_queue() -> None:
    error = refusal(answer(403, {"message": "Forbidden"}), lambda c: c.create(draft()))
    assert error.problem == "config"
    assert "'Helpdesk'" in error.message


def test_mocked_queries_are_quoted() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"items": [], "count": 0, "page": 1, "pages": 0, "per_page": 100})

    connector = mocked(handle)
    assert connector.open_tickets("o'brien@example.com") == []
    query = seen[0].url.params["query"]
    assert query == "Requestor.EmailAddress = 'o\\'brien@example.com' AND Status = '__Active__'"
    assert seen[0].headers["Authorization"] == f"token {TOKEN}"
    assert ticketsql_string("a\\'b") == "'a\\\\\\'b'"
    with pytest.raises(ConnectorError) as refused:
        connector.open_tickets("CF.{Secret}@example.com")
    assert refused.value.problem == "rejected"
    assert len(seen) == 1


def test_mocked_request_body_of_create() -> None:
    sent: list[dict[str, Any]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            sent.append(json.loads(request.content))
            return httpx.Response(201, json={"id": "77", "type": "ticket"})
        if request.url.path.endswith("/queue/Help%20desk"):
            return httpx.Response(200, json={"id": 3, "Name": "Help desk", "Disabled": "0"})
        return httpx.Response(200, json={"id": 77, "Subject": "x [HV:k]", "Status": "new"})

    connector = mocked(handle, queue="Help desk")
    ticket = connector.create(draft("Alice from accounting", summary="  Screen\nblank  " + "x" * 300))
    body = sent[0]
    assert body["Queue"] == "Help desk" and body["Priority"] == 100 and "Requestor" not in body
    assert len(body["Subject"]) <= 200 and body["Subject"].endswith("]") and "\n" not in body["Subject"]
    assert "Contact: Alice from accounting" in body["Content"]
    assert (ticket.number, ticket.ref, ticket.url) == (
        "RT #77",
        "77",
        "https://rt.example.com/rt/Ticket/Display.html?id=77",
    )


def test_rt_server_config_stays_in_its_directory(tmp_path: Path) -> None:
    """tests/rt_server.py points RT at its own config only, and that config at its own directory."""
    from tests.rt_server import _write_config

    env = _write_config(tmp_path, 12345)
    assert env["RT_SITE_CONFIG"] == str(tmp_path / "RT_SiteConfig.pm")
    assert env["RT_SITE_CONFIG_DIR"] == str(tmp_path / "RT_SiteConfig.d")
    config = (tmp_path / "RT_SiteConfig.pm").read_text()
    assert "/etc/" not in config and "/var/" not in config


def test_mocked_articles_are_paged_until_a_short_page() -> None:
    pages: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        pages.append(request)
        page = int(request.url.params["page"])
        count = PAGE_SIZE if page == 1 else 1
        items = [
            {
                "id": str((page - 1) * PAGE_SIZE + n + 1),
                "Name": f"Article {n}",
                "LastUpdated": "2026-12-04T10:00:00Z",
                "CustomFields": [
                    {"name": "Attachment", "values": [{"filename": "x.png"}]},
                    {"name": "Content", "values": ["Restart it."]},
                ],
            }
            for n in range(count)
        ]
        # What REST 2 answers an account that may not see everything: no total, no page count.
        return httpx.Response(200, json={"items": items, "count": count, "total": None, "pages": None})

    articles = mocked(handle).list_articles()
    assert len(articles) == PAGE_SIZE + 1 and [r.url.params["page"] for r in pages] == ["1", "2"]
    assert all(a.body == "Restart it." and not a.body_is_html for a in articles)
    first = pages[0].url.params
    assert json.loads(first["query"]) == [{"field": "id", "operator": ">", "value": "0"}]
    assert first["fields"] == "Name,Summary,LastUpdated,Class,CustomFields" and first["per_page"] == str(
        PAGE_SIZE
    )
    assert pages[0].headers["Authorization"] == f"token {TOKEN}"


def test_mocked_has_comment_pages_through_the_attachments_until_a_short_page() -> None:
    key = "hv-0123456789abcdef-HD-1001-note-000002-0b1c2d3e"
    pages: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        pages.append(request)
        page = int(request.url.params["page"])
        if page == 1:
            items = [
                {"id": str(n), "TransactionId": str(n), "Content": "Other text."} for n in range(PAGE_SIZE)
            ]
        else:
            items = [{"id": "999", "TransactionId": "999", "Content": f"Note.\n\n{note_marker(key)}\n"}]
        return httpx.Response(200, json={"items": items, "count": len(items), "total": None, "pages": None})

    assert mocked(handle).has_comment("17", key)
    assert [r.url.path for r in pages] == ["/rt/REST/2.0/ticket/17/attachments"] * 2
    assert [r.url.params["page"] for r in pages] == ["1", "2"]
    assert pages[0].url.params["fields"] == "Content,TransactionId"
    assert (
        refusal(answer(503, {"message": "down"}), lambda c: c.has_comment("17", key)).problem == "unavailable"
    )
    assert refusal(
        answer(404, {"message": "Resource does not exist"}), lambda c: c.has_comment("17", key)
    ).problem == ("not_found")


def test_mocked_article_list_failures_are_connector_errors() -> None:
    assert refusal(answer(503, {"message": "down"}), lambda c: c.list_articles()).problem == "unavailable"
    assert refusal(answer(200, "<html>login</html>"), lambda c: c.list_articles()).problem == "config"
    error = refusal(answer(200, {"items": "nope"}), lambda c: c.list_articles())
    assert error.problem == "unavailable"
