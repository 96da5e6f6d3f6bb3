"""The engine's listener for the UI: its reports become Qt signals on the GUI thread.

The engine, the offline server's supervisor and the ticket system's article sync call their
listener on threads of their own, and any of them can outlive the app's Qt objects (quitting does
not wait for a stuck stop). So the listener they get, :class:`EngineReports`, is no Qt object: it
only puts each report on a queue. :class:`EngineBridge` empties that queue with a timer on the GUI
thread and emits its signals there. A thread therefore never touches a Qt object, and once the
bridge is deleted its timer is gone with it and the queue is just never read again.
"""

from __future__ import annotations

import queue

from PySide6.QtCore import QObject, QTimer, Signal, Slot

from app.core.actions import Notice, StateChanged, ToolActivity, Transcript, TurnCompleted

__all__ = ["REPORT_POLL_MS", "EngineBridge", "EngineReports", "Report"]

# Often enough that a state change or a streamed word shows without a noticeable lag (the transcript
# waits 30 ms to render anyway), rarely enough to cost nothing on an idle GUI thread.
REPORT_POLL_MS = 20

Report = StateChanged | Transcript | ToolActivity | TurnCompleted | Notice


class EngineReports:
    """Implements ``app.engine.EngineListener`` for any thread: each report waits in a queue."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Report] = queue.SimpleQueue()

    def on_state(self, event: StateChanged) -> None:
        self._queue.put(event)

    def on_transcript(self, event: Transcript) -> None:
        self._queue.put(event)

    def on_tool(self, event: ToolActivity) -> None:
        self._queue.put(event)

    def on_turn(self, event: TurnCompleted) -> None:
        self._queue.put(event)

    def on_notice(self, event: Notice) -> None:
        self._queue.put(event)

    def take(self) -> list[Report]:
        """The reports that arrived since the last call, oldest first."""
        taken: list[Report] = []
        while True:
            try:
                taken.append(self._queue.get_nowait())
            except queue.Empty:
                return taken


class EngineBridge(QObject):
    """The engine's reports as signals, always emitted on the GUI thread.

    Hand :attr:`listener` to the engine and to anything else that reports from its own thread. The
    ``on_*`` methods emit at once and are for the GUI thread only (the app's own notices, tests).
    With ``poll`` False nobody empties the queue but the owner, through :meth:`deliver`: the app
    does, together with its workers' results, so that their order holds.
    """

    state_changed = Signal(object)  # StateChanged
    transcript_received = Signal(object)  # Transcript
    tool_activity = Signal(object)  # ToolActivity
    turn_completed = Signal(object)  # TurnCompleted
    notice_received = Signal(object)  # Notice

    def __init__(self, parent: QObject | None = None, *, poll: bool = True) -> None:
        super().__init__(parent)
        self.listener = EngineReports()
        self._timer = QTimer(self)
        self._timer.setInterval(REPORT_POLL_MS)
        self._timer.timeout.connect(self.deliver)
        if poll:
            self._timer.start()

    @Slot()
    def deliver(self) -> None:
        """Emits what :attr:`listener` received since the last call (GUI thread)."""
        for event in self.listener.take():
            match event:
                case StateChanged():
                    self.on_state(event)
                case Transcript():
                    self.on_transcript(event)
                case ToolActivity():
                    self.on_tool(event)
                case TurnCompleted():
                    self.on_turn(event)
                case Notice():
                    self.on_notice(event)

    def on_state(self, event: StateChanged) -> None:
        self.state_changed.emit(event)

    def on_transcript(self, event: Transcript) -> None:
        self.transcript_received.emit(event)

    def on_tool(self, event: ToolActivity) -> None:
        self.tool_activity.emit(event)

    def on_turn(self, event: TurnCompleted) -> None:
        self.turn_completed.emit(event)

    def on_notice(self, event: Notice) -> None:
        self.notice_received.emit(event)
