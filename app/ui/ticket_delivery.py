"""The tray app's ticket delivery: one worker for the app's whole life, not one per conversation.

Tickets wait in the outbox whenever no ticket system is set up, or the system refused them; the
user fixes that in Settings, often with no conversation running. So the app keeps a
:class:`~app.tools.delivery.DeliveryWorker` of its own from start to quit, which makes its
connector from the settings as saved *now* (read afresh each time), and is told to
:meth:`AppDelivery.reconfigure` when the Settings dialog saves: the queued tickets then go out and
the system's own number reaches the user without restarting anything. The conversation's tools
file through this same worker (``ConversationRunner(..., delivery=worker)``), so one worker, never
two, sends the outbox.

Nothing here is a Qt object. The worker's reports arrive on its thread and are put on a queue,
which the app reads with a timer on the GUI thread (:meth:`AppDelivery.take_notices`): the thread
never touches a Qt object, which may already be deleted when a slow ticket system answers.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from app.config import TicketSettings
from app.core.actions import Notice
from app.tools.connectors import Connector
from app.tools.delivery import DeliveryWorker, delivered_notice, problem_notice
from app.tools.tickets import TicketOutbox

if TYPE_CHECKING:
    pass

__all__ = [
    "AppDelivery",
    "saved_settings_connector",
]

log = logging.getLogger("app.ui")


def saved_settings_connector() -> Connector | None:
    """The connector the ``tickets.*`` settings in effect now choose (files, policy, environment,
    read afresh each time); None when tickets stay here. Blocking (files, keyring)."""
    from app.config import load_settings
    from app.ticket_systems import make_connector

    tickets: TicketSettings = load_settings().typed.tickets
    return make_connector(tickets)


class AppDelivery:
    """Owns the app's delivery worker; its reports wait in a queue for the GUI thread to take.

    ``connector`` makes the connector, in the worker's thread and again after each
    :meth:`reconfigure` (from the saved settings by default); ``outbox`` makes the outbox (the
    user's by default) when :meth:`start` is called.
    """

    def __init__(
        self,
        connector: Callable[[], Connector | None] = saved_settings_connector,
        outbox: Callable[[], TicketOutbox] = TicketOutbox,
    ) -> None:
        self._connector = connector
        self._outbox = outbox
        self._notices: queue.SimpleQueue[Notice] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._worker: DeliveryWorker | None = None
        self._stopped = False

    @property
    def worker(self) -> DeliveryWorker | None:
        """The running worker; None before :meth:`start` and after :meth:`stop`."""
        with self._lock:
            return self._worker

    def start(self) -> DeliveryWorker | None:
        """Starts the worker (once); None when stopped already or the outbox cannot be made."""
        with self._lock:
            if self._worker is not None or self._stopped:
                return self._worker
            try:
                outbox = self._outbox()
            except (OSError, ValueError) as exc:
                # Tickets are still filed and kept by the conversation's own outbox; say why they
                # are not sent rather than failing the whole app.
                log.warning("ticket delivery cannot start: %s", exc)
                self._notices.put(Notice("warning", f"Tickets cannot be sent from this computer: {exc}."))
                return None
            notices = self._notices  # the worker's callbacks hold the queue, not this object
            worker = DeliveryWorker(
                outbox,
                self._connector,
                on_delivered=lambda done: notices.put(delivered_notice(done)),
                on_problem=lambda trouble: notices.put(problem_notice(trouble)),
            )
            self._worker = worker
        worker.start()
        return worker

    def reconfigure(self) -> None:
        """The settings changed: a new connector from them, and stopped tickets tried again."""
        worker = self.worker
        if worker is not None:
            worker.reconfigure()

    def stop(self, timeout: float = 0.0) -> None:
        """Stops the worker, waiting at most ``timeout`` s: a try in flight ends in its own thread,
        and its idempotency key makes the next start's retry safe."""
        with self._lock:
            self._stopped = True
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop(timeout)

    def take_notices(self) -> list[Notice]:
        """The reports that arrived since the last call, oldest first (any thread; the GUI's timer)."""
        taken: list[Notice] = []
        while True:
            try:
                taken.append(self._notices.get_nowait())
            except queue.Empty:
                return taken
