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

**Notes exactly once**: a note (the conversation, a handoff, diagnostics) waits in the outbox until
its ticket is delivered, then goes to the system as a comment. When the connector is a
:class:`~app.tools.connectors.KeyedComments`, each note has a key of its own,
``<ticket's key>-note-<note id>`` (:func:`note_key`), which the comment carries. The journal marks a
note *in doubt* before it is sent (a kill mid-request leaves it so) and keeps it so after a failure
that may have come after the system stored it (``unavailable``: a timeout, a dropped connection, a
5xx); the next try of a note in doubt first asks the system whether a comment with its key is there.
The note's file is removed before the doubt is cleared, so no crash can leave a sent note that is
neither in doubt nor gone. Connectors without keyed comments get the notes at least once, as before.

**Rounds read only what has work**: the outbox's tickets are listed by file name, and only those the
journal does not know as delivered (new ones, retries that are due) are read and unsealed; notes are
found by file name too, and only those of delivered tickets whose retry is due are read.

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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final, Protocol, cast, runtime_checkable

from app.core.actions import Notice
from app.fileio import ensure_private_dir, write_atomically
from app.tools.connectors.base import Connector, ConnectorError, KeyedComments, RemoteTicket, TicketDraft
from app.tools.tickets import Ticket, TicketOutbox

__all__ = [
    "Delivered",
    "DeliveryPlan",
    "DeliveryProblem",
    "DeliveryState",
    "DeliveryWorker",
    "Journal",
    "NoteTry",
    "connector_for",
    "delivered_notice",
    "note_key",
    "problem_notice",
    "release",
    "retry_delay",
]

log = logging.getLogger(__name__)

JOURNAL_NAME: Final = "delivery.json"
INSTALL_NAME: Final = "delivery-install-id"
# 2 added the notes' fields of DeliveryState; a version 1 journal reads as one without notes pending.
SCHEMA_VERSION: Final = 2
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
    # Notes, once delivered: failed tries in a row, when the next is due, whether a failure retrying
    # cannot fix stopped them, and the notes whose last try may have reached the system.
    note_failures: int = 0
    notes_next_try_at: float = 0.0
    notes_stopped: bool = False
    notes_in_doubt: tuple[str, ...] = ()

    @property
    def delivered(self) -> bool:
        return self.number is not None

    @property
    def notes_waiting(self) -> bool:
        """A note failed and its retry is pending (the next round that falls due tries it)."""
        return self.delivered and self.note_failures > 0 and not self.notes_stopped


@dataclass(frozen=True, slots=True)
class NoteTry:
    """One note to add now to a delivered ticket."""

    ticket_id: str
    ref: str  # the ticket in the system
    name: str  # the note in the outbox
    check_first: bool  # an earlier try may have reached the system: ask for its key before adding


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
    # Tickets whose file cannot be read now (corrupt, sealed with a key the keyring lost): not tried
    # again until the next start or new settings, so a round does not spin on them. Not saved.
    skipped: set[str] = field(default_factory=set)

    def due(self, ticket_ids: Iterable[str], now: float) -> list[str]:
        """The tickets to try now, oldest first (``HD-`` numbers grow with time)."""
        due = []
        listed = set(ticket_ids)
        for ticket_id in listed:
            if ticket_id in self.skipped:
                continue
            state = self.states.get(ticket_id)
            if state is None:
                self.states[ticket_id] = DeliveryState(ticket_id)
                due.append(ticket_id)
            elif not state.delivered and not state.stopped and state.next_try_at <= now:
                due.append(ticket_id)
        # A ticket the journal waits for but the outbox no longer holds would keep the worker waking.
        self.skipped.update(t for t, s in self.states.items() if not s.delivered and t not in listed)
        return sorted(due, key=lambda ticket_id: int(ticket_id.split("-")[1]))

    def next_due_at(self) -> float | None:
        """When the next retry (of a ticket or of its notes) falls due; None when nothing waits."""
        waiting = [
            s.next_try_at
            for s in self.states.values()
            if not s.delivered and not s.stopped and s.local_id not in self.skipped
        ]
        waiting.extend(s.notes_next_try_at for s in self.states.values() if s.notes_waiting)
        return min(waiting, default=None)

    def skip(self, ticket_id: str) -> None:
        """The ticket's file cannot be read: left alone until :meth:`restart`."""
        self.skipped.add(ticket_id)

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
        """New settings or a new start: stopped tickets and notes are tried again, retries due now."""
        self.skipped.clear()
        for ticket_id, state in self.states.items():
            if not state.delivered:
                self.states[ticket_id] = replace(state, stopped=False, next_try_at=0.0)
            elif state.notes_stopped or state.notes_next_try_at:
                self.states[ticket_id] = replace(state, notes_stopped=False, notes_next_try_at=0.0)

    # -- notes ---------------------------------------------------------------------------------------

    def notes_due(self, pending: Mapping[str, Sequence[str]], now: float) -> list[NoteTry]:
        """The notes to add now, ticket by ticket (oldest first) and each ticket's in order.

        ``pending`` holds each ticket's notes still in the outbox, oldest first. Notes wait until
        their ticket is delivered; what a gone note left in the journal (doubt, failures) is dropped.
        """
        for ticket_id, state in self.states.items():
            names = pending.get(ticket_id, ())
            in_doubt = tuple(name for name in state.notes_in_doubt if name in names)
            if in_doubt != state.notes_in_doubt or (not names and state.note_failures):
                self.states[ticket_id] = replace(
                    state,
                    notes_in_doubt=in_doubt,
                    note_failures=state.note_failures if names else 0,
                    notes_next_try_at=state.notes_next_try_at if names else 0.0,
                )
        tries: list[NoteTry] = []
        for ticket_id in sorted(pending, key=lambda ticket_id: int(ticket_id.split("-")[1])):
            known = self.states.get(ticket_id)
            if known is None or not known.delivered or not known.ref or known.notes_stopped:
                continue
            if known.notes_next_try_at > now:
                continue
            tries.extend(
                NoteTry(ticket_id, known.ref, name, name in known.notes_in_doubt)
                for name in pending[ticket_id]
            )
        return tries

    def note_sending(self, ticket_id: str, name: str) -> None:
        """The note is about to be sent: until its outcome is known, its next try asks first."""
        state = self.states[ticket_id]
        if name not in state.notes_in_doubt:
            self.states[ticket_id] = replace(state, notes_in_doubt=(*state.notes_in_doubt, name))

    def note_added(self, ticket_id: str, name: str) -> None:
        """The system has the note (just added, or found by its key); its file is gone already."""
        state = self.states[ticket_id]
        self.states[ticket_id] = replace(
            state,
            notes_in_doubt=tuple(n for n in state.notes_in_doubt if n != name),
            note_failures=0,
            notes_next_try_at=0.0,
        )

    def note_failed(
        self, ticket_id: str, name: str, error: ConnectorError, now: float, *, unsure: bool
    ) -> None:
        """A try of the note failed; ``unsure``: the system may have stored it all the same."""
        state = self.states[ticket_id]
        failures = state.note_failures + 1
        stopped = not error.retryable
        delay = 0.0 if stopped else retry_delay(failures, self.rng, error.retry_after)
        others = tuple(n for n in state.notes_in_doubt if n != name)
        self.states[ticket_id] = replace(
            state,
            note_failures=failures,
            notes_next_try_at=now + delay,
            notes_stopped=stopped,
            notes_in_doubt=(*others, name) if unsure else others,
        )


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
                ticket_id: _state(entry)
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


_STATE_FIELDS: Final = frozenset(f.name for f in fields(DeliveryState))


def _state(entry: Mapping[str, Any]) -> DeliveryState:
    """A journal entry as a state: missing fields (an older journal) take their defaults, and fields
    this version does not know (a newer one's) are left out rather than costing the journal."""
    known = {name: value for name, value in entry.items() if name in _STATE_FIELDS}
    doubt = known.get("notes_in_doubt", ())
    if not isinstance(doubt, list | tuple) or not all(isinstance(name, str) for name in doubt):
        raise ValueError(f"notes_in_doubt of {entry.get('local_id')!r} is not a list of names")
    known["notes_in_doubt"] = tuple(doubt)
    return DeliveryState(**known)


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


def _keyed(connector: Connector) -> KeyedComments | None:
    """The connector as one with keyed comments, or None when it has only ``comment``."""
    # Looked up with getattr, not isinstance: since Python 3.12 isinstance against a runtime protocol
    # reads attributes statically and misses what a wrapper (app.ticket_systems.OwnedConnector)
    # forwards through __getattr__, which would quietly make every note at least once again.
    if callable(getattr(connector, "comment_with_key", None)) and callable(
        getattr(connector, "has_comment", None)
    ):
        return cast(KeyedComments, connector)
    return None


def ticket_key(install_id: str, ticket_id: str) -> str:
    return f"hv-{install_id}-{ticket_id}"


def note_key(install_id: str, ticket_id: str, note_name: str) -> str:
    """The note's own idempotency key: its ticket's, and what tells the note from the ticket's others."""
    return f"{ticket_key(install_id, ticket_id)}-note-{TicketOutbox.note_id(note_name)}"


def draft_of(ticket: Ticket, install_id: str) -> TicketDraft:
    return TicketDraft(
        local_id=ticket.id,
        idempotency_key=ticket_key(install_id, ticket.id),
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
        # Names only: a ticket is read (and unsealed) below only when the journal says it has work.
        try:
            ticket_ids = self.outbox.ticket_ids()
        except OSError as exc:  # tried again at the next wake
            log.warning("the ticket outbox cannot be listed: %s", exc)
            return
        with self._wake:
            due = self._plan.due(ticket_ids, self._clock())
        for ticket_id in due:
            with self._wake:
                if self._stopping or self._reconfigure:
                    return
            try:
                ticket = self.outbox.find(ticket_id)
            except (OSError, ValueError, RecursionError) as exc:
                ticket = None
                log.warning("ticket %s cannot be read and is not sent: %s", ticket_id, exc)
            if ticket is None:  # unreadable, or gone since the listing
                with self._wake:
                    self._plan.skip(ticket_id)
                continue
            self._deliver(connector, draft_of(ticket, install_id))
        try:
            pending = self.outbox.note_names()
        except OSError as exc:
            log.warning("the ticket notes cannot be listed: %s", exc)
            return
        with self._wake:  # also with none pending: what gone notes left in the journal is dropped
            tries = self._plan.notes_due(pending, self._clock())
        failed: set[str] = set()
        for note in tries:
            with self._wake:
                if self._stopping or self._reconfigure:
                    return
            if note.ticket_id in failed:
                continue  # a ticket's notes go in order: the later ones wait for the one that failed
            if not self._add_note(connector, note, install_id):
                failed.add(note.ticket_id)

    def _add_note(self, connector: Connector, note: NoteTry, install_id: str) -> bool:
        """Adds one note to its ticket in the system; False when it failed (and is retried later)."""
        try:
            text = self.outbox.read_note(note.name)
        except FileNotFoundError:
            return True  # another copy of the app added it meanwhile
        except (OSError, ValueError) as exc:
            log.warning("ticket note %s cannot be read and is not sent: %s", note.name, exc)
            return True  # the ticket's other notes still go; this one stays for a later start
        keyed = _keyed(connector)
        key = note_key(install_id, note.ticket_id, note.name)
        sending = False
        try:
            if keyed is not None and note.check_first and keyed.has_comment(note.ref, key):
                log.info("note %s was already on ticket %s: not added again", note.name, note.ticket_id)
            else:
                if keyed is not None:
                    with self._wake:
                        self._plan.note_sending(note.ticket_id, note.name)
                        self._save()  # before sending: a kill mid-request leaves the note in doubt
                sending = True
                if keyed is not None:
                    keyed.comment_with_key(note.ref, text, key)
                else:
                    # At least once: without keys a reply lost after the system took the note adds it
                    # twice, which a technician reads past; a note lost would be worse.
                    connector.comment(note.ref, text)
        except ConnectorError as exc:
            # Only a comment that may have reached the system leaves the note in doubt: a refusal or
            # a 429 stored nothing. A failed check changes nothing: the doubt stays as it was.
            unsure = (note.check_first and not sending) or (
                keyed is not None and sending and exc.problem == "unavailable"
            )
            with self._wake:
                self._plan.note_failed(note.ticket_id, note.name, exc, self._clock(), unsure=unsure)
                self._save()
            log.info("note for ticket %s not added: %s", note.ticket_id, exc.message)
            return False
        # The file goes first: a crash before the journal's save then leaves a doubt about a note that
        # is no longer pending (dropped), never a sent note that is pending and not in doubt.
        self.outbox.remove_note(note.name)
        with self._wake:
            self._plan.note_added(note.ticket_id, note.name)
            self._save()
        return True

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
