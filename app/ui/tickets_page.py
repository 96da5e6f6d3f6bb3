"""The Settings dialog's Tickets page, apart from its form rows: which ``tickets.*`` fields each ticket
system uses, what its credential is called, why its knowledge articles may be out of reach, and the
connection test.

The test runs in a worker thread, because a ticket system that does not answer takes the connector's
whole timeout (up to 10 s): the dialog must stay usable meanwhile. It builds the connector from the
fields as typed, not as saved, so a new user can try an address before keeping it; a credential typed
in the dialog is used as it is, else the stored one (:func:`app.ticket_systems.load_ticket_secret`).
The test only reads (:meth:`Connector.find` of a key no ticket has): it never files a ticket.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from typing import Final

from PySide6.QtCore import QObject, QTimer, Signal, Slot

from app.config import TICKET_SYSTEMS_WITH_ARTICLES, TicketSettings
from app.ticket_systems import system_name, try_connection

__all__ = [
    "ARTICLES_KEY",
    "CREDENTIAL_LABELS",
    "DELIVERY_ONLY_KEYS",
    "NO_CREDENTIAL_LABEL",
    "TICKET_REQUIRED",
    "TICKET_SECRET_FIELD",
    "TICKET_USED_BY",
    "USER_LABELS",
    "ConnectionTest",
    "articles_hint",
]

TICKET_SECRET_FIELD: Final = "tickets.secret"  # the credential's row: not a setting, never in a file

_SYSTEMS: Final = frozenset({"rt", "servicenow", "jsm", "webhook"})
# The ticket systems that use each field; tickets.system and tickets.contact apply to all of them.
TICKET_USED_BY: Final[Mapping[str, frozenset[str]]] = {
    "tickets.url": _SYSTEMS,
    "tickets.queue": frozenset({"rt"}),
    "tickets.user": frozenset({"servicenow", "jsm"}),
    "tickets.assignment_group": frozenset({"servicenow"}),
    "tickets.service_desk_id": frozenset({"jsm"}),
    "tickets.request_type_id": frozenset({"jsm"}),
    TICKET_SECRET_FIELD: _SYSTEMS,
}
# What only the delivery uses: a save that changes nothing else reconfigures the app's delivery and
# leaves a running conversation alone (tickets.contact is not here: the conversation's tools use it).
DELIVERY_ONLY_KEYS: Final = frozenset(TICKET_USED_BY) | {"tickets.system"}
# What make_connector refuses to go without (the assignment group is optional).
TICKET_REQUIRED: Final = frozenset(TICKET_USED_BY) - {"tickets.assignment_group", TICKET_SECRET_FIELD}

# The mnemonics differ per system because the letters do; none clashes with the page's other rows.
CREDENTIAL_LABELS: Final[Mapping[str, str]] = {
    "rt": "Aut&h token:",
    "servicenow": "Pass&word:",
    "jsm": "API tok&en:",
    "webhook": "Signing s&ecret:",
}
NO_CREDENTIAL_LABEL: Final = "Credential:"
USER_LABELS: Final[Mapping[str, str]] = {"servicenow": "API &user:", "jsm": "API &user's e-mail:"}

# Not in TICKET_USED_BY: that would hide the row for the other systems, and someone on Jira Service
# Management would never learn why the option is missing. The row stays, off, with articles_hint.
ARTICLES_KEY: Final = "kb.ticket_system_articles"


def articles_hint(system: str) -> str:
    """Why ``system``'s knowledge articles cannot be used, for beside the box; empty when they can."""
    if system in TICKET_SYSTEMS_WITH_ARTICLES:
        return ""
    names = [system_name(name) for name in TICKET_SYSTEMS_WITH_ARTICLES]
    if system == "none":
        return f"Choose {' or '.join(names)} as the ticket system to use its knowledge articles."
    only = " and ".join(names)
    return f"{system_name(system)} has no knowledge base this app can read; only {only} have one."


Result = tuple[int, bool, str]  # the test's generation, whether it connected, the sentence


def _run_test(
    results: queue.SimpleQueue[Result], generation: int, settings: TicketSettings, secret: str
) -> None:
    # Only the queue: the dialog, and every Qt object with it, may be gone by the time a slow server
    # answers, and touching a deleted Qt object from this thread can crash the app.
    ok, message = try_connection(settings, secret)
    results.put((generation, ok, message))


class ConnectionTest(QObject):
    """Runs :func:`try_connection` in a worker thread; ``finished(ok, message)`` arrives on the GUI thread.

    The worker hands its result over a queue that a timer of this object reads, so no Qt object is
    used outside the GUI thread. Only the latest test reports: :meth:`cancel` (or a newer
    :meth:`start`) makes an older one's result be dropped, since a slow answer for the old fields
    would mislabel the new ones.
    """

    finished = Signal(bool, str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._generation = 0
        self._running = False
        self._results: queue.SimpleQueue[Result] = queue.SimpleQueue()
        self._poll = QTimer(self)
        self._poll.setInterval(50)
        self._poll.timeout.connect(self._collect)

    @property
    def running(self) -> bool:
        return self._running

    def start(self, settings: TicketSettings, secret: str = "") -> None:
        self._generation += 1
        self._running = True
        threading.Thread(
            target=_run_test,
            args=(self._results, self._generation, settings, secret),
            name="helpdesk-ticket-test",
            daemon=True,  # a hung server must not keep the app from quitting
        ).start()
        self._poll.start()

    def cancel(self) -> None:
        self._generation += 1
        self._running = False
        self._poll.stop()

    @Slot()
    def _collect(self) -> None:
        while True:
            try:
                generation, ok, message = self._results.get_nowait()
            except queue.Empty:
                return
            if generation == self._generation:
                self._running = False
                self._poll.stop()
                self.finished.emit(ok, message)
