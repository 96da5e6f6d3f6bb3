"""Per-turn metrics, one JSON object per completed assistant turn (the ``--metrics`` file)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class TurnMetrics:
    turn: int
    backend: str
    user_speech_end: float | None = None  # monotonic seconds
    first_audio_out: float | None = None  # monotonic seconds, first audible sample handed to the device
    ttfa_ms: float | None = None
    barge_in: bool = False
    halt_ms: float | None = None  # user speech onset in the mic to silence handed to the device
    played_ms: float | None = None  # assistant audio the user heard
    truncated_at_ms: int | None = None  # audio_end_ms sent with conversation.item.truncate
    underruns: int = 0
    reconnects: int = 0
    cue_played: bool = False
    # Local barge-ins that turned out not to be the user's turn (a cough): the answer resumed.
    false_interruptions: int = 0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("ttfa_ms", "halt_ms", "played_ms"):
            if data[key] is not None:
                data[key] = round(data[key], 1)
        return data

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), separators=(",", ":"))
