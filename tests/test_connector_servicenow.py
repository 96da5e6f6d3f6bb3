"""The ServiceNow connector against contracts recorded from the Table API reference.

No real instance is reachable here: every exchange is a recording in tests/data/contracts/servicenow,
and a request that matches none of them fails the test (tests/contracts.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from app.tools.article_sync import ArticleSync
from app.tools.connectors.base import ArticleSource, ConnectorError, KeyedComments
from app.tools.connectors.servicenow import ServiceNowConnector
from app.tools.kb_sources import KnowledgeBase
from tests.connector_cases import DRAFT, KEY, WALK_IN, ReplayHarness, checked, classified, raising, refused
from tests.contracts import ContractMismatch, Replay

BASE = "https://acme.service-now.com"
PASSWORD = "Pa55-w0rd!x"
SYS = "9d385017c611228701d22104cc95c371"
MISSING = "e8caedcbc0a80164017df472f39eaed1"


class Harness(ReplayHarness):
    def connect(
        self, *names: str, assignment_group: str | None = "Service Desk", page_size: int = 50
    ) -> ServiceNowConnector:
        client = self.client("servicenow", names)
        return ServiceNowConnector(
            client, BASE, "hv-integration", PASSWORD, assignment_group, page_size=page_size
        )


@pytest.fixture
def sn() -> Iterator[Harness]:
    yield from checked(Harness())


def failure(call: Callable[[], object]) -> ConnectorError:
    return refused(call, PASSWORD)


def test_create_files_an_incident_with_the_key_as_correlation_id_and_the_caller_found_by_email(
    sn: Harness,
) -> None:
    connector = sn.connect("caller_lookup_one", "create_201")
    ticket = connector.create(DRAFT)
    assert ticket.number == "INC0010042"
    assert ticket.ref == SYS
    assert ticket.status == "New"
    assert ticket.url == f"{BASE}/incident.do?sys_id={SYS}"
    assert ticket.updated_at == "2026-12-04T16:07:12Z"
    assert sn.replay is not None
    sent = sn.replay.requests[-1].read().decode()
    assert "Contact: ana.lopez@example.com" in sent and "HD-1042" in sent


def test_create_without_a_matching_user_or_group_sends_neither(sn: Harness) -> None:
    connector = sn.connect("caller_lookup_none", "create_201_no_caller", assignment_group=None)
    ticket = connector.create(WALK_IN)
    assert (ticket.number, ticket.status) == ("INC0010043", "New")


def test_find_returns_the_incident_carrying_the_key(sn: Harness) -> None:
    ticket = sn.connect("find_hit").find(KEY)
    assert ticket is not None and ticket.number == "INC0010042" and ticket.ref == SYS


def test_find_returns_none_when_no_incident_carries_the_key(sn: Harness) -> None:
    assert sn.connect("find_miss").find(KEY) is None


@pytest.mark.parametrize(
    "key", ["abc^ORactive=true", "abc^NQactive=true", "javascript:gs.getUserID()", "a\nb"]
)
def test_a_key_that_would_change_the_encoded_query_is_refused_before_anything_is_sent(
    sn: Harness, key: str
) -> None:
    connector = sn.connect()
    assert failure(lambda: connector.find(key)).problem == "rejected"
    assert sn.replay is not None and sn.replay.requests == []


def test_get_maps_the_state_number_to_its_word(sn: Harness) -> None:
    ticket = sn.connect("get_200").get(SYS)
    assert (ticket.number, ticket.status, ticket.title) == (
        "INC0010042",
        "In Progress",
        "VPN drops every few minutes",
    )
    assert ticket.updated_at == "2026-12-04T17:01:05Z"


def test_get_of_a_missing_incident_is_not_found(sn: Harness) -> None:
    error = failure(lambda: sn.connect("get_404").get(MISSING))
    assert error.problem == "not_found"
    assert "No Record found" in error.message


def test_get_of_something_that_is_not_a_sys_id_is_not_found_without_a_request(sn: Harness) -> None:
    connector = sn.connect()
    assert failure(lambda: connector.get("../sys_user")).problem == "not_found"


def test_comment_patches_the_comments_journal_field(sn: Harness) -> None:
    sn.connect("comment_200").comment(
        SYS, "Caller handed over to a technician: VPN client 5.2, reconnects every 4 minutes."
    )


def test_comment_on_a_missing_incident_is_not_found(sn: Harness) -> None:
    connector = sn.connect("comment_404")
    assert failure(lambda: connector.comment(MISSING, "hello")).problem == "not_found"


NOTE_KEY = f"{KEY}-note-000001-9f3a61c2"


def test_a_keyed_comment_ends_with_the_notes_key_and_the_journal_finds_it(sn: Harness) -> None:
    connector = sn.connect("journal_miss", "comment_keyed_200", "journal_hit")
    keyed: KeyedComments = connector  # mypy checks that the class implements the protocol
    assert not keyed.has_comment(SYS, NOTE_KEY)
    keyed.comment_with_key(
        SYS, "Caller handed over to a technician: VPN client 5.2, reconnects every 4 minutes.\n", NOTE_KEY
    )
    assert keyed.has_comment(SYS, NOTE_KEY)


def test_a_journal_the_account_may_not_read_is_an_auth_problem(sn: Harness) -> None:
    connector = sn.connect("journal_403")
    error = failure(lambda: connector.has_comment(SYS, NOTE_KEY))
    assert error.problem == "auth" and not error.retryable


def test_has_comment_refuses_a_ref_or_key_that_would_change_the_query_without_a_request(
    sn: Harness,
) -> None:
    connector = sn.connect()
    assert failure(lambda: connector.has_comment("x^ORactive=true", NOTE_KEY)).problem == "not_found"
    assert failure(lambda: connector.has_comment(SYS, "k^NQactive=true")).problem == "rejected"
    assert sn.replay is not None and sn.replay.requests == []


def test_open_tickets_follow_the_link_header_across_pages_newest_first(sn: Harness) -> None:
    tickets = sn.connect("open_page1", "open_page2", page_size=2).open_tickets("ana.lopez@example.com")
    assert [t.number for t in tickets] == ["INC0010051", "INC0010042", "INC0009977"]
    assert [t.status for t in tickets] == ["New", "In Progress", "On Hold"]


def test_open_tickets_for_a_spoken_name_asks_nothing(sn: Harness) -> None:
    assert sn.connect().open_tickets("Ana Lopez") == []


def test_open_tickets_refuse_an_address_that_would_inject_a_condition(sn: Harness) -> None:
    connector = sn.connect()
    error = failure(lambda: connector.open_tickets("x@example.com^NQactive=false"))
    assert error.problem == "rejected"


@pytest.mark.parametrize(
    ("recordings", "problem", "said"),
    [
        (("caller_lookup_one", "create_401"), "auth", "User Not Authenticated"),
        (("caller_lookup_one", "create_403_acl"), "auth", "ACL Exception"),
        (("caller_lookup_one", "create_404_table"), "config", "Invalid table incident"),
        (("caller_lookup_one", "create_400_mandatory"), "rejected", "mandatory"),
        (("caller_lookup_one", "create_503"), "unavailable", "HTTP 503"),
        (("caller_lookup_one", "create_200_hibernating"), "unavailable", "other than the Table API's JSON"),
    ],
)
def test_each_failure_of_create_is_classified_and_said_without_credentials(
    sn: Harness, recordings: tuple[str, ...], problem: str, said: str
) -> None:
    connector = sn.connect(*recordings)
    classified(failure(lambda: connector.create(DRAFT)), problem, said)


def test_429_is_rate_limited_with_the_retry_after_seconds(sn: Harness) -> None:
    connector = sn.connect("caller_lookup_one", "create_429")
    error = failure(lambda: connector.create(DRAFT))
    assert error.problem == "rate_limited" and error.retry_after == 37.0 and error.retryable


def test_a_500_on_find_is_unavailable_and_a_404_from_another_host_is_config(sn: Harness) -> None:
    connector = sn.connect("find_500", "find_404_not_servicenow")
    assert failure(lambda: connector.find(KEY)).problem == "unavailable"
    error = failure(lambda: connector.find(KEY))
    assert error.problem == "config" and "instance URL" in error.message


@pytest.mark.parametrize(
    "exc", [httpx.ConnectTimeout("timed out"), httpx.ReadTimeout("timed out"), httpx.ConnectError("refused")]
)
def test_timeouts_and_connection_failures_are_unavailable(exc: httpx.HTTPError) -> None:
    connector = ServiceNowConnector(raising(exc), BASE, "u", PASSWORD)
    error = failure(lambda: connector.find(KEY))
    assert error.problem == "unavailable" and "acme.service-now.com" in error.message


def test_a_request_outside_the_contract_fails_the_test() -> None:
    replay = Replay.of("servicenow", ["find_miss"])
    connector = ServiceNowConnector(replay.client(), BASE, "hv-integration", PASSWORD)
    with pytest.raises(ContractMismatch):
        connector.find("some-other-key")
    with pytest.raises(ContractMismatch):
        replay.check()


def test_text_that_cannot_be_encoded_is_rejected_not_raised(sn: Harness) -> None:
    connector = sn.connect("caller_lookup_none")
    broken = replace(WALK_IN, summary="bad \ud800")
    assert failure(lambda: connector.create(broken)).problem == "rejected"


def test_a_caller_lookup_the_user_may_not_make_does_not_stop_the_ticket(sn: Harness) -> None:
    connector = sn.connect("caller_lookup_403", "create_201_no_caller", assignment_group=None)
    assert connector.create(WALK_IN).number == "INC0010043"


def test_get_and_comment_also_take_the_incident_number(sn: Harness) -> None:
    connector = sn.connect("get_by_number", "get_by_number", "comment_200")
    assert connector.get("INC0010042").ref == SYS
    connector.comment(
        "INC0010042", "Caller handed over to a technician: VPN client 5.2, reconnects every 4 minutes."
    )


def test_get_of_an_unknown_number_is_not_found(sn: Harness) -> None:
    connector = sn.connect("get_by_number_none")
    assert failure(lambda: connector.get("INC0099999")).problem == "not_found"


# -- the knowledge base (Knowledge Management REST API) -----------------------------------------------

KB_VPN = "3c8a1f0e47a1b210c5d2e8f9a0b1c2d3"
KB_PRINTER = "7e2b9c4d58f0a1e2b3c4d5e6f7a8b9c0"
KB_VOICEMAIL = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
EVERY_ARTICLE = (
    "kb_list_page1",
    "kb_list_page2",
    "kb_article_vpn",
    "kb_article_printer",
    "kb_article_voicemail",
)


def test_list_articles_pages_through_the_list_and_reads_each_body(sn: Harness) -> None:
    connector = sn.connect(*EVERY_ARTICLE, page_size=2)
    as_source: ArticleSource = connector  # mypy checks the class is an article source too
    articles = as_source.list_articles()
    assert [(a.ref, a.number, a.title) for a in articles] == [
        (KB_VPN, "KB0010001", "VPN drops every few minutes"),
        (KB_PRINTER, "KB0010002", "Printer jam on the second floor"),
        (KB_VOICEMAIL, "KB0010003", "Reset your voicemail PIN"),
    ]
    vpn = articles[0]
    assert vpn.url == f"{BASE}/sp?id=kb_article_view&sys_kb_id={KB_VPN}"
    assert vpn.updated_at == "2026-11-20 09:12:44"
    assert vpn.body_is_html and vpn.body is not None and "<li>Sign in with your badge PIN.</li>" in vpn.body


def test_list_articles_skips_the_bodies_the_caller_already_holds(sn: Harness) -> None:
    connector = sn.connect("kb_list_page1", "kb_list_page2", "kb_article_printer", page_size=2)
    known = {
        KB_VPN: "2026-11-20 09:12:44",
        KB_PRINTER: "2026-11-01 00:00:00",
        KB_VOICEMAIL: "2026-11-22 08:00:00",
    }
    articles = {a.ref: a for a in connector.list_articles(known)}
    assert articles[KB_VPN].body is None and articles[KB_VOICEMAIL].body is None
    assert "Open tray 2." in (articles[KB_PRINTER].body or "")


def test_an_article_gone_between_the_list_and_its_fetch_is_left_out(sn: Harness) -> None:
    connector = sn.connect(
        "kb_list_page1",
        "kb_list_page2",
        "kb_article_vpn",
        "kb_article_printer",
        "kb_article_voicemail_404",
        page_size=2,
    )
    assert [a.ref for a in connector.list_articles()] == [KB_VPN, KB_PRINTER]


def test_a_failing_article_fails_the_whole_list(sn: Harness) -> None:
    connector = sn.connect(
        "kb_list_page1", "kb_list_page2", "kb_article_vpn", "kb_article_printer_500", page_size=2
    )
    error = failure(connector.list_articles)
    classified(error, "unavailable", "Transaction cancelled: maximum execution time exceeded")


@pytest.mark.parametrize(
    ("recording", "problem", "said"),
    [
        ("kb_list_401", "auth", "User Not Authenticated"),
        ("kb_list_404_no_plugin", "config", "Knowledge API plugin"),
        ("kb_list_200_login_page", "unavailable", "Knowledge Management API's JSON"),
    ],
)
def test_article_list_failures_are_connector_errors(
    sn: Harness, recording: str, problem: str, said: str
) -> None:
    error = failure(sn.connect(recording).list_articles)
    classified(error, problem, said)


def test_the_synced_articles_are_found_with_title_link_and_steps(sn: Harness, tmp_path: Path) -> None:
    connector = sn.connect(*EVERY_ARTICLE, page_size=2)
    folder = tmp_path / "servicenow-articles"
    report = ArticleSync(folder, lambda client: connector, system="ServiceNow").sync()
    assert report.ok and report.articles == 3 and report.problems == ()
    index = KnowledgeBase([folder]).index()
    ((article, _), *_) = index.search("my voicemail pin needs a reset")
    assert article.title == "Reset your voicemail PIN"
    assert article.link == f"{BASE}/sp?id=kb_article_view&sys_kb_id={KB_VOICEMAIL}"
    assert article.steps == ("Dial 8000.", "Press star, then 4.", "Choose a new PIN.")
    (vpn,) = [a for a in index.articles if a.title == "VPN drops every few minutes"]
    assert vpn.steps[-1] == "Sign in with your badge PIN."
