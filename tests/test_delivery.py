"""Ticket delivery: the plan's decisions, the journal, and the worker against a connector.

The connector here is a stand-in for one unit (a ticket system in memory that can fail on demand);
tests/test_connector_rt.py runs the worker against the real Request Tracker.
"""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest

from app.sealed_files import DataKeyring
from app.tools.connectors import ConnectorError, RemoteTicket, TicketDraft
from app.tools.delivery import (
    Delivered,
    DeliveryPlan,
    DeliveryProblem,
    DeliveryWorker,
    Journal,
    retry_delay,
)
from app.tools.tickets import TicketOutbox
from tests.file_keyring import FileKeyring
from tests.memory_ticket_system import MemorySystem


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
