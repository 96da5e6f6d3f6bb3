"""What the conversation state machine asks the outside world to do, and what it reports.

The engine carries each action out (send on the socket, feed the player, run a tool) or hands it
to the UI and the console. Keeping them as plain data makes the machine testable without I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from app.core.metrics import TurnMetrics
from app.core.protocol import ClientEvent


class State(StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    LISTENING = "listening"
    USER_SPEAKING = "user_speaking"
    THINKING = "awaiting_response"
    ASSISTANT_SPEAKING = "assistant_speaking"
    TOOL_RUNNING = "tool_running"
    RECONNECTING = "reconnecting"
    ERROR = "error"


@dataclass(frozen=True)
class Send:
    """A client event for the WebSocket."""

    event: ClientEvent = field(repr=False)

    @property
    def type(self) -> str:
        return self.event.TYPE


@dataclass(frozen=True)
class PlayAudio:
    item_id: str
    pcm16: bytes = field(repr=False)  # 24 kHz mono


@dataclass(frozen=True)
class EndAudio:
    """No more audio comes for this item: let the player flush and finish it."""

    item_id: str


@dataclass(frozen=True)
class Halt:
    """Silence these items (None: everything playing) with a fade; the player reports what was heard."""

    item_ids: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ResumeAudio:
    """A paused answer goes on from where it stopped: what paused it was not the user's turn."""


@dataclass(frozen=True)
class PlayCue:
    """The fail-fast earcon: the user's turn ended and no answer has arrived yet."""

    cue_id: str


@dataclass(frozen=True)
class RunTool:
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class StateChanged:
    state: State
    muted: bool


@dataclass(frozen=True)
class Transcript:
    """Transcript text for the UI: deltas append, a final replaces the partial text of the item."""

    role: Literal["user", "assistant"]
    item_id: str
    text: str
    final: bool
    interrupted: bool = False  # assistant text cut to what the user heard


@dataclass(frozen=True)
class ToolActivity:
    call_id: str
    name: str
    status: Literal["started", "slow", "done", "failed"]
    message: str


@dataclass(frozen=True)
class TurnCompleted:
    metrics: TurnMetrics
    user_text: str
    assistant_text: str


@dataclass(frozen=True)
class Notice:
    """Something the user should know: an error, a lost connection, a recovery."""

    level: Literal["info", "warning", "error"]
    message: str
    # The user must act (plug a device back, fix the key, check the network): worth a desktop
    # notification, where other notices only go to the status line and the transcript.
    needs_user: bool = False


Action = (
    Send
    | PlayAudio
    | EndAudio
    | Halt
    | ResumeAudio
    | PlayCue
    | RunTool
    | StateChanged
    | Transcript
    | ToolActivity
    | TurnCompleted
    | Notice
)
