"""Ticket delivery: the plan's decisions, the journal, and the worker against a connector.

The connector here is a stand-in for one unit (a ticket system in memory that can fail on demand);
tests/test_connector_rt.py runs the worker against the real Request Tracker.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import httpx
import pytest

from app.sealed_files import DataKeyring, write_sealed
from app.ticket_systems import OwnedConnector
from app.tools.connectors import ConnectorError, KeyedComments, RemoteTicket, TicketDraft
from app.tools.delivery import (
    Delivered,
    DeliveryPlan,
    DeliveryProblem,
    DeliveryWorker,
    Journal,
    NoteTry,
    note_key,
    retry_delay,
)
from app.tools.tickets import Ticket, TicketOutbox
from tests.file_keyring import FileKeyring
from tests.memory_ticket_system import MemorySystem, run_until_notes_are_sent


@pytest.fixture
def outbox(tmp_path: Path, file_keyring: FileKeyring) -> TicketOutbox:
    return TicketOutbox(tmp_path / "outbox", keys=DataKeyring())


def _file(outbox: TicketOutbox, summary: str = "VPN drops every hour") -> str:
    return outbox.create(summary, "The VPN disconnects about once an hour.", "network").id


class Recorder:
    def __init__(self) -> None:
        self.delivered: list[Delivered] = []
        self.problems: list[DeliveryProblem] = []
        self.event = threading.Event()

    def on_delivered(self, delivered: Delivered) -> None:
        self.delivered.append(delivered)
        self.event.set()

    def on_problem(self, problem: DeliveryProblem) -> None:
        self.problems.append(problem)
        self.event.set()


def _worker(outbox: TicketOutbox, system: MemorySystem | None, recorder: Recorder) -> DeliveryWorker:
    return DeliveryWorker(
        outbox, lambda: system, on_delivered=recorder.on_delivered, on_problem=recorder.on_problem
    )


# -- the plan ------------------------------------------------------------------------------------------


def test_retry_delay_doubles_to_a_ceiling_with_jitter_and_honours_retry_after() -> None:
    rng = random.Random(1)
    delays = [retry_delay(n, rng) for n in range(1, 14)]
    assert 4.0 <= delays[0] <= 6.0 and 8.0 <= delays[1] <= 12.0
    assert max(delays) <= 30 * 60 * 1.2 and delays[-1] >= 30 * 60 * 0.8
    assert retry_delay(1, rng, retry_after=120.0) == 120.0


def test_the_plan_tries_new_tickets_oldest_first_and_waits_out_a_failure() -> None:
    plan = DeliveryPlan(rng=random.Random(0))
    assert plan.due(["HD-1010", "HD-1002"], now=100.0) == ["HD-1002", "HD-1010"]
    plan.delivered("HD-1010", "Memory desk", RemoteTicket("MD-1", "new"), now=100.0)
    problem = plan.failed("HD-1002", ConnectorError("unavailable", "The helpdesk is not answering."), 100.0)
    assert problem == DeliveryProblem("HD-1002", "The helpdesk is not answering.", retrying=True)
    assert plan.due(["HD-1002"], now=101.0) == []
    due_at = plan.next_due_at()
    assert due_at is not None and 104.0 <= due_at <= 106.0
    assert plan.due(["HD-1002"], now=due_at) == ["HD-1002"]
    # The same reason again is not reported again.
    assert (
        plan.failed("HD-1002", ConnectorError("unavailable", "The helpdesk is not answering."), 106.0) is None
    )


def test_a_refusal_stops_the_ticket_until_new_settings() -> None:
    plan = DeliveryPlan()
    plan.due(["HD-1001"], now=0.0)
    problem = plan.failed("HD-1001", ConnectorError("auth", "The helpdesk refused the saved token."), 0.0)
    assert problem is not None and not problem.retrying
    assert plan.due(["HD-1001"], now=10_000.0) == [] and plan.next_due_at() is None
    plan.restart()
    assert plan.due(["HD-1001"], now=0.0) == ["HD-1001"]


def test_a_delivered_ticket_is_never_due_again() -> None:
    plan = DeliveryPlan()
    plan.due(["HD-1001"], now=0.0)
    plan.delivered("HD-1001", "Memory desk", RemoteTicket("MD-1", "new", ref="1"), now=1.0)
    plan.restart()
    assert plan.due(["HD-1001"], now=2.0) == [] and plan.next_due_at() is None


def test_a_ticket_the_outbox_no_longer_holds_does_not_keep_the_worker_waking() -> None:
    plan = DeliveryPlan(rng=random.Random(0))
    plan.due(["HD-1001", "HD-1002"], now=0.0)
    plan.failed("HD-1002", ConnectorError("unavailable", "Not answering."), 0.0)
    assert plan.due(["HD-1001"], now=100.0) == ["HD-1001"]  # HD-1002's file is gone
    assert plan.next_due_at() == 0.0  # HD-1001 only: still new
    plan.delivered("HD-1001", "Memory desk", RemoteTicket("MD-1", "new", ref="1"), now=100.0)
    assert plan.next_due_at() is None


# -- the journal ---------------------------------------------------------------------------------------


def test_the_journal_round_trips_and_a_corrupt_one_is_set_aside(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    plan = DeliveryPlan()
    plan.due(["HD-1001", "HD-1002"], now=0.0)
    plan.delivered("HD-1001", "Memory desk", RemoteTicket("MD-1", "new", url="https://desk/1", ref="1"), 5.0)
    plan.failed("HD-1002", ConnectorError("unavailable", "Not answering."), 5.0)
    journal.save(plan.states)
    assert journal.load() == plan.states
    assert (tmp_path / "delivery.json").stat().st_mode & 0o077 == 0
    (tmp_path / "delivery.json").write_text("{ not json", "utf-8")
    assert journal.load() == {}
    assert (tmp_path / "delivery.corrupt").exists()


def test_the_install_id_is_made_once_and_survives_a_lost_journal(tmp_path: Path) -> None:
    first = Journal(tmp_path).install_id()
    (tmp_path / "delivery.json").unlink(missing_ok=True)
    assert Journal(tmp_path).install_id() == first and len(first) == 16
    (tmp_path / "delivery-install-id").write_text("garbage\n", "ascii")
    assert Journal(tmp_path).install_id() != first  # unusable: a new one (find by key still guards)


# -- the worker ----------------------------------------------------------------------------------------


def test_the_worker_delivers_queued_tickets_and_says_the_real_number(outbox: TicketOutbox) -> None:
    first, second = _file(outbox), _file(outbox, "Printer jams")
    system, recorder = MemorySystem(), Recorder()
    worker = _worker(outbox, system, recorder)
    worker.start()
    try:
        state = worker.wait_delivered(second, timeout=10)
        assert state is not None and state.number is not None
        assert worker.wait_delivered(first, timeout=10) is not None
    finally:
        worker.stop()
    assert sorted(d.local_id for d in recorder.delivered) == [first, second]
    assert system.filed(first) == system.filed(second) == 1
    saved = json.loads((outbox.directory / "delivery.json").read_text("utf-8"))
    assert saved["tickets"][first]["number"].startswith("MD-")


def test_a_lost_reply_is_retried_without_filing_twice(
    outbox: TicketOutbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.tools.delivery.FIRST_RETRY_S", 0.05)
    ticket_id = _file(outbox)
    system, recorder = MemorySystem(), Recorder()
    system.lose_reply = True
    worker = _worker(outbox, system, recorder)
    worker.start()
    try:
        assert worker.wait_delivered(ticket_id, timeout=10) is not None
    finally:
        worker.stop()
    assert system.filed(ticket_id) == 1, "the retry filed a second ticket"
    assert system.calls == ["find", "create", "find"]  # the retry found the first try's ticket
    assert [p.retrying for p in recorder.problems] == [True]


def test_a_restart_between_filing_and_recording_delivers_exactly_once(outbox: TicketOutbox) -> None:
    """What a kill between the system's answer and the journal's write leaves: found, not filed again."""
    ticket_id = _file(outbox)
    system = MemorySystem()
    draft_key = f"hv-{Journal(outbox.directory).install_id()}-{ticket_id}"
    system.tickets["earlier"] = TicketDraft(ticket_id, draft_key, "s", "d", "network", "normal", None, "t")
    worker = _worker(outbox, system, Recorder())
    worker.start()
    try:
        assert worker.wait_delivered(ticket_id, timeout=10) is not None
    finally:
        worker.stop()
    assert system.filed(ticket_id) == 1 and "create" not in system.calls


def test_without_a_system_tickets_stay_queued_until_one_is_set_up(outbox: TicketOutbox) -> None:
    ticket_id = _file(outbox)
    system: MemorySystem | None = None
    recorder = Recorder()
    worker = DeliveryWorker(outbox, lambda: system, on_delivered=recorder.on_delivered)
    worker.start()
    try:
        assert worker.wait_delivered(ticket_id, timeout=0.3) is None
        system = MemorySystem()
        worker.reconfigure()
        assert worker.wait_delivered(ticket_id, timeout=10) is not None
    finally:
        worker.stop()
    assert outbox.find(ticket_id) is not None  # delivered tickets stay in the outbox, for status


def test_a_refused_token_is_reported_once_and_new_settings_deliver(outbox: TicketOutbox) -> None:
    ticket_id = _file(outbox)
    system, recorder = MemorySystem(), Recorder()
    refused = ConnectorError("auth", "The helpdesk refused the saved token.")
    system.fail_next = [refused]
    worker = _worker(outbox, system, recorder)
    worker.start()
    try:
        assert recorder.event.wait(10)
        assert recorder.problems == [DeliveryProblem(ticket_id, refused.message, retrying=False)]
        worker.deliver_soon()  # a new ticket's nudge does not retry a stopped one
        assert worker.wait_delivered(ticket_id, timeout=0.3) is None
        worker.reconfigure()
        assert worker.wait_delivered(ticket_id, timeout=10) is not None
    finally:
        worker.stop()


# -- notes exactly once: the plan ------------------------------------------------------------------------

NOTE = "HD-1001-000001-9f3a61c2.txt"
LATER_NOTE = "HD-1001-000002-0b1c2d3e.txt"


def _delivered_plan() -> DeliveryPlan:
    plan = DeliveryPlan(rng=random.Random(0))
    plan.due(["HD-1001"], now=0.0)
    plan.delivered("HD-1001", "Memory desk", RemoteTicket("MD-1", "new", ref="1"), now=1.0)
    return plan


def test_notes_wait_for_their_ticket_and_then_go_in_order_without_a_check() -> None:
    plan = DeliveryPlan()
    plan.due(["HD-1001"], now=0.0)
    assert plan.notes_due({"HD-1001": [NOTE]}, now=0.0) == []  # not delivered yet
    plan.delivered("HD-1001", "Memory desk", RemoteTicket("MD-1", "new", ref="1"), now=1.0)
    assert plan.notes_due({"HD-1001": [NOTE, LATER_NOTE]}, now=2.0) == [
        NoteTry("HD-1001", "1", NOTE, check_first=False),
        NoteTry("HD-1001", "1", LATER_NOTE, check_first=False),
    ]


def test_a_note_whose_outcome_is_unknown_is_checked_before_it_is_sent_again() -> None:
    plan = _delivered_plan()
    plan.note_sending("HD-1001", NOTE)
    lost = ConnectorError("unavailable", "The connection dropped.")
    plan.note_failed("HD-1001", NOTE, lost, now=10.0, unsure=True)
    assert plan.notes_due({"HD-1001": [NOTE]}, now=11.0) == []  # backing off
    due_at = plan.next_due_at()
    assert due_at is not None and 14.0 <= due_at <= 16.0
    assert plan.notes_due({"HD-1001": [NOTE]}, now=due_at) == [NoteTry("HD-1001", "1", NOTE, True)]
    plan.note_added("HD-1001", NOTE)
    assert plan.states["HD-1001"].notes_in_doubt == () and plan.next_due_at() is None


def test_a_note_the_system_refused_or_rate_limited_is_not_in_doubt() -> None:
    plan = _delivered_plan()
    plan.note_sending("HD-1001", NOTE)
    busy = ConnectorError("rate_limited", "Slow down.", retry_after=60.0)
    plan.note_failed("HD-1001", NOTE, busy, now=10.0, unsure=False)
    assert plan.states["HD-1001"].notes_in_doubt == ()
    assert plan.next_due_at() == 70.0
    assert plan.notes_due({"HD-1001": [NOTE]}, now=70.0) == [NoteTry("HD-1001", "1", NOTE, False)]
    refused = ConnectorError("auth", "Token refused.")
    plan.note_failed("HD-1001", NOTE, refused, now=70.0, unsure=False)
    assert plan.notes_due({"HD-1001": [NOTE]}, now=10_000.0) == [] and plan.next_due_at() is None
    plan.restart()
    assert plan.notes_due({"HD-1001": [NOTE]}, now=0.0) == [NoteTry("HD-1001", "1", NOTE, False)]


def test_a_note_sent_before_a_kill_is_in_doubt_and_a_gone_note_leaves_nothing_behind() -> None:
    plan = _delivered_plan()
    plan.note_sending("HD-1001", NOTE)  # written ahead: what a kill mid-request leaves in the journal
    assert plan.notes_due({"HD-1001": [NOTE, LATER_NOTE]}, now=5.0) == [
        NoteTry("HD-1001", "1", NOTE, check_first=True),
        NoteTry("HD-1001", "1", LATER_NOTE, check_first=False),
    ]
    plan.note_failed("HD-1001", NOTE, ConnectorError("unavailable", "Down."), now=5.0, unsure=True)
    # The note's file went (added, and the kill came before the journal's save): nothing is waited for.
    assert plan.notes_due({}, now=5.0) == []
    state = plan.states["HD-1001"]
    assert (state.notes_in_doubt, state.note_failures, plan.next_due_at()) == ((), 0, None)


def test_note_keys_are_the_tickets_key_and_the_notes_id_old_names_included() -> None:
    assert note_key("0123456789abcdef", "HD-1001", NOTE) == "hv-0123456789abcdef-HD-1001-note-000001-9f3a61c2"
    assert note_key("0123456789abcdef", "HD-1001", "HD-1001-000003.txt") == (
        "hv-0123456789abcdef-HD-1001-note-000003"
    )


def test_a_journal_of_the_earlier_version_is_read_with_its_notes_fields_at_their_defaults(
    tmp_path: Path,
) -> None:
    old = {
        "schema_version": 1,
        "tickets": {
            "HD-1001": {
                "local_id": "HD-1001",
                "failures": 1,
                "next_try_at": 0.0,
                "problem": None,
                "stopped": False,
                "system": "Memory desk",
                "number": "MD-1",
                "ref": "1",
                "url": None,
                "delivered_at": 5.0,
            },
            "HD-1002": {"local_id": "HD-1002", "failures": 2, "next_try_at": 9.0, "problem": "Down."},
        },
    }
    (tmp_path / "delivery.json").write_text(json.dumps(old), "utf-8")
    states = Journal(tmp_path).load()
    assert states["HD-1001"].delivered and states["HD-1001"].notes_in_doubt == ()
    assert states["HD-1002"].failures == 2 and states["HD-1002"].note_failures == 0
    # Saved again, it is the new version, and it reads back the same.
    plan = DeliveryPlan(states)
    plan.note_sending("HD-1001", NOTE)
    Journal(tmp_path).save(plan.states)
    saved = json.loads((tmp_path / "delivery.json").read_text("utf-8"))
    assert saved["schema_version"] == 2 and saved["tickets"]["HD-1001"]["notes_in_doubt"] == [NOTE]
    assert Journal(tmp_path).load() == plan.states
    # A field of a later version is left out, not a reason to set the whole journal aside.
    saved["tickets"]["HD-1001"]["from_the_future"] = 1
    (tmp_path / "delivery.json").write_text(json.dumps(saved), "utf-8")
    assert Journal(tmp_path).load() == plan.states


# -- notes exactly once: the worker ----------------------------------------------------------------------


class KeyedMemorySystem(MemorySystem):
    """The memory desk with keyed comments; ``lose_comment_reply`` keeps the next comment, then fails."""

    def __init__(self) -> None:
        super().__init__()
        self.keyed: dict[int, list[tuple[str, str]]] = {}
        self.lose_comment_reply = False

    def comment_with_key(self, ref: str, text: str, key: str) -> None:
        with self.lock:
            self.calls.append("comment")
            self.keyed.setdefault(int(ref), []).append((key, text))
            if self.lose_comment_reply:
                self.lose_comment_reply = False
                raise ConnectorError("unavailable", "The connection dropped before the system answered.")

    def has_comment(self, ref: str, key: str) -> bool:
        with self.lock:
            self.calls.append("has_comment")
            return any(k == key for k, _ in self.keyed.get(int(ref), []))


def test_a_lost_reply_to_a_note_is_checked_and_the_note_added_once(
    outbox: TicketOutbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.tools.delivery.FIRST_RETRY_S", 0.05)
    ticket_id = _file(outbox)
    outbox.add_note(ticket_id, "The caller restarted the router twice.")
    outbox.add_note(ticket_id, "Diagnostics: OS Linux.")
    system = KeyedMemorySystem()
    system.lose_comment_reply = True
    assert isinstance(system, KeyedComments)
    worker = _worker(outbox, system, Recorder())
    run_until_notes_are_sent(worker, outbox, ticket_id)
    assert outbox.note_names() == {}
    texts = [text for _, text in system.keyed[1]]
    assert texts == ["The caller restarted the router twice.", "Diagnostics: OS Linux."]
    keys = [key for key, _ in system.keyed[1]]
    assert len(set(keys)) == 2 and all(
        key.startswith(f"hv-{worker.install_id()}-{ticket_id}-note-") for key in keys
    )
    # The first comment's reply was lost: the retry asked, found it, and did not add it again.
    assert system.calls.count("has_comment") == 1 and system.calls.count("comment") == 2
    state = worker.state_of(ticket_id)
    assert state is not None and state.notes_in_doubt == () and state.note_failures == 0


def test_a_note_left_in_doubt_by_a_kill_is_checked_at_the_next_start(outbox: TicketOutbox) -> None:
    ticket_id = _file(outbox)
    name = outbox.add_note(ticket_id, "Handed over to a technician.")
    system = KeyedMemorySystem()
    install = Journal(outbox.directory).install_id()
    # What the killed run left: the ticket delivered, the note sent and in doubt, its file still there.
    system.tickets["earlier"] = TicketDraft(
        ticket_id, f"hv-{install}-{ticket_id}", "s", "d", "network", "normal", None, "t"
    )
    system.keyed[1] = [(note_key(install, ticket_id, name), "Handed over to a technician.")]
    plan = DeliveryPlan()
    plan.due([ticket_id], now=0.0)
    plan.delivered(ticket_id, system.name, RemoteTicket("MD-1", "new", ref="1"), now=0.0)
    plan.note_sending(ticket_id, name)
    Journal(outbox.directory).save(plan.states)
    worker = _worker(outbox, system, Recorder())
    run_until_notes_are_sent(worker, outbox, None)
    assert outbox.note_names() == {}
    assert len(system.keyed[1]) == 1 and system.calls == ["has_comment"]


def test_notes_are_keyed_through_the_wrapper_the_app_hands_out(
    outbox: TicketOutbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app's connectors come wrapped (OwnedConnector), which forwards the keyed methods."""
    monkeypatch.setattr("app.tools.delivery.FIRST_RETRY_S", 0.05)
    ticket_id = _file(outbox)
    outbox.add_note(ticket_id, "Handed over to a technician.")
    system = KeyedMemorySystem()
    system.lose_comment_reply = True
    wrapped = OwnedConnector(system, httpx.Client())
    worker = DeliveryWorker(outbox, lambda: wrapped)
    run_until_notes_are_sent(worker, outbox, ticket_id)
    assert [text for _, text in system.keyed[1]] == ["Handed over to a technician."]
    assert system.calls.count("has_comment") == 1


def test_notes_still_go_at_least_once_through_a_connector_without_keys(outbox: TicketOutbox) -> None:
    ticket_id = _file(outbox)
    outbox.add_note(ticket_id, "Handed over to a technician.")
    system = MemorySystem()
    assert not isinstance(system, KeyedComments)
    worker = _worker(outbox, system, Recorder())
    run_until_notes_are_sent(worker, outbox, ticket_id)
    assert system.comments == {1: ["Handed over to a technician."]}


def test_an_earlier_versions_note_file_is_still_added(outbox: TicketOutbox) -> None:
    ticket_id = _file(outbox)
    old_name = f"{ticket_id}-000001.txt"  # the earlier versions' names had no random part
    (outbox.directory / ".notes").mkdir(mode=0o700)
    write_sealed(
        outbox.directory / ".notes" / old_name,
        b"Written by the earlier version.",
        DataKeyring().get(create=True),
    )
    assert outbox.note_names() == {ticket_id: [old_name]}
    system = KeyedMemorySystem()
    worker = _worker(outbox, system, Recorder())
    run_until_notes_are_sent(worker, outbox, ticket_id)
    install = worker.install_id()
    assert system.keyed[1] == [(f"hv-{install}-{ticket_id}-note-000001", "Written by the earlier version.")]


# -- a round reads only what has work ------------------------------------------------------------------


class CountingOutbox(TicketOutbox):
    """Counts the ticket files read (and unsealed)."""

    reads: list[str]

    def _read(self, name: str) -> Ticket:
        self.reads.append(name)
        return super()._read(name)


def test_a_round_reads_only_the_new_ticket_not_the_fifty_delivered_ones(
    tmp_path: Path, file_keyring: FileKeyring
) -> None:
    counting = CountingOutbox(tmp_path / "outbox", keys=DataKeyring())
    counting.reads = []
    delivered = [_file(counting, f"Printer {n} jams") for n in range(50)]
    system = MemorySystem()
    first = _worker(counting, system, Recorder())
    first.start()
    try:
        for ticket_id in delivered:
            assert first.wait_delivered(ticket_id, timeout=20) is not None
    finally:
        first.stop()
    assert len(counting.reads) == 50  # each read once, to be sent

    counting.reads = []
    new = _file(counting, "Monitor flickers")
    counting.add_note(delivered[0], "A note for a delivered ticket: read, but not its ticket.")
    again = _worker(counting, system, Recorder())
    again.start()
    try:
        assert again.wait_delivered(new, timeout=10) is not None
        again.deliver_soon()  # one more round with nothing new to do
        deadline = time.monotonic() + 10
        while counting.note_names() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
    finally:
        again.stop()
    assert counting.reads == [f"{new}.json"]
    assert system.filed(new) == 1 and system.comments[1] == [
        "A note for a delivered ticket: read, but not its ticket."
    ]


def test_an_unreadable_ticket_is_skipped_until_the_next_start_not_read_every_round(
    tmp_path: Path, file_keyring: FileKeyring
) -> None:
    counting = CountingOutbox(tmp_path / "outbox", keys=DataKeyring())
    counting.reads = []
    good = _file(counting)
    (counting.directory / "HD-1500.json").write_bytes(b"{ not a ticket")
    system = MemorySystem()
    worker = _worker(counting, system, Recorder())
    worker.start()
    try:
        assert worker.wait_delivered(good, timeout=10) is not None
        for _ in range(3):
            worker.deliver_soon()
            time.sleep(0.1)
    finally:
        worker.stop()
    assert counting.reads.count("HD-1500.json") == 1
