"""Tickets on their way to the company's ticket system (rows T1-T5), against the real Request Tracker.

The whole headless app with its offline assistant files a ticket by voice through the virtual
microphone, while the ``rt`` fixture's Request Tracker is out of reach or refuses the token; the app is
killed with SIGKILL before it could deliver and started again. T4 (a reply lost after RT filed the
ticket) drives the delivery worker against the real RT with the reply thrown away, since nothing
between the app and a local RT can lose one on cue; T5 does the same with a note's comment, against
an RT of its own whose account may also read comments (ShowTicketComments, which the check needs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from app.audio.resample import FloatArray
from app.sealed_files import DataKeyring
from app.testkit.rig import VirtualAudioRig
from app.tools.connectors import ConnectorError, RemoteTicket, TicketDraft, note_marker
from app.tools.connectors.rt import RequestTrackerConnector
from app.tools.delivery import DeliveryWorker, note_key
from app.tools.tickets import TicketOutbox
from tests.app_driver import start_on_rig
from tests.file_keyring import FileKeyring
from tests.rt_server import RtInstance, attachment_texts, rest
from tests.test_connector_rt import rt_showing_comments
from tests.test_tickets_e2e import (
    app_env,
    ask_for_a_ticket,
    closed_port,
    delivery_journal,
    idempotency_key,
    local_id_in,
    rt_tickets_with,
)


@pytest.mark.devices
@pytest.mark.fault("T1", "T2")
def test_a_ticket_queued_before_a_kill_is_delivered_once_after_the_restart(
    virtual_audio: VirtualAudioRig,
    speech: Callable[[str, int], FloatArray],
    tmp_path: Path,
    rt: RtInstance,
) -> None:
    unreachable = f"http://127.0.0.1:{closed_port()}"
    app = start_on_rig(virtual_audio, app_env(tmp_path, rt, url=unreachable))
    try:
        said = ask_for_a_ticket(app, virtual_audio, speech, "ticket HD-")
        app.wait_for(lambda line: "kept on this computer" in line, 30, stderr=True)
        app.process.kill()  # SIGKILL: no chance to tidy up, as a crash or a power cut
        app.process.wait(10)
    finally:
        app.stop()
    ticket_id = local_id_in(said)
    assert rt_tickets_with(rt, idempotency_key(tmp_path, ticket_id)) == []  # nothing reached RT yet

    again = start_on_rig(virtual_audio, app_env(tmp_path, rt))
    try:
        delivered = again.wait_for(lambda line: f"Ticket {ticket_id} reached" in line, 60, stderr=True)
    finally:
        again.stop()
    assert "Request Tracker as RT #" in delivered
    assert len(rt_tickets_with(rt, idempotency_key(tmp_path, ticket_id))) == 1
    assert str(delivery_journal(tmp_path)[ticket_id]["number"]) in delivered


@pytest.mark.devices
@pytest.mark.fault("T3")
def test_a_refused_token_keeps_the_ticket_queued_and_says_so_until_a_good_one(
    virtual_audio: VirtualAudioRig,
    speech: Callable[[str, int], FloatArray],
    tmp_path: Path,
    rt: RtInstance,
) -> None:
    wrong = app_env(tmp_path, rt) | {"HELPDESK_VOICE_TICKETS_SECRET": "1-2-0123456789abcdef"}
    app = start_on_rig(virtual_audio, wrong)
    try:
        said = ask_for_a_ticket(app, virtual_audio, speech, "ticket HD-")
        refused = app.wait_for(lambda line: "kept on this computer" in line, 30, stderr=True)
    finally:
        app.stop()
    assert "until this is fixed" in refused and "0123456789abcdef" not in refused, refused
    ticket_id = local_id_in(said)
    assert [line for line in app.errors if "kept on this computer" in line] == [refused]  # said once
    assert rt_tickets_with(rt, idempotency_key(tmp_path, ticket_id)) == []

    again = start_on_rig(virtual_audio, app_env(tmp_path, rt))  # the admin fixed the token
    try:
        again.wait_for(lambda line: f"Ticket {ticket_id} reached" in line, 60, stderr=True)
    finally:
        again.stop()
    assert len(rt_tickets_with(rt, idempotency_key(tmp_path, ticket_id))) == 1


class LosesTheFirstReply(RequestTrackerConnector):
    """The real RT connector whose first create's answer never arrives, as after a dropped connection."""

    lost = False

    def create(self, draft: TicketDraft) -> RemoteTicket:
        made = super().create(draft)
        if not self.lost:
            self.lost = True
            raise ConnectorError("unavailable", "The connection dropped before the helpdesk answered.")
        return made


@pytest.mark.fault("T4")
def test_a_reply_lost_after_rt_filed_the_ticket_files_nothing_twice(
    tmp_path: Path, rt: RtInstance, file_keyring: FileKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.tools.delivery.FIRST_RETRY_S", 0.1)
    outbox = TicketOutbox(tmp_path / "data" / "outbox", keys=DataKeyring())
    ticket_id = outbox.create("Monitor flickers", "The monitor flickers all the time.", "hardware").id
    connector = LosesTheFirstReply(httpx.Client(timeout=10), rt.base_url, rt.queue, rt.token)
    worker = DeliveryWorker(outbox, lambda: connector)
    worker.start()
    try:
        state = worker.wait_delivered(ticket_id, timeout=30)
    finally:
        worker.stop()
    assert connector.lost and state is not None
    found = rt_tickets_with(rt, idempotency_key(tmp_path, ticket_id))
    assert [ticket["id"] for ticket in found] == [state.ref]
    assert delivery_journal(tmp_path)[ticket_id]["failures"] == 1


class LosesTheFirstCommentReply(RequestTrackerConnector):
    """The real RT connector whose first note's answer never arrives, after RT stored the comment."""

    lost = False
    checked: list[bool]

    def comment_with_key(self, ref: str, text: str, key: str) -> None:
        super().comment_with_key(ref, text, key)
        if not self.lost:
            self.lost = True
            raise ConnectorError("unavailable", "The connection dropped before the helpdesk answered.")

    def has_comment(self, ref: str, key: str) -> bool:
        found = super().has_comment(ref, key)
        self.checked.append(found)
        return found


@pytest.mark.fault("T5")
def test_a_reply_lost_after_rt_stored_a_note_adds_nothing_twice(
    tmp_path: Path, file_keyring: FileKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.tools.delivery.FIRST_RETRY_S", 0.1)
    outbox = TicketOutbox(tmp_path / "data" / "outbox", keys=DataKeyring())
    ticket_id = outbox.create("VPN drops", "The VPN drops every ten minutes.", "network").id
    note = outbox.add_note(ticket_id, "The caller restarted the router twice.")
    later = outbox.add_note(ticket_id, "Diagnostics: VPN client 5.2.")
    with rt_showing_comments(tmp_path / "rt") as rt:
        connector = LosesTheFirstCommentReply(httpx.Client(timeout=10), rt.base_url, rt.queue, rt.token)
        connector.checked = []
        worker = DeliveryWorker(outbox, lambda: connector)
        worker.start()
        try:
            state = worker.wait_delivered(ticket_id, timeout=30)
            deadline = time.monotonic() + 30
            while outbox.note_names() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            worker.stop()
        assert connector.lost and state is not None and state.ref is not None
        assert connector.checked == [True]  # the retry asked RT, which had the note: not sent again
        assert outbox.note_names() == {}
        history = rest(rt, "GET", f"/ticket/{state.ref}/history", params={"fields": "Type"})["items"]
        comments = [str(item["id"]) for item in history if item["Type"] == "Comment"]
        texts = attachment_texts(rt, state.ref)
        install = worker.install_id()
        assert [texts[c].strip() for c in comments] == [
            f"The caller restarted the router twice.\n\n{note_marker(note_key(install, ticket_id, note))}",
            f"Diagnostics: VPN client 5.2.\n\n{note_marker(note_key(install, ticket_id, later))}",
        ]
    saved = delivery_journal(tmp_path)[ticket_id]
    assert saved["notes_in_doubt"] == [] and saved["note_failures"] == 0
