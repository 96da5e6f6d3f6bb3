"""The engine's listener for the UI: every report becomes a Qt signal.

The engine calls these methods on its own thread. The bridge lives on the GUI thread, so signals
emitted from another thread reach slots of GUI objects as queued calls, on the GUI thread.
Connect bound methods of QObjects (a receiver with a thread); a plain function would run directly
on the engine's thread.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from app.core.actions import Notice, StateChanged, ToolActivity, Transcript, TurnCompleted


class EngineBridge(QObject):
    """Implements ``app.engine.EngineListener``."""

    state_changed = Signal(object)  # StateChanged
    transcript_received = Signal(object)  # Transcript
    tool_activity = Signal(object)  # ToolActivity
    turn_completed = Signal(object)  # TurnCompleted
    notice_received = Signal(object)  # Notice

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)

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
