"""The webhook connector: its recorded contract, and a real round trip to a receiver on loopback.

The receiver is a stdlib ``http.server`` that verifies every request with
:func:`app.tools.connectors.webhook.verify_signature`, as the module docstring tells receivers to.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from app.sealed_files import DataKeyring
from app.tools.connectors.base import ConnectorError, KeyedComments
from app.tools.connectors.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookConnector,
    sign,
    verify_signature,
)
from app.tools.delivery import DeliveryWorker, note_key
from app.tools.tickets import TicketOutbox
from tests.connector_cases import DRAFT, KEY, ReplayHarness, checked, classified, raising, refused
from tests.file_keyring import FileKeyring
from tests.memory_ticket_system import run_until_notes_are_sent

SECRET = "whsec-4f9a1c7e2b"
URL = "https://hooks.example.com/hooks/helpdesk?token=flow-token-123"
NOW = 1796400420.0  # 2026-12-04T16:07:00Z, the timestamp in the recordings


class Harness(ReplayHarness):
    def connect(self, *names: str) -> WebhookConnector:
        return WebhookConnector(self.client("webhook", names), URL, SECRET, clock=lambda: NOW)


@pytest.fixture
def hook() -> Iterator[Harness]:
    yield from checked(Harness())


def failure(call: Callable[[], object]) -> ConnectorError:
    return refused(call, SECRET, "flow-token-123")


# -- the recorded contract ---------------------------------------------------------------------------


def test_create_sends_the_signed_draft_and_reads_the_receivers_number(hook: Harness) -> None:
    ticket = hook.connect("create_201").create(DRAFT)
    assert (ticket.number, ticket.status, ticket.url) == (
        "SUP-5531",
        "new",
        "https://support.example.com/tickets/5531",
    )
    assert hook.replay is not None
    sent = hook.replay.requests[0]
    assert verify_signature(
        SECRET, sent.headers[TIMESTAMP_HEADER], sent.content, sent.headers[SIGNATURE_HEADER], now=NOW
    )


def test_an_empty_2xx_keeps_the_local_number(hook: Harness) -> None:
    ticket = hook.connect("create_204").create(DRAFT)
    assert (ticket.number, ticket.status, ticket.ref) == ("HD-1042", "received", "HD-1042")


def test_find_asks_nothing_because_the_receiver_deduplicates(hook: Harness) -> None:
    assert hook.connect().find(KEY) is None


def test_get_and_open_tickets_say_the_webhook_gives_no_status(hook: Harness) -> None:
    connector = hook.connect()
    for call in (lambda: connector.get("SUP-5531"), lambda: connector.open_tickets("ana.lopez@example.com")):
        error = failure(call)
        assert error.problem == "config" and "gives no status" in error.message


def test_comment_is_a_signed_comment_event_to_the_same_url(hook: Harness) -> None:
    hook.connect("comment_202").comment("SUP-5531", "Handed over to a technician.")


NOTE_KEY = f"{KEY}-note-000001-9f3a61c2"


def test_a_keyed_comment_sends_the_notes_key_for_the_receiver_to_deduplicate(hook: Harness) -> None:
    keyed: KeyedComments = hook.connect("comment_keyed_202")  # mypy: the class implements the protocol
    keyed.comment_with_key("SUP-5531", "Handed over to a technician.", NOTE_KEY)
    # It cannot ask the receiver: sending again with the same key is the check, so it asks nothing.
    assert keyed.has_comment("SUP-5531", NOTE_KEY) is False


@pytest.mark.parametrize(
    ("recording", "problem", "said"),
    [
        ("create_401", "auth", "signature does not match"),
        ("create_404", "config", "URL"),
        ("create_422", "rejected", "no queue configured"),
        ("create_503", "unavailable", "upstream down"),
        ("create_200_html", "unavailable", "login page"),
    ],
)
def test_each_failure_is_classified_without_the_secret_or_the_urls_token(
    hook: Harness, recording: str, problem: str, said: str
) -> None:
    connector = hook.connect(recording)
    classified(failure(lambda: connector.create(DRAFT)), problem, said)


def test_429_is_rate_limited_with_the_retry_after_seconds(hook: Harness) -> None:
    connector = hook.connect("create_429")
    error = failure(lambda: connector.create(DRAFT))
    assert (error.problem, error.retry_after) == ("rate_limited", 90.0)


@pytest.mark.parametrize("exc", [httpx.ConnectTimeout("timed out"), httpx.ConnectError("refused")])
def test_timeouts_and_connection_failures_are_unavailable(exc: httpx.HTTPError) -> None:
    connector = WebhookConnector(raising(exc), URL, SECRET)
    error = failure(lambda: connector.create(DRAFT))
    assert error.problem == "unavailable" and "hooks.example.com" in error.message


# -- verify_signature ----------------------------------------------------------------------------------


def test_verify_signature_accepts_only_the_exact_body_secret_and_a_fresh_timestamp() -> None:
    body = b'{"a":1}'
    header = sign(SECRET, "1796400420", body)
    assert verify_signature(SECRET, "1796400420", body, header, 300, now=NOW + 299)
    assert not verify_signature(SECRET, "1796400420", b'{"a":2}', header, 300, now=NOW)
    assert not verify_signature("other", "1796400420", body, header, 300, now=NOW)
    assert not verify_signature(SECRET, "1796400421", body, header, 300, now=NOW)
    assert not verify_signature(SECRET, "1796400420", body, header, 300, now=NOW + 301)
    assert not verify_signature(SECRET, "1796400420", body, header, 300, now=NOW - 301)
    assert not verify_signature(SECRET, "1796400420", body, header.removeprefix("sha256="), 300, now=NOW)
    assert not verify_signature(SECRET, "²", body, header, 300, now=NOW)
    assert not verify_signature(SECRET, "1796400420", body, "sha256=é", 300, now=NOW)


# -- a real receiver on loopback ---------------------------------------------------------------------


class Receiver(ThreadingHTTPServer):
    """Verifies, deduplicates on Idempotency-Key, and answers a number, as the docstring asks."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.tickets: dict[str, dict[str, object]] = {}
        self.comments: list[dict[str, object]] = []
        self.comment_keys: set[str] = set()
        self.comment_posts = 0
        self.refused = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/hooks/helpdesk"


class ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        timestamp = self.headers.get(TIMESTAMP_HEADER, "")
        signature = self.headers.get(SIGNATURE_HEADER, "")
        if not verify_signature(SECRET, timestamp, body, signature, 300):
            with self.server.lock:
                self.server.refused += 1
            self._answer(401, {"error": "signature or timestamp refused"})
            return
        event = json.loads(body)
        key = self.headers["Idempotency-Key"]
        with self.server.lock:
            if event["type"] == "comment":
                self.server.comment_posts += 1
                if key not in self.server.comment_keys:
                    self.server.comment_keys.add(key)
                    self.server.comments.append(event)
                self._answer(202, None)
                return
            ticket = self.server.tickets.get(key)
            if ticket is None:
                number = f"SUP-{5530 + len(self.server.tickets) + 1}"
                ticket = {"number": number, "status": "new", "url": f"https://support.example.com/{number}"}
                self.server.tickets[key] = ticket
        self._answer(201, ticket)

    def _answer(self, status: int, body: object) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the test output to the test's own


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_round_trip_to_a_receiver_that_verifies_and_deduplicates(receiver: Receiver) -> None:
    with httpx.Client(trust_env=False) as client:
        connector = WebhookConnector(client, receiver.url, SECRET)
        first = connector.create(DRAFT)
        again = connector.create(DRAFT)  # a retry after a lost reply
        connector.comment(first.ref, "Handed over to a technician.")
    assert first.number == again.number == "SUP-5531"
    assert len(receiver.tickets) == 1 and receiver.refused == 0
    assert receiver.comments[0]["ticket"] == "SUP-5531"


class LosesTheFirstCommentReply(WebhookConnector):
    """The webhook connector whose first note's answer never arrives, after the receiver took it."""

    lost = False

    def comment_with_key(self, ref: str, text: str, key: str) -> None:
        super().comment_with_key(ref, text, key)
        if not self.lost:
            self.lost = True
            raise ConnectorError("unavailable", "The connection dropped before the receiver answered.")


def test_a_note_whose_reply_was_lost_is_sent_again_and_counted_once_by_the_receiver(
    receiver: Receiver, tmp_path: Path, file_keyring: FileKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """has_comment answers False, so the retry sends again: the note's key makes the receiver see one."""
    monkeypatch.setattr("app.tools.delivery.FIRST_RETRY_S", 0.05)
    outbox = TicketOutbox(tmp_path / "outbox", keys=DataKeyring())
    ticket_id = outbox.create("VPN drops", "The VPN drops every ten minutes.", "network").id
    name = outbox.add_note(ticket_id, "Handed over to a technician.")
    with httpx.Client(trust_env=False) as client:
        connector = LosesTheFirstCommentReply(client, receiver.url, SECRET)
        worker = DeliveryWorker(outbox, lambda: connector)
        run_until_notes_are_sent(worker, outbox, ticket_id)
    assert connector.lost and outbox.note_names() == {}
    assert receiver.comment_posts == 2 and len(receiver.comments) == 1
    assert receiver.comments[0]["idempotency_key"] == note_key(worker.install_id(), ticket_id, name)
    assert receiver.comments[0]["ticket"] == "SUP-5531"


def test_the_receiver_refuses_a_tampered_body(receiver: Receiver) -> None:
    body = json.dumps({"schema_version": 1, "type": "ticket", "summary": "Reset my password"}).encode()
    timestamp = str(int(time.time()))
    signature = sign(SECRET, timestamp, body)
    tampered = body.replace(b"Reset my password", b"Grant me admin")
    headers = {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature, "Idempotency-Key": "k1"}
    with httpx.Client(trust_env=False) as client:
        response = client.post(receiver.url, content=tampered, headers=headers)
    assert response.status_code == 401 and receiver.tickets == {}


def test_a_stale_timestamp_is_refused_and_the_connector_says_auth(receiver: Receiver) -> None:
    with httpx.Client(trust_env=False) as client:
        connector = WebhookConnector(client, receiver.url, SECRET, clock=lambda: time.time() - 3600)
        error = failure(lambda: connector.create(DRAFT))
    assert error.problem == "auth" and "clock" in error.message
    assert receiver.refused == 1 and receiver.tickets == {}


def test_a_wrong_secret_is_refused_and_the_connector_says_auth(receiver: Receiver) -> None:
    with httpx.Client(trust_env=False) as client:
        error = failure(lambda: WebhookConnector(client, receiver.url, "not-the-secret").create(DRAFT))
    assert error.problem == "auth" and receiver.tickets == {}


def test_text_that_cannot_be_encoded_is_rejected_not_raised(hook: Harness) -> None:
    connector = hook.connect()
    broken = replace(DRAFT, summary="bad \ud800")
    assert failure(lambda: connector.create(broken)).problem == "rejected"
