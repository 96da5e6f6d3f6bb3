"""The Jira Service Management connector against contracts recorded from Atlassian's references.

No real site is reachable here: every exchange is a recording in tests/data/contracts/jsm, and a
request that matches none of them fails the test (tests/contracts.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest

from app.tools.connectors.base import ConnectorError, KeyedComments
from app.tools.connectors.jsm import REFERENCE_PREFIX, JiraServiceManagementConnector, jql_string
from tests.connector_cases import DRAFT, KEY, WALK_IN, ReplayHarness, checked, classified, raising, refused

SITE = "https://acme.atlassian.net"
EMAIL = "helpdesk-bot@acme.example"
TOKEN = "ATATT3xFfGF0-test-token"


class Harness(ReplayHarness):
    def connect(self, *names: str, page_size: int = 50) -> JiraServiceManagementConnector:
        client = self.client("jsm", names)
        return JiraServiceManagementConnector(client, SITE, EMAIL, TOKEN, "4", "27", page_size=page_size)


@pytest.fixture
def jsm() -> Iterator[Harness]:
    yield from checked(Harness())


def failure(call: Callable[[], object]) -> ConnectorError:
    return refused(call, TOKEN)


def test_create_raises_the_request_on_behalf_of_the_customer_found_by_email(jsm: Harness) -> None:
    connector = jsm.connect("user_search_one", "create_201")
    ticket = connector.create(DRAFT)
    assert (ticket.number, ticket.ref, ticket.status) == ("IT-17", "IT-17", "Waiting for support")
    assert ticket.url == f"{SITE}/servicedesk/customer/portal/4/IT-17"
    assert ticket.title == "VPN drops every few minutes"
    assert jsm.replay is not None
    sent = json.loads(jsm.replay.requests[-1].content)
    description = sent["requestFieldValues"]["description"]
    assert description.endswith(f"{REFERENCE_PREFIX} {KEY}")
    assert "Contact: ana.lopez@example.com" in description


def test_create_for_an_unknown_customer_is_raised_by_the_integration_account(jsm: Harness) -> None:
    ticket = jsm.connect("user_search_none", "create_201_no_behalf").create(WALK_IN)
    assert ticket.number == "IT-18"


def test_find_searches_the_desks_project_for_the_reference_phrase(jsm: Harness) -> None:
    ticket = jsm.connect("servicedesk_200", "find_hit").find(KEY)
    assert ticket is not None
    assert (ticket.number, ticket.status, ticket.url) == (
        "IT-17",
        "Waiting for support",
        f"{SITE}/browse/IT-17",
    )
    assert ticket.updated_at == "2026-12-04T16:07:12+00:00"


def test_find_returns_none_when_nothing_carries_the_key(jsm: Harness) -> None:
    assert jsm.connect("servicedesk_200", "find_miss").find(KEY) is None


def test_the_service_desk_is_read_once_per_connector(jsm: Harness) -> None:
    connector = jsm.connect("servicedesk_200", "find_miss", "find_hit")
    assert connector.find(KEY) is None
    assert connector.find(KEY) is not None


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ('x" OR project = SECRET OR text ~ "y', '"x\\" OR project = SECRET OR text ~ \\"y"'),
        ("two\nlines", '"two lines"'),
    ],
)
def test_jql_strings_are_escaped_so_a_value_cannot_end_the_string(value: str, quoted: str) -> None:
    assert jql_string(value) == quoted


def test_a_key_with_quotes_cannot_leave_the_phrase(jsm: Harness) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/servicedesk/4"):
            return httpx.Response(200, json={"id": "4", "projectId": "10021", "projectKey": "IT"})
        jql = json.loads(request.content)["jql"]
        assert jql == 'project = 10021 AND text ~ "\\"evil OR project SECRET\\""'
        return httpx.Response(200, json={"issues": [], "isLast": True})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    connector = JiraServiceManagementConnector(client, SITE, EMAIL, TOKEN, "4", "27")
    assert connector.find('evil" OR project = "SECRET') is None


def test_get_reads_the_request_status_and_portal_link(jsm: Harness) -> None:
    ticket = jsm.connect("get_200").get("IT-17")
    assert (ticket.number, ticket.status) == ("IT-17", "In Progress")
    assert ticket.url == f"{SITE}/servicedesk/customer/portal/4/IT-17"


def test_get_of_a_missing_request_is_not_found(jsm: Harness) -> None:
    error = failure(lambda: jsm.connect("get_404").get("IT-999"))
    assert error.problem == "not_found" and "does not exist" in error.message


def test_get_of_something_that_is_not_an_issue_key_sends_nothing(jsm: Harness) -> None:
    connector = jsm.connect()
    assert failure(lambda: connector.get("../../rest/api/3/myself")).problem == "not_found"


def test_comment_is_public(jsm: Harness) -> None:
    jsm.connect("comment_201").comment("IT-17", "Handed over to a technician.")


def test_comment_on_a_missing_request_is_not_found(jsm: Harness) -> None:
    connector = jsm.connect("comment_404")
    assert failure(lambda: connector.comment("IT-999", "hello")).problem == "not_found"


NOTE_KEY = f"{KEY}-note-000001-9f3a61c2"


def test_a_keyed_comment_ends_with_the_notes_key(jsm: Harness) -> None:
    keyed: KeyedComments = jsm.connect("comment_keyed_201")  # mypy: the class implements the protocol
    keyed.comment_with_key("IT-17", "Handed over to a technician.", NOTE_KEY)


def test_has_comment_reads_the_comments_page_by_page_until_it_finds_the_key(jsm: Harness) -> None:
    assert jsm.connect("comments_page1", "comments_page2", page_size=2).has_comment("IT-17", NOTE_KEY)


def test_has_comment_is_false_when_no_comment_carries_the_key(jsm: Harness) -> None:
    assert not jsm.connect("comments_miss", page_size=2).has_comment("IT-17", NOTE_KEY)


def test_has_comment_of_a_missing_request_is_not_found(jsm: Harness) -> None:
    connector = jsm.connect("comments_404")
    assert failure(lambda: connector.has_comment("IT-999", NOTE_KEY)).problem == "not_found"


def test_open_tickets_of_another_customer_page_through_jql_by_token(jsm: Harness) -> None:
    connector = jsm.connect("servicedesk_200", "search_open_page1", "search_open_page2", page_size=2)
    tickets = connector.open_tickets("ana.lopez@example.com")
    assert [t.number for t in tickets] == ["IT-21", "IT-17", "IT-9"]
    assert [t.status for t in tickets] == ["Waiting for support", "In Progress", "Waiting for customer"]


def test_open_tickets_of_the_integration_account_page_through_the_request_list_newest_first(
    jsm: Harness,
) -> None:
    connector = jsm.connect("own_open_page1", "own_open_page2", page_size=2)
    tickets = connector.open_tickets(EMAIL.upper())
    assert [t.number for t in tickets] == ["IT-20", "IT-15", "IT-12"]


def test_open_tickets_for_a_spoken_name_asks_nothing(jsm: Harness) -> None:
    assert jsm.connect().open_tickets("Ana Lopez") == []


def test_an_unknown_service_desk_is_config(jsm: Harness) -> None:
    connector = jsm.connect("servicedesk_404")
    error = failure(lambda: connector.find(KEY))
    assert error.problem == "config" and "service desk 4" in error.message


@pytest.mark.parametrize(
    ("recording", "problem", "said"),
    [
        ("create_400", "rejected", "Components is required"),
        ("create_401", "auth", "API token"),
        ("create_403", "auth", "on behalf of other customers"),
        ("create_404", "config", "request type 27"),
        ("create_502", "unavailable", "HTTP 502"),
        ("create_200_html", "unavailable", "documented JSON"),
    ],
)
def test_each_failure_of_create_is_classified_and_said_without_the_token(
    jsm: Harness, recording: str, problem: str, said: str
) -> None:
    connector = jsm.connect("user_search_one", recording)
    classified(failure(lambda: connector.create(DRAFT)), problem, said)


def test_429_is_rate_limited_with_the_retry_after_seconds(jsm: Harness) -> None:
    connector = jsm.connect("user_search_one", "create_429")
    error = failure(lambda: connector.create(DRAFT))
    assert (error.problem, error.retry_after) == ("rate_limited", 12.0)


def test_a_jql_error_is_rejected_with_jiras_own_message(jsm: Harness) -> None:
    connector = jsm.connect("servicedesk_200", "find_400_jql")
    error = failure(lambda: connector.find(KEY))
    assert error.problem == "rejected" and "quoted string has not been completed" in error.message


@pytest.mark.parametrize("exc", [httpx.ReadTimeout("timed out"), httpx.ConnectError("refused")])
def test_timeouts_and_connection_failures_are_unavailable(exc: httpx.HTTPError) -> None:
    connector = JiraServiceManagementConnector(raising(exc), SITE, EMAIL, TOKEN, "4", "27")
    error = failure(lambda: connector.get("IT-17"))
    assert error.problem == "unavailable" and "acme.atlassian.net" in error.message


def test_a_user_search_the_account_may_not_make_does_not_stop_the_request(jsm: Harness) -> None:
    assert jsm.connect("user_search_403", "create_201_no_behalf").create(WALK_IN).number == "IT-18"
