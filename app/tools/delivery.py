"""Queued tickets delivered to the company's ticket system: exactly once, in the background.

The outbox (:mod:`app.tools.tickets`) keeps every ticket the assistant filed; this module hands each
one to a :class:`~app.tools.connectors.Connector` and remembers what came of it in a journal
(``delivery.json`` in the outbox folder): the system's own number once delivered, else how many
tries failed, why, and when the next is due.

**Exactly once** rests on the idempotency key, not on the journal: each ticket's key is
``hv-<install>-<HD-number>``, with ``install`` a random id the journal keeps for this outbox, and
every try first asks the system for a ticket with that key. A crash between the system filing the
ticket and the journal recording it (a kill, a lost reply, a power cut) therefore costs nothing: the
next try finds the ticket and records it. A lost or corrupt journal is set aside and rebuilt the
same way; only its install id matters, and it is kept in a second small file so a corrupt journal
does not change every key.

**Retries**: a system that cannot be reached, fails or rate-limits is tried again with backoff
(:func:`retry_delay`: 5 s doubling to 30 min, or what ``Retry-After`` says), across restarts and
offline periods. A refusal that trying again cannot fix (wrong credentials, a wrong URL or queue,
a ticket the system rejects) stops that ticket until the settings change or the app starts again,
and is reported once, in words for the user. A ticket is never dropped: it stays in the outbox.

:class:`DeliveryPlan` is the logic, pure (tickets, results and the time in; what to try out);
:class:`DeliveryWorker` is the thread that runs it against a connector.

A connector may own resources (:class:`app.ticket_systems.OwnedConnector` owns its HTTP client):
whoever made one closes it with :func:`release` once done, or reads through :func:`connector_for`.
The worker releases its own when new settings replace it and when it stops.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

from app.core.actions import Notice
from app.fileio import ensure_private_dir, write_atomically
from app.tools.connectors.base import Connector, ConnectorError, RemoteTicket, TicketDraft
from app.tools.tickets import Ticket, TicketOutbox

__all__ = [
    "Delivered",
    "DeliveryPlan",
    "DeliveryProblem",
    "DeliveryState",
    "DeliveryWorker",
    "Journal",
    "connector_for",
    "delivered_notice",
    "problem_notice",
    "release",
    "retry_delay",
]

log = logging.getLogger(__name__)

JOURNAL_NAME: Final = "delivery.json"
INSTALL_NAME: Final = "delivery-install-id"
SCHEMA_VERSION: Final = 1
FIRST_RETRY_S: Final = 5.0
MAX_RETRY_S: Final = 30 * 60.0


def retry_delay(failures: int, rng: random.Random, retry_after: float | None = None) -> float:
    """Seconds before try ``failures + 1``: doubling from 5 s to 30 min, ±20 %, at least Retry-After."""
    delay: float = min(MAX_RETRY_S, FIRST_RETRY_S * 2.0 ** max(0, failures - 1)) * rng.uniform(0.8, 1.2)
    return max(delay, retry_after or 0.0)


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """What the journal knows of one ticket's delivery."""

    local_id: str
    failures: int = 0
    next_try_at: float = 0.0  # epoch seconds; 0: as soon as possible
    problem: str | None = None  # the last failure, in words for the user
    stopped: bool = False  # a failure retrying cannot fix: waits for new settings or a restart
    system: str | None = None  # the system it went to, once delivered
    number: str | None = None  # the system's own number, once delivered
    ref: str | None = None
    url: str | None = None
    delivered_at: float | None = None

    @property
    def delivered(self) -> bool:
        return self.number is not None


@dataclass(frozen=True, slots=True)
class Delivered:
    """A ticket the system took: what to tell the user."""

    local_id: str
    system: str
    remote: RemoteTicket


@dataclass(frozen=True, slots=True)
class DeliveryProblem:
    """A ticket not delivered yet, and why (reported once per distinct reason)."""

    local_id: str
    message: str
    retrying: bool


@dataclass
class DeliveryPlan:
    """Which tickets to try when, from the outbox's tickets and what became of earlier tries."""

    states: dict[str, DeliveryState] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)

    def due(self, ticket_ids: Iterable[str], now: float) -> list[str]:
        """The tickets to try now, oldest first (``HD-`` numbers grow with time)."""
        due = []
        for ticket_id in ticket_ids:
            state = self.states.get(ticket_id)
            if state is None:
                self.states[ticket_id] = DeliveryState(ticket_id)
                due.append(ticket_id)
            elif not state.delivered and not state.stopped and state.next_try_at <= now:
                due.append(ticket_id)
        return sorted(due, key=lambda ticket_id: int(ticket_id.split("-")[1]))

    def next_due_at(self) -> float | None:
        """When the next retry falls due; None when nothing waits."""
        waiting = [s.next_try_at for s in self.states.values() if not s.delivered and not s.stopped]
        return min(waiting, default=None)

    def delivered(self, ticket_id: str, system: str, remote: RemoteTicket, now: float) -> Delivered:
        failures = self.states[ticket_id].failures if ticket_id in self.states else 0
        self.states[ticket_id] = DeliveryState(
            ticket_id,
            failures=failures,  # kept: how hard it was to deliver, for whoever reads the journal
            system=system,
            number=remote.number,
            ref=remote.ref or remote.number,
            url=remote.url,
            delivered_at=now,
        )
        return Delivered(ticket_id, system, remote)

    def failed(self, ticket_id: str, error: ConnectorError, now: float) -> DeliveryProblem | None:
        """Records a failed try; returns the problem when the user has not heard this reason yet."""
        state = self.states.get(ticket_id, DeliveryState(ticket_id))
        failures = state.failures + 1
        stopped = not error.retryable
        delay = 0.0 if stopped else retry_delay(failures, self.rng, error.retry_after)
        new = replace(
            state, failures=failures, next_try_at=now + delay, problem=error.message, stopped=stopped
        )
        self.states[ticket_id] = new
        if state.problem == error.message and state.stopped == stopped:
            return None  # the same reason again: said once is enough
        return DeliveryProblem(ticket_id, error.message, retrying=not stopped)

    def restart(self) -> None:
        """New settings or a new start: stopped tickets are tried again, and retries are due now."""
        for ticket_id, state in self.states.items():
            if not state.delivered:
                self.states[ticket_id] = replace(state, stopped=False, next_try_at=0.0)


class Journal:
    """The plan's states on disk (plain JSON, 0600: numbers and reasons, none of the user's words)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / JOURNAL_NAME

    def install_id(self) -> str:
        """This outbox's random id, made once: part of every ticket's idempotency key."""
        path = self.directory / INSTALL_NAME
        try:
            existing = path.read_text("ascii").strip()
        except (OSError, UnicodeDecodeError):
            existing = ""
        if len(existing) == 16 and all(c in "0123456789abcdef" for c in existing):
            return existing
        made = secrets.token_hex(8)
        ensure_private_dir(self.directory)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:  # another process made it first, or a corrupt one is in the way
            again = path.read_text("ascii", errors="replace").strip()
            if len(again) == 16 and all(c in "0123456789abcdef" for c in again):
                return again
            write_atomically(path, made + "\n", private=True)
            return made
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(made + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return made

    def load(self) -> dict[str, DeliveryState]:
        """The saved states; a corrupt journal is set aside (``.corrupt``) and counts as empty."""
        try:
            data = json.loads(self.path.read_text("utf-8"))
            return {
                ticket_id: DeliveryState(**entry)
                for ticket_id, entry in data["tickets"].items()
                if isinstance(entry, dict) and entry.get("local_id") == ticket_id
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning(
                "ticket delivery journal %s is unreadable (%s); set aside and rebuilt", self.path, exc
            )
            with contextlib.suppress(OSError):  # then the next save overwrites it
                os.replace(self.path, self.path.with_suffix(".corrupt"))
            return {}

    def save(self, states: dict[str, DeliveryState]) -> None:
        ensure_private_dir(self.directory)
        body: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "tickets": {ticket_id: asdict(state) for ticket_id, state in sorted(states.items())},
        }
        write_atomically(self.path, json.dumps(body, indent=1) + "\n", private=True)


@runtime_checkable
class _Closable(Protocol):
    def close(self) -> None: ...


def release(connector: Connector | None) -> None:
    """Frees what the connector holds (its HTTP connections); one that holds nothing is left be."""
    if isinstance(connector, _Closable):
        try:
            connector.close()
        except Exception:  # closing must not turn a finished read into a failure
            log.warning("a ticket system connector did not close cleanly", exc_info=True)


@contextlib.contextmanager
def connector_for(make: Callable[[], Connector | None]) -> Iterator[Connector | None]:
    """``make()``'s connector for one piece of work, released on leaving (also on an error)."""
    connector = make()
    try:
        yield connector
    finally:
        release(connector)


def draft_of(ticket: Ticket, install_id: str) -> TicketDraft:
    return TicketDraft(
        local_id=ticket.id,
        idempotency_key=f"hv-{install_id}-{ticket.id}",
        summary=ticket.summary,
        description=ticket.description,
        category=ticket.category,
        urgency=ticket.urgency,
        contact=ticket.contact,
        created_at=ticket.created_at,
    )


class DeliveryWorker:
    """The thread that delivers the outbox's tickets through ``make_connector()``'s connector.

    ``make_connector`` is called in the thread, again after :meth:`reconfigure`; None means no ticket
    system is set up, and tickets stay queued. Each connector it gives is released (:func:`release`)
    once its user is done, so one that owns a client must not be handed out twice. ``on_delivered``
    and ``on_problem`` are called from the thread.
    """

    def __init__(
        self,
        outbox: TicketOutbox,
        make_connector: Callable[[], Connector | None],
        *,
        on_delivered: Callable[[Delivered], None] = lambda delivered: None,
        on_problem: Callable[[DeliveryProblem], None] = lambda problem: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self._make_connector = make_connector
        self._on_delivered = on_delivered
        self._on_problem = on_problem
        self._clock = clock
        self._journal = Journal(outbox.directory)
        self._plan = DeliveryPlan(self._journal.load())
        self._wake = threading.Condition()
        self._pending_wake = False
        self._reconfigure = False
        self._stopping = False
        self._delivered_event: dict[str, threading.Event] = {}
        self._retry_notes_at: float | None = None  # a note the system could not take: when to retry
        self._current: Connector | None = None  # the thread's connector, used and released only there
        self._thread: threading.Thread | None = None

    # -- control (any thread) ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="helpdesk-ticket-delivery", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def deliver_soon(self) -> None:
        """A new ticket is in the outbox: try it now."""
        with self._wake:
            self._pending_wake = True
            self._wake.notify_all()

    def reconfigure(self) -> None:
        """The ticket system's settings changed: a new connector, and stopped tickets tried again."""
        with self._wake:
            self._reconfigure = True
            self._pending_wake = True
            self._wake.notify_all()

    def wait_delivered(self, ticket_id: str, timeout: float) -> DeliveryState | None:
        """Blocks up to ``timeout`` s for the ticket's delivery; its state once delivered, else None."""
        with self._wake:
            event = self._delivered_event.setdefault(ticket_id, threading.Event())
        event.wait(timeout)
        state = self.state_of(ticket_id)
        return state if state is not None and state.delivered else None

    def state_of(self, ticket_id: str) -> DeliveryState | None:
        with self._wake:
            return self._plan.states.get(ticket_id)

    def install_id(self) -> str:
        return self._journal.install_id()

    def connector(self) -> Connector | None:
        """A connector of its own for the caller's thread (status reads), as the settings say now.

        The caller releases it (:func:`release`, or reads through :func:`connector_for`).
        """
        return self._make_connector()

    # -- the thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            # The worker's connector lives as long as the thread: its connections close with it.
            release(self._current)
            self._current = None

    def _loop(self) -> None:
        with self._wake:
            self._plan.restart()  # a new start: what stopped the last run may be fixed now
        install_id = self._journal.install_id()
        connector = self._connector()
        while True:
            with self._wake:
                if self._stopping:
                    return
                if self._reconfigure:
                    self._reconfigure = False
                    self._plan.restart()
                    reconnect = True
                else:
                    reconnect = False
                self._pending_wake = False
            if reconnect:
                connector = self._connector()
            if connector is not None:
                self._round(connector, install_id)
            with self._wake:
                if self._stopping:
                    return
                if not self._pending_wake:
                    due_at = self._plan.next_due_at() if connector is not None else None
                    if connector is not None and self._retry_notes_at is not None:
                        due_at = min(due_at or self._retry_notes_at, self._retry_notes_at)
                        self._retry_notes_at = None
                    wait = None if due_at is None else max(0.05, due_at - self._clock())
                    self._wake.wait(wait)

    def _connector(self) -> Connector | None:
        """A new connector for new settings; the one it replaces is released (thread only)."""
        release(self._current)
        self._current = None
        try:
            self._current = self._make_connector()
        except ConnectorError as exc:
            self._on_problem(DeliveryProblem("", exc.message, retrying=False))
        return self._current

    def _round(self, connector: Connector, install_id: str) -> None:
        listing = self.outbox.list()
        tickets = {ticket.id: ticket for ticket in listing}
        with self._wake:
            due = self._plan.due(tickets, self._clock())
        for ticket_id in due:
            with self._wake:
                if self._stopping or self._reconfigure:
                    return
            self._deliver(connector, draft_of(tickets[ticket_id], install_id))
        for ticket_id in tickets:
            state = self.state_of(ticket_id)
            if state is not None and state.delivered and state.ref is not None:
                self._add_notes(connector, ticket_id, state.ref)

    def _add_notes(self, connector: Connector, ticket_id: str, ref: str) -> None:
        # At least once: a crash between the system's answer and the removal adds a note twice,
        # which a technician reads past; a note lost would be worse.
        for name, text in self.outbox.notes(ticket_id):
            try:
                connector.comment(ref, text)
            except ConnectorError as exc:
                log.info("note for ticket %s not added: %s", ticket_id, exc.message)
                with self._wake:
                    self._retry_notes_at = self._clock() + retry_delay(1, self._plan.rng, exc.retry_after)
                return
            self.outbox.remove_note(name)

    def add_note(self, ticket_id: str, text: str) -> None:
        """Keeps ``text`` (sealed) and adds it to the ticket in the system once it is there. Blocking."""
        self.outbox.add_note(ticket_id, text)
        self.deliver_soon()

    def _deliver(self, connector: Connector, draft: TicketDraft) -> None:
        try:
            remote = connector.find(draft.idempotency_key) or connector.create(draft)
        except ConnectorError as exc:
            with self._wake:
                problem = self._plan.failed(draft.local_id, exc, self._clock())
                self._save()
            log.info("ticket %s not delivered to %s: %s", draft.local_id, connector.name, exc.message)
            if problem is not None:
                self._on_problem(problem)
            return
        with self._wake:
            delivered = self._plan.delivered(draft.local_id, connector.name, remote, self._clock())
            self._save()
            event = self._delivered_event.setdefault(draft.local_id, threading.Event())
        event.set()
        log.info("ticket %s delivered to %s as %s", draft.local_id, connector.name, remote.number)
        self._on_delivered(delivered)

    def _save(self) -> None:
        try:
            self._journal.save(self._plan.states)
        except OSError as exc:  # the next save tries again; the keys make a lost journal harmless
            log.warning("cannot save the ticket delivery journal: %s", exc)


def delivered_notice(done: Delivered) -> Notice:
    """What the user reads when the system took a ticket: its own number ("RT #17")."""
    return Notice("info", f"Ticket {done.local_id} reached {done.system} as {done.remote.number}.")


def problem_notice(trouble: DeliveryProblem) -> Notice:
    """Why a ticket (or, with no ticket named, every ticket) waits, and whether it is retried."""
    if trouble.local_id:
        which = f"Ticket {trouble.local_id} is"
        later = "it will be sent again later" if trouble.retrying else "it stays queued until this is fixed"
    else:
        which = "Tickets are"
        later = (
            "they will be sent again later" if trouble.retrying else "they stay queued until this is fixed"
        )
    # The connectors' messages end with a full stop; the sentence goes on after a semicolon.
    return Notice("warning", f"{which} kept on this computer: {trouble.message.rstrip('.')}; {later}.")
