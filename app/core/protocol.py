"""The OpenAI Realtime protocol (GA event names), sans I/O.

Client events are built as plain dicts ready for :func:`encode`; server frames are turned into frozen
dataclasses by :func:`parse_server_event`. Nothing here touches a socket, a thread or a logger, so the
connection code decides what to send, when, and what to log.

The parser never raises: a receive loop must survive whatever arrives, so unknown event types become
:class:`UnknownEvent` and anything unusable becomes :class:`MalformedEvent`. Fields the client does not
use are ignored, so the server may add fields freely.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, TypeAlias, TypeGuard, TypeVar

from app.core.safe_text import printable

__all__ = [
    "PCM_RATE",
    "ContentPart",
    "ConversationItemAdded",
    "ConversationItemDone",
    "ConversationItemTruncated",
    "Eagerness",
    "ErrorEvent",
    "InputAudioBufferCleared",
    "InputAudioBufferCommitted",
    "InputAudioTranscriptionCompleted",
    "InputAudioTranscriptionDelta",
    "InputAudioTranscriptionFailed",
    "ItemInfo",
    "MalformedEvent",
    "OutputAudioBufferCleared",
    "OutputAudioBufferStarted",
    "OutputAudioBufferStopped",
    "RateLimit",
    "RateLimitsUpdated",
    "ResponseContentPartAdded",
    "ResponseContentPartDone",
    "ResponseCreated",
    "ResponseDone",
    "ResponseFunctionCallArgumentsDelta",
    "ResponseFunctionCallArgumentsDone",
    "ResponseOutputAudioDelta",
    "ResponseOutputAudioDone",
    "ResponseOutputAudioTranscriptDelta",
    "ResponseOutputAudioTranscriptDone",
    "ResponseOutputItemAdded",
    "ResponseOutputItemDone",
    "ResponseOutputTextDelta",
    "ResponseOutputTextDone",
    "ResponseStatusDetails",
    "ServerEvent",
    "SessionConfig",
    "SessionCreated",
    "SessionInfo",
    "SessionUpdated",
    "SpeechStarted",
    "SpeechStopped",
    "ToolSpec",
    "TurnDetection",
    "TurnDetectionKind",
    "UnknownEvent",
    "UnknownTypeLog",
    "Usage",
    "conversation_item_create_assistant_text",
    "conversation_item_create_function_call",
    "conversation_item_create_function_call_output",
    "conversation_item_create_user_text",
    "conversation_item_truncate",
    "encode",
    "input_audio_buffer_append",
    "input_audio_buffer_clear",
    "input_audio_buffer_commit",
    "parse_server_event",
    "response_cancel",
    "response_create",
    "session_update",
]

PCM_RATE: Final = 24000  # the only rate the API accepts for audio/pcm, in both directions

TurnDetectionKind: TypeAlias = Literal["server_vad", "semantic_vad"]
Eagerness: TypeAlias = Literal["low", "medium", "high", "auto"]

_TURN_DETECTION_KINDS: Final = frozenset({"server_vad", "semantic_vad"})
_EAGERNESS: Final = frozenset({"low", "medium", "high", "auto"})
# The API rejects other names with an error that arrives only after the session is live.
_TOOL_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EXCERPT_CHARS: Final = 200


# ---------------------------------------------------------------------------------------------------
# Session configuration
# ---------------------------------------------------------------------------------------------------


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass, and True as a millisecond count is always a bug.
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class TurnDetection:
    """Server-side turn detection.

    One object can carry the settings of both kinds (a settings page may keep them all while the user
    switches kind); :meth:`to_dict` renders only the fields valid for ``kind``, because the server
    rejects e.g. ``eagerness`` on ``server_vad``. ``None`` fields are left to the server's defaults.
    """

    kind: TurnDetectionKind = "server_vad"
    threshold: float | None = None  # server_vad only, 0.0 to 1.0
    prefix_padding_ms: int | None = None  # server_vad only
    silence_duration_ms: int | None = None  # server_vad only
    eagerness: Eagerness | None = None  # semantic_vad only
    create_response: bool = True
    interrupt_response: bool = True

    def __post_init__(self) -> None:
        if self.kind not in _TURN_DETECTION_KINDS:
            raise ValueError(f"turn detection kind must be server_vad or semantic_vad, not {self.kind!r}")
        if self.threshold is not None and (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, int | float)
            or not 0.0 <= self.threshold <= 1.0
        ):
            raise ValueError(f"threshold must be a number from 0.0 to 1.0, not {self.threshold!r}")
        for name in ("prefix_padding_ms", "silence_duration_ms"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 0):
                raise ValueError(f"{name} must be an int >= 0, not {value!r}")
        if self.eagerness is not None and self.eagerness not in _EAGERNESS:
            raise ValueError(f"eagerness must be one of {sorted(_EAGERNESS)}, not {self.eagerness!r}")
        for name in ("create_response", "interrupt_response"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool")

    def to_dict(self) -> dict[str, Any]:
        rendered: dict[str, Any] = {"type": self.kind}
        if self.kind == "server_vad":
            if self.threshold is not None:
                rendered["threshold"] = float(self.threshold)
            if self.prefix_padding_ms is not None:
                rendered["prefix_padding_ms"] = self.prefix_padding_ms
            if self.silence_duration_ms is not None:
                rendered["silence_duration_ms"] = self.silence_duration_ms
        elif self.eagerness is not None:
            rendered["eagerness"] = self.eagerness
        rendered["create_response"] = self.create_response
        rendered["interrupt_response"] = self.interrupt_response
        return rendered


def _empty_object_schema() -> Mapping[str, Any]:
    return {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function tool the model may call; ``parameters`` is a JSON schema."""

    name: str
    description: str
    # Excluded from the hash so a spec stays hashable although a schema is a dict.
    parameters: Mapping[str, Any] = field(default_factory=_empty_object_schema, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _TOOL_NAME.fullmatch(self.name):
            raise ValueError(f"tool name must match [A-Za-z0-9_-]{{1,64}}, not {self.name!r}")
        if not isinstance(self.parameters, Mapping):
            raise ValueError(f"parameters of tool {self.name!r} must be a JSON schema object")

    def to_dict(self) -> dict[str, Any]:
        # A deep copy, so a caller editing the event cannot change the spec behind our back.
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": copy.deepcopy(dict(self.parameters)),
        }


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Everything :func:`session_update` sends.

    ``model`` is usually chosen in the connection URL; set it here only for the first update, since
    the server does not let a live session change model. ``transcription_model=None`` leaves input
    transcription off, ``turn_detection=None`` turns server turn detection off (the client then commits
    the buffer and asks for responses itself).
    """

    instructions: str
    model: str | None = None
    voice: str = "marin"
    transcription_model: str | None = None
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    tools: tuple[ToolSpec, ...] = ()

    def __post_init__(self) -> None:
        tools = tuple(self.tools)  # a list would make the frozen config mutable through the back door
        object.__setattr__(self, "tools", tools)
        names = [tool.name for tool in tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique, got {names}")


# ---------------------------------------------------------------------------------------------------
# Client events
# ---------------------------------------------------------------------------------------------------


def _event(event_type: str, event_id: str | None, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": event_type}
    if event_id is not None:
        event["event_id"] = event_id
    event.update(fields)
    return event


def _pcm_format() -> dict[str, Any]:
    return {"type": "audio/pcm", "rate": PCM_RATE}


def session_update(config: SessionConfig, *, event_id: str | None = None) -> dict[str, Any]:
    """``session.update`` for a realtime (speech-to-speech) session with 24 kHz PCM16 both ways."""
    audio_input: dict[str, Any] = {"format": _pcm_format()}
    if config.transcription_model is not None:
        audio_input["transcription"] = {"model": config.transcription_model}
    # Sent even when None: null is how the API is told to turn turn detection off.
    audio_input["turn_detection"] = (
        config.turn_detection.to_dict() if config.turn_detection is not None else None
    )
    session: dict[str, Any] = {"type": "realtime"}
    if config.model is not None:
        session["model"] = config.model
    session["instructions"] = config.instructions
    session["output_modalities"] = ["audio"]
    session["audio"] = {
        "input": audio_input,
        "output": {"format": _pcm_format(), "voice": config.voice},
    }
    session["tools"] = [tool.to_dict() for tool in config.tools]
    session["tool_choice"] = "auto"
    return _event("session.update", event_id, session=session)


def input_audio_buffer_append(
    pcm16: bytes | bytearray | memoryview, *, event_id: str | None = None
) -> dict[str, Any]:
    """``input_audio_buffer.append`` with mono little-endian PCM16 at 24 kHz."""
    raw = bytes(pcm16)
    if len(raw) % 2:
        # Half a sample shifts every later sample by one byte, which the server hears as loud noise.
        raise ValueError(f"PCM16 audio must be a whole number of samples, got {len(raw)} bytes")
    return _event("input_audio_buffer.append", event_id, audio=base64.b64encode(raw).decode("ascii"))


def input_audio_buffer_commit(*, event_id: str | None = None) -> dict[str, Any]:
    return _event("input_audio_buffer.commit", event_id)


def input_audio_buffer_clear(*, event_id: str | None = None) -> dict[str, Any]:
    return _event("input_audio_buffer.clear", event_id)


def _item_create(item: dict[str, Any], event_id: str | None) -> dict[str, Any]:
    return _event("conversation.item.create", event_id, item=item)


def conversation_item_create_user_text(text: str, *, event_id: str | None = None) -> dict[str, Any]:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return _item_create(item, event_id)


def conversation_item_create_assistant_text(text: str, *, event_id: str | None = None) -> dict[str, Any]:
    """An assistant message, for replaying history into a new session after a reconnect."""
    item = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}
    return _item_create(item, event_id)


def conversation_item_create_function_call(
    call_id: str, name: str, arguments: str, *, event_id: str | None = None
) -> dict[str, Any]:
    """A past function call, for replay; ``arguments`` is the JSON text the model produced."""
    item = {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}
    return _item_create(item, event_id)


def conversation_item_create_function_call_output(
    call_id: str, output: str, *, event_id: str | None = None
) -> dict[str, Any]:
    item = {"type": "function_call_output", "call_id": call_id, "output": output}
    return _item_create(item, event_id)


def conversation_item_truncate(
    item_id: str, content_index: int, audio_end_ms: int, *, event_id: str | None = None
) -> dict[str, Any]:
    """``conversation.item.truncate``: the user heard only ``audio_end_ms`` of the assistant's audio."""
    if not _is_int(audio_end_ms):
        raise TypeError(f"audio_end_ms must be an int, not {type(audio_end_ms).__name__}")
    if audio_end_ms < 0:
        raise ValueError(f"audio_end_ms must be >= 0, not {audio_end_ms}")
    if not _is_int(content_index):
        raise TypeError(f"content_index must be an int, not {type(content_index).__name__}")
    if content_index < 0:
        raise ValueError(f"content_index must be >= 0, not {content_index}")
    return _event(
        "conversation.item.truncate",
        event_id,
        item_id=item_id,
        content_index=content_index,
        audio_end_ms=audio_end_ms,
    )


def response_create(instructions: str | None = None, *, event_id: str | None = None) -> dict[str, Any]:
    """``response.create``; ``instructions`` override the session's for this response only."""
    if instructions is None:
        return _event("response.create", event_id)
    return _event("response.create", event_id, response={"instructions": instructions})


def response_cancel(response_id: str | None = None, *, event_id: str | None = None) -> dict[str, Any]:
    """``response.cancel``; without ``response_id`` the server cancels whatever is in progress."""
    if response_id is None:
        return _event("response.cancel", event_id)
    return _event("response.cancel", event_id, response_id=response_id)


def encode(event: Mapping[str, Any]) -> str:
    """Compact JSON for one client event.

    NaN and infinities raise ``ValueError`` here rather than producing JSON the server rejects.
    """
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# ---------------------------------------------------------------------------------------------------
# Server events
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """The parts of a server session object the client checks; ``raw`` has the rest."""

    id: str | None
    type: str | None  # "realtime" or "transcription"
    model: str | None
    instructions: str | None
    voice: str | None
    output_modalities: tuple[str, ...]
    transcription_model: str | None
    turn_detection_type: str | None  # None when turn detection is off
    tool_names: tuple[str, ...]
    raw: Mapping[str, Any] = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ContentPart:
    """One content part of a message; audio bytes are not kept (they arrive as deltas)."""

    type: str | None
    text: str | None = None
    transcript: str | None = None


@dataclass(frozen=True, slots=True)
class ItemInfo:
    """A conversation item: a message, a function call, a function call output, or a newer kind."""

    id: str
    type: str
    role: str | None = None
    status: str | None = None
    content: tuple[ContentPart, ...] = ()
    call_id: str | None = None  # function_call and function_call_output
    name: str | None = None  # function_call
    arguments: str | None = None  # function_call
    output: str | None = None  # function_call_output

    @property
    def text(self) -> str:
        """The message's words: text parts as written, audio parts by their transcript."""
        return "".join(part.text or part.transcript or "" for part in self.content)


@dataclass(frozen=True, slots=True)
class ResponseStatusDetails:
    type: str | None
    reason: str | None  # e.g. turn_detected, client_cancelled, max_output_tokens, content_filter
    error_type: str | None
    error_code: str | None
    error_message: str | None


@dataclass(frozen=True, slots=True)
class Usage:
    total_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    input_cached_tokens: int = 0
    output_text_tokens: int = 0
    output_audio_tokens: int = 0


@dataclass(frozen=True, slots=True)
class RateLimit:
    name: str | None
    limit: int | None
    remaining: int | None
    reset_seconds: float | None


@dataclass(frozen=True, slots=True)
class SessionCreated:
    TYPE: ClassVar[str] = "session.created"
    event_id: str
    session: SessionInfo


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    TYPE: ClassVar[str] = "session.updated"
    event_id: str
    session: SessionInfo


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """``error``; ``client_event_id`` is the ``event_id`` of the client event that caused it, if any."""

    TYPE: ClassVar[str] = "error"
    event_id: str
    error_type: str | None
    code: str | None
    message: str
    param: str | None
    client_event_id: str | None


@dataclass(frozen=True, slots=True)
class InputAudioBufferCommitted:
    TYPE: ClassVar[str] = "input_audio_buffer.committed"
    event_id: str
    item_id: str
    previous_item_id: str | None


@dataclass(frozen=True, slots=True)
class InputAudioBufferCleared:
    TYPE: ClassVar[str] = "input_audio_buffer.cleared"
    event_id: str


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    TYPE: ClassVar[str] = "input_audio_buffer.speech_started"
    event_id: str
    audio_start_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    TYPE: ClassVar[str] = "input_audio_buffer.speech_stopped"
    event_id: str
    audio_end_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class ConversationItemAdded:
    TYPE: ClassVar[str] = "conversation.item.added"
    event_id: str
    item: ItemInfo
    previous_item_id: str | None


@dataclass(frozen=True, slots=True)
class ConversationItemDone:
    TYPE: ClassVar[str] = "conversation.item.done"
    event_id: str
    item: ItemInfo
    previous_item_id: str | None


@dataclass(frozen=True, slots=True)
class InputAudioTranscriptionDelta:
    TYPE: ClassVar[str] = "conversation.item.input_audio_transcription.delta"
    event_id: str
    item_id: str
    content_index: int
    delta: str


@dataclass(frozen=True, slots=True)
class InputAudioTranscriptionCompleted:
    TYPE: ClassVar[str] = "conversation.item.input_audio_transcription.completed"
    event_id: str
    item_id: str
    content_index: int
    transcript: str


@dataclass(frozen=True, slots=True)
class InputAudioTranscriptionFailed:
    TYPE: ClassVar[str] = "conversation.item.input_audio_transcription.failed"
    event_id: str
    item_id: str
    content_index: int
    error_type: str | None
    code: str | None
    message: str | None


@dataclass(frozen=True, slots=True)
class ConversationItemTruncated:
    TYPE: ClassVar[str] = "conversation.item.truncated"
    event_id: str
    item_id: str
    content_index: int
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    TYPE: ClassVar[str] = "response.created"
    event_id: str
    response_id: str
    status: str | None


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """``response.done``; ``status`` is completed, cancelled, failed or incomplete.

    ``status`` stays a plain string and may be None: a status value this client does not know must
    still end the response, or the client would wait for it forever.
    """

    TYPE: ClassVar[str] = "response.done"
    event_id: str
    response_id: str
    status: str | None
    status_details: ResponseStatusDetails | None
    usage: Usage | None
    output: tuple[ItemInfo, ...]


@dataclass(frozen=True, slots=True)
class ResponseOutputItemAdded:
    TYPE: ClassVar[str] = "response.output_item.added"
    event_id: str
    response_id: str
    output_index: int
    item: ItemInfo


@dataclass(frozen=True, slots=True)
class ResponseOutputItemDone:
    TYPE: ClassVar[str] = "response.output_item.done"
    event_id: str
    response_id: str
    output_index: int
    item: ItemInfo


@dataclass(frozen=True, slots=True)
class ResponseContentPartAdded:
    TYPE: ClassVar[str] = "response.content_part.added"
    event_id: str
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    part: ContentPart


@dataclass(frozen=True, slots=True)
class ResponseContentPartDone:
    TYPE: ClassVar[str] = "response.content_part.done"
    event_id: str
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    part: ContentPart


@dataclass(frozen=True, slots=True)
class ResponseOutputAudioDelta:
    TYPE: ClassVar[str] = "response.output_audio.delta"
    event_id: str
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    audio: bytes = field(repr=False)  # PCM16 at 24 kHz, decoded


@dataclass(frozen=True, slots=True)
class ResponseOutputAudioDone:
    TYPE: ClassVar[str] = "response.output_audio.done"
    event_id: str
    response_id: str
    item_id: str
    output_index: int
    content_index: int


@dataclass(frozen=True, slots=True)
class ResponseOutputAudioTranscriptDelta:
    TYPE: ClassVar[str] = "response.output_audio_transcript.delta"
    event_id: str
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str


@dataclass(frozen=True, slots=True)
class ResponseOutputAudioTranscriptDone:
    TYPE: ClassVar[str] = "response.output_audio_transcript.done"
    event_id: str
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    transcript: str


@dataclass(frozen=True, slots=True)
class ResponseOutputTextDelta:
    TYPE: ClassVar[str] = "response.output_text.delta"
    event_id: str
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str


@dataclass(frozen=True, slots=True)
class ResponseOutputTextDone:
    TYPE: ClassVar[str] = "response.output_text.done"
    event_id: str
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    text: str


@dataclass(frozen=True, slots=True)
class ResponseFunctionCallArgumentsDelta:
    TYPE: ClassVar[str] = "response.function_call_arguments.delta"
    event_id: str
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class ResponseFunctionCallArgumentsDone:
    TYPE: ClassVar[str] = "response.function_call_arguments.done"
    event_id: str
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    name: str
    arguments: str  # JSON text as the model wrote it; the caller decides how to treat bad JSON


@dataclass(frozen=True, slots=True)
class RateLimitsUpdated:
    TYPE: ClassVar[str] = "rate_limits.updated"
    event_id: str
    rate_limits: tuple[RateLimit, ...]


@dataclass(frozen=True, slots=True)
class OutputAudioBufferStarted:
    TYPE: ClassVar[str] = "output_audio_buffer.started"
    event_id: str
    response_id: str


@dataclass(frozen=True, slots=True)
class OutputAudioBufferStopped:
    TYPE: ClassVar[str] = "output_audio_buffer.stopped"
    event_id: str
    response_id: str


@dataclass(frozen=True, slots=True)
class OutputAudioBufferCleared:
    TYPE: ClassVar[str] = "output_audio_buffer.cleared"
    event_id: str
    response_id: str


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """A well-formed event of a type this client does not handle."""

    type: str
    raw: Mapping[str, Any] = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class MalformedEvent:
    """A frame that could not be used; ``raw_excerpt`` is the start of it, for the log."""

    reason: str
    raw_excerpt: str


ServerEvent: TypeAlias = (
    SessionCreated
    | SessionUpdated
    | ErrorEvent
    | InputAudioBufferCommitted
    | InputAudioBufferCleared
    | SpeechStarted
    | SpeechStopped
    | ConversationItemAdded
    | ConversationItemDone
    | InputAudioTranscriptionDelta
    | InputAudioTranscriptionCompleted
    | InputAudioTranscriptionFailed
    | ConversationItemTruncated
    | ResponseCreated
    | ResponseDone
    | ResponseOutputItemAdded
    | ResponseOutputItemDone
    | ResponseContentPartAdded
    | ResponseContentPartDone
    | ResponseOutputAudioDelta
    | ResponseOutputAudioDone
    | ResponseOutputAudioTranscriptDelta
    | ResponseOutputAudioTranscriptDone
    | ResponseOutputTextDelta
    | ResponseOutputTextDone
    | ResponseFunctionCallArgumentsDelta
    | ResponseFunctionCallArgumentsDone
    | RateLimitsUpdated
    | OutputAudioBufferStarted
    | OutputAudioBufferStopped
    | OutputAudioBufferCleared
    | UnknownEvent
    | MalformedEvent
)


class UnknownTypeLog:
    """Remembers which unknown event types were already reported, so each is logged once.

    Past ``max_types`` distinct types it answers False: a server gone wrong must not grow it forever.
    """

    def __init__(self, max_types: int = 256) -> None:
        self._seen: set[str] = set()
        self._max_types = max_types

    def first_time(self, event_type: str) -> bool:
        if event_type in self._seen or len(self._seen) >= self._max_types:
            return False
        self._seen.add(event_type)
        return True


class _Bad(Exception):
    """Aborts parsing of one event; never escapes :func:`parse_server_event`."""


_Obj: TypeAlias = Mapping[str, Any]
_T = TypeVar("_T")


def _get(obj: _Obj, key: str) -> Any:
    if key not in obj:
        raise _Bad(f"missing field {key!r}")
    return obj[key]


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _raw_str(obj: _Obj, key: str) -> str:
    value = _get(obj, key)
    if not isinstance(value, str):
        raise _Bad(f"field {key!r} must be a string, not {_kind(value)}")
    return value


# Every string a server sends may reach a terminal, a log or a notification: control characters
# go here, once, rather than at each place that shows one.
def _str(obj: _Obj, key: str) -> str:
    return printable(_raw_str(obj, key))


def _opt_str(obj: _Obj, key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise _Bad(f"field {key!r} must be a string or null, not {_kind(value)}")
    return None if value is None else printable(value)


def _int(obj: _Obj, key: str) -> int:
    value = _get(obj, key)
    if _is_int(value):
        return value
    raise _Bad(f"field {key!r} must be an integer, not {_kind(value)}")


def _opt_int(obj: _Obj, key: str) -> int | None:
    value = obj.get(key)
    if value is None or _is_int(value):
        return value
    raise _Bad(f"field {key!r} must be an integer or null, not {_kind(value)}")


def _opt_float(obj: _Obj, key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Bad(f"field {key!r} must be a finite number or null, not {value!r}")
    return float(value)


def _obj(obj: _Obj, key: str) -> _Obj:
    value = _get(obj, key)
    if not isinstance(value, Mapping):
        raise _Bad(f"field {key!r} must be an object, not {_kind(value)}")
    return value


def _opt_obj(obj: _Obj, key: str) -> _Obj | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, Mapping):
        raise _Bad(f"field {key!r} must be an object or null, not {_kind(value)}")
    return value


def _opt_list(obj: _Obj, key: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Bad(f"field {key!r} must be an array or null, not {_kind(value)}")
    return value


def _objects(obj: _Obj, key: str) -> list[_Obj]:
    values = _opt_list(obj, key)
    for index, value in enumerate(values):
        if not isinstance(value, Mapping):
            raise _Bad(f"{key}[{index}] must be an object, not {_kind(value)}")
    return values


def _base64(obj: _Obj, key: str) -> bytes:
    text = _raw_str(obj, key)  # audio: base64 has no control characters, and validate=True checks
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise _Bad(f"field {key!r} is not valid base64: {exc}") from None


def _nested(key: str, parse: Callable[[_Obj], _T], obj: _Obj) -> _T:
    try:
        return parse(obj)
    except _Bad as exc:
        raise _Bad(f"{key}: {exc}") from None


def _event_id(obj: _Obj) -> str:
    # Only logs use it, so an event without one is still worth delivering.
    return _opt_str(obj, "event_id") or ""


def _session_info(session: _Obj) -> SessionInfo:
    audio = _opt_obj(session, "audio") or {}
    audio_in = _opt_obj(audio, "input") or {}
    audio_out = _opt_obj(audio, "output") or {}
    # A custom voice comes as {"id": ...}, a built-in one as its name.
    custom_voice = audio_out.get("voice")
    voice = (
        _opt_str(custom_voice, "id") if isinstance(custom_voice, Mapping) else _opt_str(audio_out, "voice")
    )
    transcription = _opt_obj(audio_in, "transcription")
    turn_detection = _opt_obj(audio_in, "turn_detection")
    modalities = _opt_list(session, "output_modalities")
    if not all(isinstance(m, str) for m in modalities):
        raise _Bad("output_modalities must hold strings")
    tools = _objects(session, "tools")
    return SessionInfo(
        id=_opt_str(session, "id"),
        type=_opt_str(session, "type"),
        model=_opt_str(session, "model"),
        instructions=_opt_str(session, "instructions"),
        voice=voice,
        output_modalities=tuple(modalities),
        transcription_model=_opt_str(transcription, "model") if transcription is not None else None,
        turn_detection_type=_opt_str(turn_detection, "type") if turn_detection is not None else None,
        tool_names=tuple(name for tool in tools if (name := _opt_str(tool, "name")) is not None),
        raw=session,
    )


def _content_part(part: _Obj) -> ContentPart:
    return ContentPart(
        type=_opt_str(part, "type"), text=_opt_str(part, "text"), transcript=_opt_str(part, "transcript")
    )


def _item_info(item: _Obj) -> ItemInfo:
    return ItemInfo(
        id=_str(item, "id"),
        type=_str(item, "type"),
        role=_opt_str(item, "role"),
        status=_opt_str(item, "status"),
        content=tuple(_content_part(part) for part in _objects(item, "content")),
        call_id=_opt_str(item, "call_id"),
        name=_opt_str(item, "name"),
        arguments=_opt_str(item, "arguments"),
        output=_opt_str(item, "output"),
    )


def _item(obj: _Obj) -> ItemInfo:
    return _nested("item", _item_info, _obj(obj, "item"))


def _status_details(details: _Obj) -> ResponseStatusDetails:
    error = _opt_obj(details, "error") or {}
    return ResponseStatusDetails(
        type=_opt_str(details, "type"),
        reason=_opt_str(details, "reason"),
        error_type=_opt_str(error, "type"),
        error_code=_opt_str(error, "code"),
        error_message=_opt_str(error, "message"),
    )


def _usage(usage: _Obj) -> Usage:
    input_details = _opt_obj(usage, "input_token_details") or {}
    output_details = _opt_obj(usage, "output_token_details") or {}
    return Usage(
        total_tokens=_opt_int(usage, "total_tokens") or 0,
        input_tokens=_opt_int(usage, "input_tokens") or 0,
        output_tokens=_opt_int(usage, "output_tokens") or 0,
        input_text_tokens=_opt_int(input_details, "text_tokens") or 0,
        input_audio_tokens=_opt_int(input_details, "audio_tokens") or 0,
        input_cached_tokens=_opt_int(input_details, "cached_tokens") or 0,
        output_text_tokens=_opt_int(output_details, "text_tokens") or 0,
        output_audio_tokens=_opt_int(output_details, "audio_tokens") or 0,
    )


def _session_created(obj: _Obj) -> ServerEvent:
    return SessionCreated(_event_id(obj), _nested("session", _session_info, _obj(obj, "session")))


def _session_updated(obj: _Obj) -> ServerEvent:
    return SessionUpdated(_event_id(obj), _nested("session", _session_info, _obj(obj, "session")))


def _error(obj: _Obj) -> ServerEvent:
    error = _obj(obj, "error")
    return ErrorEvent(
        event_id=_event_id(obj),
        error_type=_opt_str(error, "type"),
        code=_opt_str(error, "code"),
        # An error must reach the user even when the server left out its message.
        message=_opt_str(error, "message") or "",
        param=_opt_str(error, "param"),
        client_event_id=_opt_str(error, "event_id"),
    )


def _committed(obj: _Obj) -> ServerEvent:
    return InputAudioBufferCommitted(_event_id(obj), _str(obj, "item_id"), _opt_str(obj, "previous_item_id"))


def _cleared(obj: _Obj) -> ServerEvent:
    return InputAudioBufferCleared(_event_id(obj))


def _speech_started(obj: _Obj) -> ServerEvent:
    return SpeechStarted(_event_id(obj), _int(obj, "audio_start_ms"), _str(obj, "item_id"))


def _speech_stopped(obj: _Obj) -> ServerEvent:
    return SpeechStopped(_event_id(obj), _int(obj, "audio_end_ms"), _str(obj, "item_id"))


def _item_added(obj: _Obj) -> ServerEvent:
    return ConversationItemAdded(_event_id(obj), _item(obj), _opt_str(obj, "previous_item_id"))


def _item_done(obj: _Obj) -> ServerEvent:
    return ConversationItemDone(_event_id(obj), _item(obj), _opt_str(obj, "previous_item_id"))


def _transcription_delta(obj: _Obj) -> ServerEvent:
    return InputAudioTranscriptionDelta(
        event_id=_event_id(obj),
        item_id=_str(obj, "item_id"),
        content_index=_opt_int(obj, "content_index") or 0,
        delta=_opt_str(obj, "delta") or "",
    )


def _transcription_completed(obj: _Obj) -> ServerEvent:
    return InputAudioTranscriptionCompleted(
        event_id=_event_id(obj),
        item_id=_str(obj, "item_id"),
        content_index=_int(obj, "content_index"),
        transcript=_str(obj, "transcript"),
    )


def _transcription_failed(obj: _Obj) -> ServerEvent:
    error = _opt_obj(obj, "error") or {}
    return InputAudioTranscriptionFailed(
        event_id=_event_id(obj),
        item_id=_str(obj, "item_id"),
        content_index=_int(obj, "content_index"),
        error_type=_opt_str(error, "type"),
        code=_opt_str(error, "code"),
        message=_opt_str(error, "message"),
    )


def _item_truncated(obj: _Obj) -> ServerEvent:
    return ConversationItemTruncated(
        event_id=_event_id(obj),
        item_id=_str(obj, "item_id"),
        content_index=_int(obj, "content_index"),
        audio_end_ms=_int(obj, "audio_end_ms"),
    )


def _response_created(obj: _Obj) -> ServerEvent:
    event_id = _event_id(obj)

    def body(response: _Obj) -> ServerEvent:
        return ResponseCreated(event_id, _str(response, "id"), _opt_str(response, "status"))

    return _nested("response", body, _obj(obj, "response"))


def _response_done(obj: _Obj) -> ServerEvent:
    event_id = _event_id(obj)

    def body(response: _Obj) -> ServerEvent:
        details = _opt_obj(response, "status_details")
        usage = _opt_obj(response, "usage")
        return ResponseDone(
            event_id=event_id,
            response_id=_str(response, "id"),
            status=_opt_str(response, "status"),
            status_details=_nested("status_details", _status_details, details)
            if details is not None
            else None,
            usage=_nested("usage", _usage, usage) if usage is not None else None,
            output=tuple(_nested("output", _item_info, item) for item in _objects(response, "output")),
        )

    return _nested("response", body, _obj(obj, "response"))


def _output_item_added(obj: _Obj) -> ServerEvent:
    return ResponseOutputItemAdded(
        _event_id(obj), _str(obj, "response_id"), _int(obj, "output_index"), _item(obj)
    )


def _output_item_done(obj: _Obj) -> ServerEvent:
    return ResponseOutputItemDone(
        _event_id(obj), _str(obj, "response_id"), _int(obj, "output_index"), _item(obj)
    )


def _part_location(obj: _Obj) -> tuple[str, str, str, int, int]:
    """event_id, response_id, item_id, output_index, content_index: shared by all content events."""
    return (
        _event_id(obj),
        _str(obj, "response_id"),
        _str(obj, "item_id"),
        _int(obj, "output_index"),
        _int(obj, "content_index"),
    )


def _part(obj: _Obj) -> ContentPart:
    return _nested("part", _content_part, _obj(obj, "part"))


def _content_part_added(obj: _Obj) -> ServerEvent:
    return ResponseContentPartAdded(*_part_location(obj), _part(obj))


def _content_part_done(obj: _Obj) -> ServerEvent:
    return ResponseContentPartDone(*_part_location(obj), _part(obj))


def _audio_delta(obj: _Obj) -> ServerEvent:
    return ResponseOutputAudioDelta(*_part_location(obj), _base64(obj, "delta"))


def _audio_done(obj: _Obj) -> ServerEvent:
    return ResponseOutputAudioDone(*_part_location(obj))


def _audio_transcript_delta(obj: _Obj) -> ServerEvent:
    return ResponseOutputAudioTranscriptDelta(*_part_location(obj), _str(obj, "delta"))


def _audio_transcript_done(obj: _Obj) -> ServerEvent:
    return ResponseOutputAudioTranscriptDone(*_part_location(obj), _str(obj, "transcript"))


def _text_delta(obj: _Obj) -> ServerEvent:
    return ResponseOutputTextDelta(*_part_location(obj), _str(obj, "delta"))


def _text_done(obj: _Obj) -> ServerEvent:
    return ResponseOutputTextDone(*_part_location(obj), _str(obj, "text"))


def _arguments_delta(obj: _Obj) -> ServerEvent:
    return ResponseFunctionCallArgumentsDelta(
        event_id=_event_id(obj),
        response_id=_str(obj, "response_id"),
        item_id=_str(obj, "item_id"),
        output_index=_int(obj, "output_index"),
        call_id=_str(obj, "call_id"),
        delta=_str(obj, "delta"),
    )


def _arguments_done(obj: _Obj) -> ServerEvent:
    return ResponseFunctionCallArgumentsDone(
        event_id=_event_id(obj),
        response_id=_str(obj, "response_id"),
        item_id=_str(obj, "item_id"),
        output_index=_int(obj, "output_index"),
        call_id=_str(obj, "call_id"),
        name=_str(obj, "name"),
        arguments=_str(obj, "arguments"),
    )


def _rate_limit(limit: _Obj) -> RateLimit:
    return RateLimit(
        name=_opt_str(limit, "name"),
        limit=_opt_int(limit, "limit"),
        remaining=_opt_int(limit, "remaining"),
        reset_seconds=_opt_float(limit, "reset_seconds"),
    )


def _rate_limits(obj: _Obj) -> ServerEvent:
    _get(obj, "rate_limits")  # null is tolerated, absence is not
    limits = tuple(_nested("rate_limits", _rate_limit, limit) for limit in _objects(obj, "rate_limits"))
    return RateLimitsUpdated(_event_id(obj), limits)


def _output_buffer_started(obj: _Obj) -> ServerEvent:
    return OutputAudioBufferStarted(_event_id(obj), _str(obj, "response_id"))


def _output_buffer_stopped(obj: _Obj) -> ServerEvent:
    return OutputAudioBufferStopped(_event_id(obj), _str(obj, "response_id"))


def _output_buffer_cleared(obj: _Obj) -> ServerEvent:
    return OutputAudioBufferCleared(_event_id(obj), _str(obj, "response_id"))


_PARSERS: Final[Mapping[str, Callable[[_Obj], ServerEvent]]] = {
    SessionCreated.TYPE: _session_created,
    SessionUpdated.TYPE: _session_updated,
    ErrorEvent.TYPE: _error,
    InputAudioBufferCommitted.TYPE: _committed,
    InputAudioBufferCleared.TYPE: _cleared,
    SpeechStarted.TYPE: _speech_started,
    SpeechStopped.TYPE: _speech_stopped,
    ConversationItemAdded.TYPE: _item_added,
    ConversationItemDone.TYPE: _item_done,
    InputAudioTranscriptionDelta.TYPE: _transcription_delta,
    InputAudioTranscriptionCompleted.TYPE: _transcription_completed,
    InputAudioTranscriptionFailed.TYPE: _transcription_failed,
    ConversationItemTruncated.TYPE: _item_truncated,
    ResponseCreated.TYPE: _response_created,
    ResponseDone.TYPE: _response_done,
    ResponseOutputItemAdded.TYPE: _output_item_added,
    ResponseOutputItemDone.TYPE: _output_item_done,
    ResponseContentPartAdded.TYPE: _content_part_added,
    ResponseContentPartDone.TYPE: _content_part_done,
    ResponseOutputAudioDelta.TYPE: _audio_delta,
    ResponseOutputAudioDone.TYPE: _audio_done,
    ResponseOutputAudioTranscriptDelta.TYPE: _audio_transcript_delta,
    ResponseOutputAudioTranscriptDone.TYPE: _audio_transcript_done,
    ResponseOutputTextDelta.TYPE: _text_delta,
    ResponseOutputTextDone.TYPE: _text_done,
    ResponseFunctionCallArgumentsDelta.TYPE: _arguments_delta,
    ResponseFunctionCallArgumentsDone.TYPE: _arguments_done,
    RateLimitsUpdated.TYPE: _rate_limits,
    OutputAudioBufferStarted.TYPE: _output_buffer_started,
    OutputAudioBufferStopped.TYPE: _output_buffer_stopped,
    OutputAudioBufferCleared.TYPE: _output_buffer_cleared,
}


def _excerpt(data: object) -> str:
    if isinstance(data, str):
        return printable(data[:_EXCERPT_CHARS])
    if isinstance(data, bytes | bytearray):
        return printable(bytes(data[: _EXCERPT_CHARS * 4]).decode("utf-8", "replace")[:_EXCERPT_CHARS])
    try:
        text = json.dumps(data, default=repr, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(data)
    return printable(text[:_EXCERPT_CHARS])


def _parse(data: str | bytes | bytearray | Mapping[str, Any]) -> ServerEvent:
    if isinstance(data, str | bytes | bytearray):
        try:
            obj: object = json.loads(data)
        except (ValueError, RecursionError) as exc:  # ValueError covers bad JSON and bad UTF-8
            return MalformedEvent(f"not valid JSON: {exc}", _excerpt(data))
    elif isinstance(data, Mapping):
        obj = data
    else:
        return MalformedEvent(f"cannot parse a {type(data).__name__}", _excerpt(data))
    if not isinstance(obj, Mapping):
        return MalformedEvent(f"event is a JSON {_kind(obj)}, not an object", _excerpt(data))
    event_type = obj.get("type")
    if not isinstance(event_type, str):
        reason = "event has no 'type'" if event_type is None else "event 'type' is not a string"
        return MalformedEvent(reason, _excerpt(data))
    event_type = printable(event_type)
    parser = _PARSERS.get(event_type)
    if parser is None:
        return UnknownEvent(event_type, obj)
    try:
        return parser(obj)
    except _Bad as exc:
        return MalformedEvent(f"{event_type}: {exc}", _excerpt(data))


def parse_server_event(data: str | bytes | bytearray | Mapping[str, Any]) -> ServerEvent:
    """One server frame (JSON text, JSON bytes, or an already decoded object) as a typed event.

    Never raises: anything unusable comes back as :class:`MalformedEvent`.
    """
    try:
        return _parse(data)
    except Exception as exc:
        # A bug here must cost one event, not the connection; the reason makes the bug visible.
        return MalformedEvent(
            f"internal parser error: {type(exc).__name__}: {printable(str(exc))}", _excerpt(data)
        )
