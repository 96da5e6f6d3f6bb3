"""The OpenAI Realtime protocol (GA event names), sans I/O, for both roles.

Every event is a frozen dataclass declared once here: the app builds client events and reads server
events, the offline server reads client events and builds server events, all through
:mod:`app.core.wire`, which follows the field declarations. ``encode`` turns any event into a frame;
:func:`parse_server_event` and :func:`parse_client_event` turn a frame into one.

The parsers never raise: a receive loop must survive whatever arrives, so a type not declared here
becomes :class:`UnknownEvent` and anything unusable :class:`MalformedEvent`, whose ``error`` names the
field. Fields not declared are ignored, so the other side may add fields freely.
"""

from __future__ import annotations

import json
import re
import secrets
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal, TypeAlias

from app.core import wire
from app.core.safe_text import printable
from app.core.wire import at, event, record

PCM_RATE: Final = 24000  # the only rate the API accepts for audio/pcm, in both directions
MAX_TEXT_CHARS: Final = 100_000  # instructions, a tool's description, a transcription prompt
MAX_NAME_CHARS: Final = 256  # model, voice, call ids, language and the other short strings
MAX_ID_CHARS: Final = 64  # OpenAI documents 32: room to spare for a client that oversteps it
MAX_ITEM_CHARS: Final = 256 * 1024  # text of one item: a message, a tool output, a call's arguments
MAX_PREFIX_PADDING_MS: Final = 2000  # how far back a turn may reach before its detected onset

TurnDetectionKind: TypeAlias = Literal["server_vad", "semantic_vad"]
Eagerness: TypeAlias = Literal["low", "medium", "high", "auto"]
Modality: TypeAlias = Literal["audio", "text"]
# The API rejects other names with an error that arrives only after the session is live.
_TOOL_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EXCERPT_CHARS: Final = 200

# ---------------------------------------------------------------------------------------------------
# The session
# ---------------------------------------------------------------------------------------------------


@record
class TurnDetection:
    """Server-side turn detection; ``None`` fields are left to the server's defaults.

    One object can carry the settings of both kinds (a settings page keeps them all while the user
    switches kind); only the fields of ``kind`` are written, since the server rejects the others.
    """

    kind: TurnDetectionKind = at("type", default="server_vad")
    threshold: float | None = at(default=None, low=0.0, high=1.0)  # server_vad only
    prefix_padding_ms: int | None = at(default=None, low=0, high=MAX_PREFIX_PADDING_MS)  # server_vad only
    silence_duration_ms: int | None = at(default=None, low=0, high=10_000)  # server_vad only
    eagerness: Eagerness | None = None  # semantic_vad only
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = at(default=None, low=0, high=3_600_000)  # server_vad only

    def __post_init__(self) -> None:
        wire.check(self)  # settings build these in code: the same bounds as a server reading them

    def omitted(self) -> frozenset[str]:
        if self.kind == "semantic_vad":
            return frozenset({"threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms"})
        return frozenset({"eagerness"})


def _empty_object_schema() -> Mapping[str, Any]:
    return {"type": "object", "properties": {}}


@record
class ToolSpec:
    """A function tool the model may call; ``parameters`` is a JSON schema."""

    name: str = at(max_chars=64)
    description: str = at(default="", max_chars=MAX_TEXT_CHARS)
    # Excluded from the hash so a spec stays hashable although a schema is a dict.
    parameters: Mapping[str, Any] = at(default=_empty_object_schema(), hash=False)
    type: Literal["function"] = "function"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _TOOL_NAME.fullmatch(self.name):
            problem = f"must be 1 to 64 letters, digits, '_' or '-', not {self.name!r}"
            raise wire.WireError("name", problem, "value")
        if not isinstance(self.parameters, Mapping):
            raise ValueError(f"parameters of tool {self.name!r} must be a JSON schema object")


@record
class AudioFormat:
    type: str = at(default="audio/pcm", max_chars=MAX_NAME_CHARS)
    rate: int | None = PCM_RATE


@record
class Transcription:
    model: str | None = at(default=None, max_chars=MAX_NAME_CHARS)
    language: str | None = at(default=None, max_chars=MAX_NAME_CHARS)
    prompt: str | None = at(default=None, max_chars=MAX_TEXT_CHARS)


@record
class NoiseReduction:
    type: Literal["near_field", "far_field"] | None = None


@record
class CustomVoice:
    id: str = at(max_chars=MAX_NAME_CHARS)


@record
class Session:
    """A realtime session, as ``session.update`` asks for it and the server reports it.

    ``model`` is usually chosen in the connection URL; set it only in the first update, since the
    server does not let a live session change model. ``transcription=None`` leaves input
    transcription off, ``turn_detection=None`` turns server turn detection off (the client then
    commits the buffer and asks for responses itself). In an update only the fields given count
    (:func:`app.core.wire.given`).
    """

    instructions: str | None = at(default=None, max_chars=MAX_TEXT_CHARS)
    model: str | None = at(default=None, max_chars=MAX_NAME_CHARS)
    voice: str | CustomVoice | None = at("audio", "output", "voice", default=None, max_chars=MAX_NAME_CHARS)
    transcription: Transcription | None = at("audio", "input", "transcription", default=None)
    turn_detection: TurnDetection | None = at(
        "audio", "input", "turn_detection", default=TurnDetection(), keep_null=True
    )
    tools: tuple[ToolSpec, ...] = at(default=(), max_items=128, keep_empty=True)
    output_modalities: tuple[Modality, ...] = at(default=("audio",), max_items=2)
    type: Literal["realtime"] = "realtime"
    id: str | None = None
    object: str | None = None
    tool_choice: str | Mapping[str, Any] | None = "auto"
    max_output_tokens: int | Literal["inf"] | None = at(default=None, low=1, high=4096)
    input_format: AudioFormat = at("audio", "input", "format", default=AudioFormat())
    noise_reduction: NoiseReduction | None = at("audio", "input", "noise_reduction", default=None)
    output_format: AudioFormat = at("audio", "output", "format", default=AudioFormat())
    speed: float | None = at("audio", "output", "speed", default=None, low=0.25, high=1.5)
    truncation: str | Mapping[str, Any] | None = None
    tracing: str | Mapping[str, Any] | None = None
    prompt: Mapping[str, Any] | None = None
    include: tuple[str, ...] | None = None
    reasoning: Mapping[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    raw: Mapping[str, Any] = at(default={}, whole=True, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tools", tuple(self.tools))  # a list would be mutable behind our back
        names = [tool.name for tool in self.tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique, got {names}")

    @property
    def voice_name(self) -> str | None:
        """A built-in voice's name, or a custom voice's id."""
        return self.voice.id if isinstance(self.voice, CustomVoice) else self.voice

    @property
    def transcription_model(self) -> str | None:
        return None if self.transcription is None else self.transcription.model

    @property
    def tool_names(self) -> tuple[str, ...]:
        return tuple(tool.name for tool in self.tools)


# ---------------------------------------------------------------------------------------------------
# Conversation items and responses
# ---------------------------------------------------------------------------------------------------


@record
class ContentPart:
    """One content part of a message; audio bytes are not kept (they arrive as deltas)."""

    type: str | None = at(default=None, max_chars=MAX_NAME_CHARS)
    text: str | None = at(default=None, max_chars=MAX_ITEM_CHARS)
    transcript: str | None = None


@record
class ItemInfo:
    """A conversation item: a message, a function call, its output, or a newer kind.

    ``id`` is None only in an item a client creates and leaves the server to name.
    """

    id: str | None = at(default=None, max_chars=MAX_ID_CHARS)
    type: str = at(default="message", max_chars=MAX_NAME_CHARS)
    role: str | None = None
    status: str | None = None
    content: tuple[ContentPart, ...] = at(default=(), max_items=64, keep_empty=True)
    call_id: str | None = at(default=None, max_chars=MAX_NAME_CHARS)  # function_call and its output
    name: str | None = at(default=None, max_chars=64)  # function_call
    arguments: str | None = at(default=None, max_chars=MAX_ITEM_CHARS)  # function_call
    output: str | None = at(default=None, max_chars=MAX_ITEM_CHARS)  # function_call_output
    object: str | None = at(default=None, compare=False)

    def omitted(self) -> frozenset[str]:
        # A message has content, if only []; the other kinds have none.
        return frozenset() if self.type == "message" or self.content else frozenset({"content"})

    @property
    def text(self) -> str:
        """The message's words: text parts as written, audio parts by their transcript."""
        return "".join(part.text or part.transcript or "" for part in self.content)


def _named(item: ItemInfo, where: str) -> None:
    """A server names every item it reports; only a client may leave the id to the server."""
    if item.id is None:
        raise wire.WireError(f"{where}.id", "is required", "missing")


@record
class ResponseStatusDetails:
    type: str | None
    reason: str | None = None  # e.g. turn_detected, client_cancelled, max_output_tokens, content_filter
    error_type: str | None = at("error", "type", default=None)
    error_code: str | None = at("error", "code", default=None)
    error_message: str | None = at("error", "message", default=None)


@record
class Usage:
    total_tokens: int = at(absent=0, default=0)
    input_tokens: int = at(absent=0, default=0)
    output_tokens: int = at(absent=0, default=0)
    input_text_tokens: int = at("input_token_details", "text_tokens", absent=0, default=0)
    input_audio_tokens: int = at("input_token_details", "audio_tokens", absent=0, default=0)
    input_cached_tokens: int = at("input_token_details", "cached_tokens", absent=0, default=0)
    output_text_tokens: int = at("output_token_details", "text_tokens", absent=0, default=0)
    output_audio_tokens: int = at("output_token_details", "audio_tokens", absent=0, default=0)


@record
class RateLimit:
    name: str | None
    limit: int | None
    remaining: int | None
    reset_seconds: float | None


# ---------------------------------------------------------------------------------------------------
# Client events
# ---------------------------------------------------------------------------------------------------


@record
class _ClientEvent:
    TYPE: ClassVar[str]
    event_id: str | None = at(default=None, max_chars=MAX_NAME_CHARS, kw_only=True)


@event("session.update")
class SessionUpdate(_ClientEvent):
    session: Session


@event("input_audio_buffer.append")
class InputAudioBufferAppend(_ClientEvent):
    """Mono little-endian PCM16 at 24 kHz."""

    audio: bytes = at(shown=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "audio", bytes(self.audio))  # a caller's buffer may change later
        if len(self.audio) % 2:
            # Half a sample shifts every later sample by one byte, which sounds like loud noise.
            problem = f"must be a whole number of 16-bit samples, got {len(self.audio)} bytes"
            raise wire.WireError("audio", problem, "value", "invalid_audio_length")


def joined_appends(first: InputAudioBufferAppend, second: InputAudioBufferAppend) -> InputAudioBufferAppend:
    """One append carrying both in order (the first's event id, if any)."""
    return InputAudioBufferAppend(first.audio + second.audio, event_id=first.event_id)


@event("input_audio_buffer.commit")
class InputAudioBufferCommit(_ClientEvent):
    pass


@event("input_audio_buffer.clear")
class InputAudioBufferClear(_ClientEvent):
    pass


@event("conversation.item.create")
class ConversationItemCreate(_ClientEvent):
    item: ItemInfo
    previous_item_id: str | None = at(default=None, max_chars=MAX_ID_CHARS)

    @staticmethod
    def message(role: Literal["user", "assistant", "system"], text: str) -> ConversationItemCreate:
        """A text message; an assistant's replays history into a new session after a reconnect."""
        part = ContentPart("output_text" if role == "assistant" else "input_text", text)
        return ConversationItemCreate(ItemInfo(type="message", role=role, content=(part,)))

    @staticmethod
    def function_call(call_id: str, name: str, arguments: str) -> ConversationItemCreate:
        """A past function call, for replay; ``arguments`` is the JSON text the model produced."""
        return ConversationItemCreate(
            ItemInfo(type="function_call", call_id=call_id, name=name, arguments=arguments)
        )

    @staticmethod
    def function_call_output(call_id: str, output: str) -> ConversationItemCreate:
        return ConversationItemCreate(ItemInfo(type="function_call_output", call_id=call_id, output=output))


@event("conversation.item.truncate")
class ConversationItemTruncate(_ClientEvent):
    """The user heard only ``audio_end_ms`` of the assistant's audio."""

    item_id: str = at(max_chars=MAX_ID_CHARS)
    content_index: int = at(low=0, high=0)  # an audio item has one content part
    audio_end_ms: int = at(low=0, high=3_600_000)

    def __post_init__(self) -> None:
        for name in ("content_index", "audio_end_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if value < 0:
                raise ValueError(f"{name} must be >= 0, not {value}")


@event("conversation.item.retrieve")
class ConversationItemRetrieve(_ClientEvent):
    item_id: str = at(max_chars=MAX_ID_CHARS)


@event("conversation.item.delete")
class ConversationItemDelete(_ClientEvent):
    item_id: str = at(max_chars=MAX_ID_CHARS)


@record
class ResponseOptions:
    """What one ``response.create`` asks for beyond the session's settings."""

    instructions: str | None = at(default=None, max_chars=MAX_TEXT_CHARS)
    output_modalities: tuple[Modality, ...] | None = at(default=None, max_items=2)
    metadata: Mapping[str, str] | None = at(default=None, max_items=16, max_chars=512)  # OpenAI's bounds
    conversation: str | None = at(default=None, max_chars=MAX_NAME_CHARS)


@event("response.create")
class ResponseCreate(_ClientEvent):
    response: ResponseOptions | None = None


@event("response.cancel")
class ResponseCancel(_ClientEvent):
    """Without ``response_id`` the server cancels whatever is in progress."""

    response_id: str | None = at(default=None, max_chars=MAX_ID_CHARS)


ClientEvent: TypeAlias = (
    SessionUpdate
    | InputAudioBufferAppend
    | InputAudioBufferCommit
    | InputAudioBufferClear
    | ConversationItemCreate
    | ConversationItemTruncate
    | ConversationItemRetrieve
    | ConversationItemDelete
    | ResponseCreate
    | ResponseCancel
)

# ---------------------------------------------------------------------------------------------------
# Server events: ``event_id`` is made when the server builds one, and only logs use it (an event that
# arrives without one is still delivered)
# ---------------------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    """Ids like OpenAI's: a prefix and a random part (``event_``, ``item_``, ``resp_``, ``call_``)."""
    return f"{prefix}_{secrets.token_hex(10)}"


@record
class _ServerEvent:
    TYPE: ClassVar[str]
    event_id: str = at(absent="", default_factory=lambda: new_id("event"), kw_only=True)


@event("session.created")
class SessionCreated(_ServerEvent):
    session: Session = at()


@event("session.updated")
class SessionUpdated(_ServerEvent):
    session: Session = at()


@event("error")
class ErrorEvent(_ServerEvent):
    """``error``; ``client_event_id`` is the ``event_id`` of the client event that caused it, if any."""

    error_type: str | None = at("error", "type")
    code: str | None = at("error", "code")
    # An error must reach the user even when the server left out its message.
    message: str = at("error", "message", absent="")
    param: str | None = at("error", "param", keep_null=True)
    client_event_id: str | None = at("error", "event_id", keep_null=True)


@event("input_audio_buffer.committed")
class InputAudioBufferCommitted(_ServerEvent):
    item_id: str = at()
    previous_item_id: str | None = at(default=None, keep_null=True)


@event("input_audio_buffer.cleared")
class InputAudioBufferCleared(_ServerEvent):
    pass


@event("input_audio_buffer.speech_started")
class SpeechStarted(_ServerEvent):
    audio_start_ms: int = at()
    item_id: str = at()


@event("input_audio_buffer.speech_stopped")
class SpeechStopped(_ServerEvent):
    audio_end_ms: int = at()
    item_id: str = at()


@event("conversation.item.added")
class ConversationItemAdded(_ServerEvent):
    item: ItemInfo = at()
    previous_item_id: str | None = at(default=None, keep_null=True)

    def __post_init__(self) -> None:
        _named(self.item, "item")


@event("conversation.item.done")
class ConversationItemDone(_ServerEvent):
    item: ItemInfo = at()
    previous_item_id: str | None = at(default=None, keep_null=True)

    def __post_init__(self) -> None:
        _named(self.item, "item")


@event("conversation.item.retrieved")
class ConversationItemRetrieved(_ServerEvent):
    item: ItemInfo = at()


@event("conversation.item.deleted")
class ConversationItemDeleted(_ServerEvent):
    item_id: str = at()


@event("conversation.item.input_audio_transcription.delta")
class InputAudioTranscriptionDelta(_ServerEvent):
    item_id: str = at()
    content_index: int = at(absent=0)
    delta: str = at(absent="")


@event("conversation.item.input_audio_transcription.completed")
class InputAudioTranscriptionCompleted(_ServerEvent):
    item_id: str = at()
    content_index: int = at()
    transcript: str = at()
    usage: Mapping[str, Any] | None = at(default=None, compare=False)


@event("conversation.item.input_audio_transcription.failed")
class InputAudioTranscriptionFailed(_ServerEvent):
    item_id: str = at()
    content_index: int = at()
    error_type: str | None = at("error", "type", default=None)
    code: str | None = at("error", "code", default=None)
    message: str | None = at("error", "message", default=None)


@event("conversation.item.truncated")
class ConversationItemTruncated(_ServerEvent):
    item_id: str = at()
    content_index: int = at()
    audio_end_ms: int = at()


@record
class _ResponseEvent(_ServerEvent):
    """``response.created`` and ``response.done``: the response object with what the app reads flat."""

    response_id: str = at("response", "id")
    status: str | None = at("response", "status", default=None)
    status_details: ResponseStatusDetails | None = at("response", "status_details", default=None)
    usage: Usage | None = at("response", "usage", default=None, keep_null=True)
    output: tuple[ItemInfo, ...] = at("response", "output", default=(), keep_empty=True)
    # What the app does not read, and so does not compare: the server role writes it.
    object: str = at("response", "object", default="realtime.response", compare=False)
    output_modalities: tuple[Modality, ...] = at(
        "response", "output_modalities", default=("audio",), compare=False
    )
    voice: str | CustomVoice | None = at("response", "audio", "output", "voice", default=None, compare=False)
    metadata: Mapping[str, str] | None = at(
        "response", "metadata", default=None, keep_null=True, compare=False
    )
    conversation_id: str | None = at("response", "conversation_id", default=None, compare=False)

    def __post_init__(self) -> None:
        for index, item in enumerate(self.output):
            _named(item, f"response.output[{index}]")


@event("response.created")
class ResponseCreated(_ResponseEvent):
    pass


@event("response.done")
class ResponseDone(_ResponseEvent):
    """``status`` is completed, cancelled, failed or incomplete.

    ``status`` stays a plain string and may be None: a status value this client does not know must
    still end the response, or the client would wait for it forever.
    """


@event("response.output_item.added")
class ResponseOutputItemAdded(_ServerEvent):
    response_id: str = at()
    output_index: int = at()
    item: ItemInfo = at()

    def __post_init__(self) -> None:
        _named(self.item, "item")


@event("response.output_item.done")
class ResponseOutputItemDone(_ServerEvent):
    response_id: str = at()
    output_index: int = at()
    item: ItemInfo = at()

    def __post_init__(self) -> None:
        _named(self.item, "item")


@record
class _PartEvent(_ServerEvent):
    """Where a content event belongs: the fields every ``response.<part>`` event shares."""

    response_id: str = at()
    item_id: str = at()
    output_index: int = at()
    content_index: int = at()


@event("response.content_part.added")
class ResponseContentPartAdded(_PartEvent):
    part: ContentPart = at()


@event("response.content_part.done")
class ResponseContentPartDone(_PartEvent):
    part: ContentPart = at()


@event("response.output_audio.delta")
class ResponseOutputAudioDelta(_PartEvent):
    audio: bytes = at("delta", shown=False)  # PCM16 at 24 kHz, decoded


@event("response.output_audio.done")
class ResponseOutputAudioDone(_PartEvent):
    pass


@event("response.output_audio_transcript.delta")
class ResponseOutputAudioTranscriptDelta(_PartEvent):
    delta: str = at()


@event("response.output_audio_transcript.done")
class ResponseOutputAudioTranscriptDone(_PartEvent):
    transcript: str = at()


@event("response.output_text.delta")
class ResponseOutputTextDelta(_PartEvent):
    delta: str = at()


@event("response.output_text.done")
class ResponseOutputTextDone(_PartEvent):
    text: str = at()


@event("response.function_call_arguments.delta")
class ResponseFunctionCallArgumentsDelta(_ServerEvent):
    response_id: str = at()
    item_id: str = at()
    output_index: int = at()
    call_id: str = at()
    delta: str = at()


@event("response.function_call_arguments.done")
class ResponseFunctionCallArgumentsDone(_ServerEvent):
    response_id: str = at()
    item_id: str = at()
    output_index: int = at()
    call_id: str = at()
    name: str = at()
    arguments: str = at()  # JSON text as the model wrote it; the caller decides how to treat bad JSON


@event("rate_limits.updated")
class RateLimitsUpdated(_ServerEvent):
    rate_limits: tuple[RateLimit, ...] = at(keep_empty=True)  # null is tolerated, absence is not


@event("output_audio_buffer.started")
class OutputAudioBufferStarted(_ServerEvent):
    response_id: str = at()


@event("output_audio_buffer.stopped")
class OutputAudioBufferStopped(_ServerEvent):
    response_id: str = at()


@event("output_audio_buffer.cleared")
class OutputAudioBufferCleared(_ServerEvent):
    response_id: str = at()


@record
class UnknownEvent:
    """A well-formed event of a type not declared here: the one type for every event left unread."""

    type: str
    raw: Mapping[str, Any] = at(default={}, compare=False)


@record
class MalformedEvent:
    """A frame that could not be used: why, the field at fault if one was, and the start of it."""

    reason: str
    raw_excerpt: str
    error: wire.WireError | None = at(default=None, compare=False)


KnownServerEvent: TypeAlias = (
    SessionCreated
    | SessionUpdated
    | ErrorEvent
    | InputAudioBufferCommitted
    | InputAudioBufferCleared
    | SpeechStarted
    | SpeechStopped
    | ConversationItemAdded
    | ConversationItemDone
    | ConversationItemRetrieved
    | ConversationItemDeleted
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
)
# What a client receives: an event of a declared type, one of a type not declared, or junk.
ServerEvent: TypeAlias = KnownServerEvent | UnknownEvent | MalformedEvent

CLIENT_EVENTS: Final[Mapping[str, type[ClientEvent]]] = {
    cls.TYPE: cls for cls in typing.get_args(ClientEvent)
}
SERVER_EVENTS: Final[Mapping[str, type[KnownServerEvent]]] = {
    cls.TYPE: cls for cls in typing.get_args(KnownServerEvent)
}


def encode(event: ClientEvent | KnownServerEvent | Mapping[str, Any]) -> str:
    """Compact JSON for one event; NaN and infinities raise ``ValueError`` rather than going out."""
    body = event if isinstance(event, Mapping) else wire.write(event)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


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


def decode_event(data: object) -> Mapping[str, Any] | MalformedEvent:
    """A frame as a JSON object with a string ``type``, or why it is not one."""
    obj: object = data
    if isinstance(data, str | bytes | bytearray):
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError) as exc:  # ValueError covers bad JSON and bad UTF-8
            return MalformedEvent(f"not valid JSON: {exc}", _excerpt(data))
    elif not isinstance(data, Mapping):
        return MalformedEvent(f"cannot parse a {type(data).__name__}", _excerpt(data))
    if not isinstance(obj, Mapping):
        return MalformedEvent(f"event is a JSON {wire.kind(obj)}, not an object", _excerpt(data))
    if not isinstance(obj.get("type"), str):
        reason = "event has no 'type'" if obj.get("type") is None else "event 'type' is not a string"
        return MalformedEvent(reason, _excerpt(data))
    return obj


def _parse(data: object, types: Mapping[str, type[Any]]) -> Any:
    obj = decode_event(data)
    if isinstance(obj, MalformedEvent):
        return obj
    event_type = printable(obj["type"])
    cls = types.get(event_type)
    if cls is None:
        return UnknownEvent(event_type, obj)
    try:
        return wire.read(cls, obj)
    except wire.WireError as exc:
        return MalformedEvent(f"{event_type}: {exc}", _excerpt(data), exc)
    except Exception as exc:  # a bug here must cost one event, not the connection
        reason = f"internal parser error: {type(exc).__name__}: {printable(str(exc))}"
        return MalformedEvent(reason, _excerpt(data))


def parse_server_event(data: object) -> ServerEvent:
    """One server frame (JSON text, JSON bytes, or a decoded object) as a typed event; never raises."""
    event: ServerEvent = _parse(data, SERVER_EVENTS)
    return event


def parse_client_event(data: object) -> ClientEvent | UnknownEvent | MalformedEvent:
    """One client frame as a typed event, for the server role; never raises."""
    event: ClientEvent | UnknownEvent | MalformedEvent = _parse(data, CLIENT_EVENTS)
    return event
