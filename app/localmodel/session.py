"""One client's session on the embedded server: protocol handling and state, no I/O.

``handle`` takes a raw client frame and returns an :class:`Output`: server events to send now and
commands for the server's workers (speech recognition, the reply pipeline). Slow work never runs
here; the server reports its results back (``user_transcribed``, ``response_finished``), so the
protocol rules are tested without sockets, threads or models.

Bad input gets an ``error`` event (``invalid_request_error`` with a message that says what is wrong
and ``param``, the path of the field) and the session carries on as it was: a frame that is not
JSON (``NaN`` and ``Infinity`` included) or is nested deeper than :data:`MAX_DEPTH`, an unknown
event type, a field of the wrong type, a number outside its :data:`BOUNDS`, a text or a list over
its limit, audio that is not base64 or not whole samples. A ``session.update`` is checked whole
before any of it applies.

What a session keeps is bounded, so a long helpdesk call runs in the same memory as a short one:
the newest :data:`MAX_ITEMS` conversation items holding at most :data:`MAX_CONVERSATION_CHARS` of
text (older items are forgotten, as OpenAI's ``truncation: auto`` drops them from the model's
context; the brain keeps its own short dialog state), and at most :data:`MAX_TURN_S` of audio in a
user turn: a manual-commit buffer drops its oldest audio, and a spoken turn that long is ended and
answered (speech that goes on opens the next turn).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from app.audio.bargein import FRAME_MS, VAD_RATE, DetectorSettings, SpeechDetector
from app.audio.resample import StreamResampler, float_to_int16, pcm16_to_float
from app.core.heard_text import cut_transcript
from app.localmodel import events as ev

RATE = 24000
SPECULATE_AFTER_MS = 150  # a pause this long lets the server start on the reply early
_EAGERNESS_SILENCE_MS = {"low": 800, "medium": 500, "auto": 500, "high": 300}

# -- limits ----------------------------------------------------------------------------------
# A whole turn of Whisper decoding stays a few seconds of CPU, and one session at most ~6 MB of audio.
MAX_TURN_S = 120
MAX_DEPTH = 64  # JSON nesting; real events, tool schemas included, stay under 20 levels
MAX_ITEMS = 1000  # conversation items kept (a 70-turn call makes about 210)
MAX_ITEM_CHARS = 256 * 1024  # text of one item: a message, a tool output, a call's arguments
MAX_CONVERSATION_CHARS = 2 * 2**20  # text kept over all items
MAX_INSTRUCTIONS_CHARS = 100_000  # instructions, a tool's description, a transcription prompt
MAX_NAME_CHARS = 256  # model, voice, call ids, language and the other short strings
MAX_ITEM_ID_CHARS = 64  # OpenAI documents 32: room to spare for a client that oversteps it
MAX_TOOLS = 128
MAX_CONTENT_PARTS = 64
MAX_METADATA_KEYS = 16  # a response's metadata, with OpenAI's bounds
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class Bound:
    low: float
    high: float
    integer: bool = True

    def describe(self) -> str:
        if self.low == self.high:
            return f"{self.low:g}"
        if self.integer:
            return f"a whole number from {self.low:.0f} to {self.high:.0f}"
        return f"a number from {self.low:g} to {self.high:g}"


# Every number a client may send, by field name. The ones marked "not used" are accepted so that
# clients written for OpenAI work unchanged, and checked so that nonsense never sits in a session.
BOUNDS: dict[str, Bound] = {
    "threshold": Bound(0.0, 1.0, integer=False),  # the voice detector's aggressiveness follows it
    "prefix_padding_ms": Bound(0, 2000),  # the session keeps 2 s of recent audio for it
    "silence_duration_ms": Bound(0, 10_000),
    "idle_timeout_ms": Bound(0, 3_600_000),  # not used
    "speed": Bound(0.25, 1.5, integer=False),  # OpenAI's range; not used, the voice speaks at 1.0
    "strength": Bound(0.0, 10.0, integer=False),  # noise reduction; not used
    "max_output_tokens": Bound(1, 4096),  # OpenAI's range; not used
    "content_index": Bound(0, 0),  # an audio item has one content part
    "audio_end_ms": Bound(0, 3_600_000),
}
_PREFIX_KEEP_BYTES = int(BOUNDS["prefix_padding_ms"].high) * RATE * 2 // 1000
# A new detector (session start, a clear or commit, a new turn_detection, a turn cut at MAX_TURN_S)
# judges nothing in its warm-up and learns the room's noise floor over one window after it, so an
# onset it finds that soon may come late: speech that began right away would lose its first words to
# the prefix padding. Its first turn then takes all the audio since it started (kept, see above).
_SETTLE_MS = (DetectorSettings().warmup_frames + DetectorSettings().floor_window_frames) * FRAME_MS
assert _SETTLE_MS * RATE * 2 // 1000 <= _PREFIX_KEEP_BYTES

# Session fields the embedded server accepts and does not act on: only their JSON type is checked.
_UNUSED_SESSION_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "tool_choice": ((str, dict), "a string or an object"),
    "truncation": ((str, dict), "a string or an object"),
    "tracing": ((str, dict), "a string or an object"),
    "prompt": ((dict,), "an object"),
    "include": ((list,), "an array"),
    "reasoning": ((dict,), "an object"),
    "parallel_tool_calls": ((bool,), "true or false"),
}


# -- commands for the server's workers -------------------------------------------------------


@dataclass(frozen=True)
class BeginUtterance:
    item_id: str


@dataclass(frozen=True)
class UtteranceAudio:
    item_id: str
    pcm16: bytes = field(repr=False)


@dataclass(frozen=True)
class UtterancePaused:
    """The user has been quiet for a moment; the turn may be ending."""

    item_id: str


@dataclass(frozen=True)
class UtteranceResumed:
    item_id: str


@dataclass(frozen=True)
class EndUtterance:
    item_id: str
    respond: bool  # start a response once the transcript is known


@dataclass(frozen=True)
class ResponseInput:
    """What a new response answers: the latest user item, and tool outputs since the last one."""

    user_item_id: str | None
    user_text: str | None  # typed text; None while an audio item's transcript is pending
    tool_outputs: tuple[tuple[str, str], ...] = ()
    user_audio_ms: float | None = None  # a spoken user item's length (for usage); None when typed


@dataclass(frozen=True)
class ResponseOptions:
    """What ``response.create`` (or the session) asks of one response."""

    modalities: ev.Modalities = ("audio",)  # ("text",): text only, no audio
    metadata: dict[str, str] | None = None  # echoed on response.created and response.done

    @property
    def text_only(self) -> bool:
        return "audio" not in self.modalities


@dataclass(frozen=True)
class StartResponse:
    response_id: str
    source: ResponseInput
    options: ResponseOptions = ResponseOptions()


@dataclass(frozen=True)
class CancelResponse:
    response_id: str
    reason: Literal["turn_detected", "client_cancelled"]


Command = (
    BeginUtterance
    | UtteranceAudio
    | UtterancePaused
    | UtteranceResumed
    | EndUtterance
    | StartResponse
    | CancelResponse
)


@dataclass
class Output:
    events: list[ev.Event] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)

    def __iadd__(self, other: Output) -> Output:
        self.events += other.events
        self.commands += other.commands
        return self


# -- session configuration -------------------------------------------------------------------


@dataclass
class TurnDetectionConfig:
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    eagerness: str | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.type == "semantic_vad":
            return {
                "type": "semantic_vad",
                "eagerness": self.eagerness or "auto",
                "create_response": self.create_response,
                "interrupt_response": self.interrupt_response,
            }
        return {
            "type": "server_vad",
            "threshold": self.threshold,
            "prefix_padding_ms": self.prefix_padding_ms,
            "silence_duration_ms": self.silence_duration_ms,
            "idle_timeout_ms": None,
            "create_response": self.create_response,
            "interrupt_response": self.interrupt_response,
        }


@dataclass
class SessionConfig:
    session_id: str
    model: str = "helpdesk-voice-embedded"
    instructions: str = ""
    voice: str = "joe"
    transcription_model: str | None = None
    turn_detection: TurnDetectionConfig | None = field(default_factory=TurnDetectionConfig)
    tools: list[dict[str, Any]] = field(default_factory=list)
    output_modalities: ev.Modalities = ("audio",)

    @property
    def tool_names(self) -> set[str]:
        return {str(t.get("name")) for t in self.tools}

    def as_dict(self) -> dict[str, Any]:
        transcription = None if self.transcription_model is None else {"model": self.transcription_model}
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.session_id,
            "model": self.model,
            "output_modalities": list(self.output_modalities),
            "instructions": self.instructions,
            "tools": self.tools,
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "tracing": None,
            "prompt": None,
            "truncation": "auto",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": RATE},
                    "transcription": transcription,
                    "noise_reduction": None,
                    "turn_detection": None if self.turn_detection is None else self.turn_detection.as_dict(),
                },
                "output": {"format": {"type": "audio/pcm", "rate": RATE}, "voice": self.voice, "speed": 1.0},
            },
            "include": None,
        }


class ClientError(Exception):
    """A client event the session refuses; becomes an ``error`` event."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


# -- reading client events -------------------------------------------------------------------


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _shorten(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Fields:
    """One JSON object of a client event, read a field at a time.

    Each reader returns None for a missing or null field, and raises :class:`ClientError` naming the
    field (``param``) when the value has the wrong type or is out of bounds.
    """

    def __init__(self, value: object, path: str) -> None:
        if not isinstance(value, dict):
            raise ClientError(f"'{path}' must be an object, not {_json_type(value)}.", "invalid_type", path)
        self.values: dict[str, Any] = value
        self.path = path

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def param(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def typed(self, name: str, kinds: tuple[type, ...], what: str, required: bool = False) -> Any:
        value = self.values.get(name)
        param = self.param(name)
        if value is None:
            if required:
                raise ClientError(f"'{param}' is required.", "missing_required_parameter", param)
            return None
        # A JSON boolean is an int to Python, never to a client.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ClientError(f"'{param}' must be {what}, not {_json_type(value)}.", "invalid_type", param)
        return value

    def object(self, name: str, required: bool = False) -> _Fields | None:
        value = self.typed(name, (dict,), "an object", required)
        return None if value is None else _Fields(value, self.param(name))

    def string(self, name: str, max_chars: int | None = MAX_NAME_CHARS, required: bool = False) -> str | None:
        value: str | None = self.typed(name, (str,), "a string", required)
        if value is not None and max_chars is not None and len(value) > max_chars:
            raise ClientError(
                f"'{self.param(name)}' is {len(value)} characters long; the limit is {max_chars}.",
                param=self.param(name),
            )
        return value

    def boolean(self, name: str) -> bool | None:
        value: bool | None = self.typed(name, (bool,), "true or false")
        return value

    def number(self, name: str, required: bool = False) -> float | None:
        bound = BOUNDS[name]
        value = self.typed(name, (int, float), bound.describe(), required)
        if value is None:
            return None
        if (
            not math.isfinite(value)
            or not bound.low <= value <= bound.high
            or (bound.integer and value != int(value))
        ):
            raise ClientError(
                f"'{self.param(name)}' must be {bound.describe()}, not {value!r}.", param=self.param(name)
            )
        return int(value) if bound.integer else float(value)

    def choice(self, name: str, choices: tuple[str, ...], required: bool = False) -> str | None:
        value = self.string(name, None, required)
        if value is not None and value not in choices:
            raise ClientError(
                f"'{self.param(name)}' must be one of {', '.join(choices)}, not {_shorten(value)!r}.",
                param=self.param(name),
            )
        return value

    def array(self, name: str, max_items: int) -> list[Any] | None:
        value: list[Any] | None = self.typed(name, (list,), "an array")
        if value is not None and len(value) > max_items:
            raise ClientError(
                f"'{self.param(name)}' has {len(value)} entries; the limit is {max_items}.",
                param=self.param(name),
            )
        return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _deeper_than(value: object, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


# -- the session -----------------------------------------------------------------------------


@dataclass
class _Item:
    """What the session keeps of a conversation item: only what later events need."""

    role: str  # user, assistant, system, function_call or function_call_output
    text: str | None = None  # a user message: typed text, or its transcript (None while pending)
    audio_ms: float | None = None  # an assistant audio item's length (sent so far while it streams)
    said: str | None = None  # an assistant audio item's words so far, while it streams
    truncated: bool = False  # cut by conversation.item.truncate: its audio_ms and words stay cut
    output: tuple[str, str] | None = None  # a tool output: (call_id, output)
    wire: dict[str, Any] | None = field(default=None, repr=False)  # the item as retrieve returns it
    heard_ms: float | None = None  # a user audio item's length, for usage
    answered: bool = False  # a user item a response has answered

    @property
    def chars(self) -> int:
        return len(self.text or "") + (len(self.output[1]) if self.output is not None else 0)


class Session:
    def __init__(self, session_id: str | None = None) -> None:
        self.config = SessionConfig(session_id or ev.new_id("sess"))
        self._buffer = bytearray()
        self._audio_ms = 0.0  # audio time of everything appended so far
        self._detector: SpeechDetector | None = None
        self._vad_resampler = StreamResampler(RATE, VAD_RATE)
        self._recent = deque[bytes]()  # the last two seconds, for prefix padding
        self._recent_bytes = 0
        self._utterance: str | None = None  # user item being spoken
        self._utterance_start_ms = 0.0  # where the turn's audio begins (its prefix padding included)
        self._detector_since_ms = 0.0  # when the detector started: turns never reach back past it
        self._detector_fresh = True  # it has found no turn yet (see _SETTLE_MS)
        self._paused = False
        self._items: dict[str, _Item] = {}  # oldest first
        self._item_chars = 0
        self.forgotten_items = 0
        self._tool_outputs: list[str] = []  # function_call_output items since the last response
        self._last_user_item: str | None = None
        self._answered_user_item: str | None = None
        self.active_response: str | None = None
        self._configure_turn_detection()

    # -- entry points ------------------------------------------------------------------------
    def opened(self) -> Output:
        return Output(events=[ev.session_created(self.config.as_dict())])

    def handle(self, raw: str | bytes) -> Output:
        too_deep = f"The event is nested too deeply; the limit is {MAX_DEPTH} levels."
        try:
            event = json.loads(raw, parse_constant=_refuse_constant)
        except RecursionError:
            return self._error(too_deep, "invalid_json")
        except ValueError as exc:  # UnicodeDecodeError included
            return self._error(f"The event is not valid JSON: {exc}.", "invalid_json")
        if _deeper_than(event, MAX_DEPTH):
            return self._error(too_deep, "invalid_json")
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return self._error("An event must be a JSON object with a string 'type'.", "invalid_event")
        client_event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        handler = _HANDLERS.get(event["type"])
        if handler is None:
            return self._error(
                f"Unsupported event type: {_shorten(event['type'])!r}.",
                "unsupported_event",
                "type",
                client_event_id,
            )
        try:
            return handler(self, _Fields(event, ""))
        except ClientError as exc:
            return self._error(str(exc), exc.code, exc.param, client_event_id)
        except (KeyError, TypeError, ValueError) as exc:  # a case the checks above missed
            return self._error(
                f"Invalid {event['type']} event: {exc}.", "invalid_value", None, client_event_id
            )

    def user_transcribed(self, item_id: str, text: str, respond: bool) -> Output:
        """The recognizer's final text for a committed user audio item."""
        out = Output()
        if self.config.transcription_model is not None:
            out.events.append(ev.transcription_completed(item_id, text))
        item = self._items.get(item_id)
        if item is not None and item.role == "user" and item.text is None:
            item.text = text
            item.wire = ev.user_audio_item(item_id, text)
            self._item_chars += len(text)
            self._forget_oldest()
        if respond and self.active_response is None and text.strip():
            out += self._start_response()
        return out

    def output_item_started(self, item: dict[str, Any]) -> Output:
        """A response's item (an assistant message or a function call) joins the conversation."""
        previous = self._last_item()
        role = "assistant" if item.get("type") == "message" else str(item.get("type"))
        self._keep(str(item["id"]), _Item(role, wire=item))
        return Output(events=[ev.item_added(item, previous)])

    def output_audio_sent(self, item_id: str, audio_ms: float, said: str) -> None:
        """A response's audio item has sent ``audio_ms`` of audio so far, ``said`` its words begun."""
        kept = self._items.get(item_id)
        if kept is not None and not kept.truncated:
            kept.audio_ms = audio_ms
            kept.said = said

    def output_item_finished(self, item: dict[str, Any], audio_ms: float | None = None) -> Output:
        """A response's item is complete (or cut short); ``audio_ms`` is an audio item's length.

        An item truncated while it streamed stays as the truncate left it: its audio as heard and
        its transcript cut to the words heard (``conversation.item.done`` says so too).
        """
        item_id = str(item["id"])
        kept = self._items.get(item_id)
        if kept is not None:  # else deleted (or forgotten) while it streamed: it stays gone
            if kept.truncated:
                item = _with_transcript(item, kept.said or "")
            else:
                kept.audio_ms = audio_ms
            kept.wire = item
            kept.said = None
        keys = list(self._items)
        position = keys.index(item_id) if kept is not None else len(keys)
        previous = keys[position - 1] if position > 0 else None
        return Output(events=[ev.item_done(item, previous)])

    def response_finished(self, response_id: str, audio_items: dict[str, float] | None = None) -> None:
        """The server finished (or cancelled) a response; ``audio_items`` maps item id -> audio ms."""
        for item_id, audio_ms in (audio_items or {}).items():
            kept = self._items.get(item_id)
            if kept is not None and not kept.truncated:
                kept.audio_ms = audio_ms
        if self.active_response == response_id:
            self.active_response = None

    def transcript_of(self, item_id: str) -> str | None:
        item = self._items.get(item_id)
        return None if item is None else item.text

    @property
    def item_count(self) -> int:
        return len(self._items)

    @property
    def kept_chars(self) -> int:
        """Text the conversation's items hold (typed messages, transcripts, tool outputs)."""
        return self._item_chars

    @property
    def held_audio_bytes(self) -> int:
        """Input audio the session holds: the buffer and the prefix-padding window."""
        return len(self._buffer) + self._recent_bytes

    # -- session.update ----------------------------------------------------------------------
    def _on_session_update(self, event: _Fields) -> Output:
        session = event.object("session", required=True)
        assert session is not None
        if session.string("type") not in (None, "realtime"):
            raise ClientError("Only realtime sessions are supported.", param="session.type")
        # Checked whole, then applied: a refused update leaves the session as it was.
        config = replace(self.config)
        instructions = session.string("instructions", MAX_INSTRUCTIONS_CHARS)
        if instructions is not None:
            config.instructions = instructions
        model = session.string("model")
        if model is not None:
            config.model = model
        for name, (kinds, what) in _UNUSED_SESSION_FIELDS.items():
            session.typed(name, kinds, what)
        if session.values.get("max_output_tokens") != "inf":
            session.number("max_output_tokens")
        audio = session.object("audio")
        audio_in = audio.object("input") if audio is not None else None
        audio_out = audio.object("output") if audio is not None else None
        for part in (audio_in, audio_out):
            fmt = part.object("format") if part is not None else None
            if fmt is not None and (
                fmt.string("type") not in (None, "audio/pcm") or fmt.values.get("rate") not in (None, RATE)
            ):
                raise ClientError("Only audio/pcm at 24000 Hz is supported.", "unsupported_format", fmt.path)
        detection_changed = False
        if audio_in is not None:
            if "transcription" in audio_in:
                config.transcription_model = _transcription_model(audio_in.object("transcription"))
            noise = audio_in.object("noise_reduction")
            if noise is not None:
                noise.choice("type", ("near_field", "far_field"))
                noise.number("strength")
            if "turn_detection" in audio_in:
                config.turn_detection = _turn_detection(audio_in.object("turn_detection"))
                detection_changed = True
        if audio_out is not None:
            config.voice = _voice(audio_out) or config.voice
            audio_out.number("speed")
        if "tools" in session:
            config.tools = _tools(session)
        modalities = _modalities(session)
        if modalities is not None:
            config.output_modalities = modalities
        out = Output()
        if detection_changed and self._utterance is not None:
            # The new detector starts in silence and would never end this turn: end it now.
            out += self._speech_stopped(self._audio_ms)
        self.config = config
        if detection_changed:
            self._configure_turn_detection()
        out.events.append(ev.session_updated(config.as_dict()))
        return out

    def _configure_turn_detection(self) -> None:
        detection = self.config.turn_detection
        self._detector_since_ms = self._audio_ms
        self._detector_fresh = True
        if detection is None:
            self._detector = None
            return
        silence_ms = detection.silence_duration_ms
        if detection.type == "semantic_vad":
            silence_ms = _EAGERNESS_SILENCE_MS.get(detection.eagerness or "auto", 500)
        mode = 3 if detection.threshold >= 0.7 else 2 if detection.threshold >= 0.4 else 1
        self._detector = SpeechDetector(
            DetectorSettings(onset_frames=3, hangover_frames=max(5, silence_ms // 10), vad_mode=mode)
        )

    # -- input audio -------------------------------------------------------------------------
    def _on_input_audio_buffer_append(self, event: _Fields) -> Output:
        audio = event.string("audio", None, required=True)
        assert audio is not None
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ClientError("'audio' is not valid base64.", "invalid_audio", "audio") from exc
        if len(pcm) % 2:
            raise ClientError(
                f"Audio must be whole 16-bit samples; got {len(pcm)} bytes.", "invalid_audio_length", "audio"
            )
        out = Output()
        start_ms = self._audio_ms
        self._audio_ms += len(pcm) / 2 / RATE * 1000.0
        if self._utterance is not None:
            out.commands.append(UtteranceAudio(self._utterance, pcm))
        self._buffer += pcm
        self._trim_buffer()
        self._remember(pcm)
        if self._detector is not None:
            out += self._detect(pcm, start_ms)
            if self._utterance is not None and self._audio_ms - self._utterance_start_ms >= MAX_TURN_S * 1000:
                out += self._speech_stopped(self._audio_ms)
                # A fresh detector: speech that goes on is heard as the start of the next turn.
                self._configure_turn_detection()
        return out

    def _detect(self, pcm: bytes, start_ms: float) -> Output:
        assert self._detector is not None
        detector = self._detector
        samples = self._vad_resampler.process(pcm16_to_float(pcm))
        before = len(detector.events)
        detector.feed(float_to_int16(samples), start_ms / 1000.0)
        out = Output()
        for speech in list(detector.events)[before:]:
            if speech.kind == "speech_start":
                out += self._speech_started(speech.at * 1000.0)
            elif speech.kind == "speech_end":
                out += self._speech_stopped(speech.at * 1000.0)
        detector.events.clear()
        if self._utterance is not None:
            paused = detector.silence_frames * 10 >= SPECULATE_AFTER_MS
            if paused != self._paused:
                self._paused = paused
                out.commands.append(
                    UtterancePaused(self._utterance) if paused else UtteranceResumed(self._utterance)
                )
        return out

    def _speech_started(self, at_ms: float) -> Output:
        assert self.config.turn_detection is not None
        out = Output()
        if self.active_response is not None and self.config.turn_detection.interrupt_response:
            out.commands.append(CancelResponse(self.active_response, "turn_detected"))
        item_id = ev.new_id("item")
        # The turn's audio, and audio_start_ms with it, begins prefix_padding_ms before the onset
        # (as OpenAI's does), or where a new detector started when it found the turn that soon.
        begin_ms = max(at_ms - self.config.turn_detection.prefix_padding_ms, self._detector_since_ms)
        if self._detector_fresh and at_ms - self._detector_since_ms <= _SETTLE_MS:
            begin_ms = self._detector_since_ms
        self._detector_fresh = False
        self._utterance = item_id
        self._utterance_start_ms = begin_ms
        self._paused = False
        out.events.append(ev.speech_started(item_id, int(begin_ms)))
        out.commands.append(BeginUtterance(item_id))
        padding = self._recent_audio(begin_ms)
        if padding:
            out.commands.append(UtteranceAudio(item_id, padding))
        return out

    def _speech_stopped(self, at_ms: float) -> Output:
        assert self.config.turn_detection is not None
        item_id = self._utterance
        if item_id is None:
            return Output()
        self._utterance = None
        self._paused = False
        out = Output(events=[ev.speech_stopped(item_id, int(at_ms))])
        out += self._commit(item_id, at_ms - self._utterance_start_ms)
        out.commands.append(EndUtterance(item_id, self.config.turn_detection.create_response))
        return out

    def _on_input_audio_buffer_commit(self, event: _Fields) -> Output:
        if len(self._buffer) < RATE * 2 // 10:  # OpenAI refuses less than 100 ms as well
            raise ClientError(
                "The input audio buffer holds less than 100 ms of audio.", "input_audio_buffer_commit_empty"
            )
        item_id = self._utterance or ev.new_id("item")
        out = Output()
        heard_ms = len(self._buffer) / 2 / RATE * 1000.0
        if self._utterance is None:
            out.commands += [BeginUtterance(item_id), UtteranceAudio(item_id, bytes(self._buffer))]
        else:
            heard_ms = self._audio_ms - self._utterance_start_ms
        self._utterance = None
        out += self._commit(item_id, heard_ms)
        out.commands.append(EndUtterance(item_id, respond=False))
        # A new detector: speech that goes on, or comes right away, is the next turn, heard whole.
        self._configure_turn_detection()
        return out

    def _commit(self, item_id: str, heard_ms: float) -> Output:
        previous = self._last_item()
        item = ev.user_audio_item(item_id)
        self._keep(item_id, _Item("user", wire=item, heard_ms=max(0.0, heard_ms)))
        self._last_user_item = item_id
        self._buffer.clear()
        return Output(
            events=[
                ev.committed(item_id, previous),
                ev.item_added(item, previous),
                ev.item_done(item, previous),
            ]
        )

    def _on_input_audio_buffer_clear(self, event: _Fields) -> Output:
        self._buffer.clear()
        if self._utterance is None:  # a new detector: speech right after the clear is heard whole
            self._configure_turn_detection()
        return Output(events=[ev.cleared()])

    def _trim_buffer(self) -> None:
        # With turn detection a spoken turn's audio goes to its utterance, so the buffer only needs
        # what a manual commit between turns could take; without it, the whole turn, up to a limit.
        limit = MAX_TURN_S * RATE * 2 if self._detector is None else _PREFIX_KEEP_BYTES
        if len(self._buffer) > limit:
            del self._buffer[: len(self._buffer) - limit]

    def _remember(self, pcm: bytes) -> None:
        self._recent.append(pcm)
        self._recent_bytes += len(pcm)
        while self._recent_bytes - len(self._recent[0]) > _PREFIX_KEEP_BYTES:
            self._recent_bytes -= len(self._recent.popleft())

    def _recent_audio(self, since_ms: float) -> bytes:
        recent = b"".join(self._recent)
        start_ms = self._audio_ms - len(recent) / 2 / RATE * 1000.0
        offset = max(0, int((since_ms - start_ms) * RATE / 1000.0)) * 2
        return recent[offset:]

    # -- conversation items ------------------------------------------------------------------
    def _on_conversation_item_create(self, event: _Fields) -> Output:
        fields = event.object("item", required=True)
        assert fields is not None
        kind = fields.choice("type", ("message", "function_call", "function_call_output"), required=True)
        assert kind is not None
        item_id = fields.string("id", MAX_ITEM_ID_CHARS) or ev.new_id("item")
        if item_id in self._items:
            raise ClientError(f"The conversation already has an item {item_id!r}.", param="item.id")
        item = {**fields.values, "id": item_id, "object": "realtime.item", "status": "completed"}
        if kind == "message":
            role = fields.choice("role", ("user", "assistant", "system"), required=True)
            assert role is not None
            text = _message_text(fields)
            kept = _Item(role, text if role == "user" else None, wire=item)
        elif kind == "function_call_output":
            call_id = fields.string("call_id", required=True)
            output = fields.string("output", MAX_ITEM_CHARS, required=True)
            assert call_id is not None and output is not None
            kept = _Item(kind, output=(call_id, output), wire=item)
            self._tool_outputs.append(item_id)
        else:
            fields.string("call_id", required=True)
            fields.string("name", 64, required=True)
            fields.string("arguments", MAX_ITEM_CHARS)
            item.setdefault("arguments", "{}")
            kept = _Item(kind, wire=item)
        if kept.role == "user":
            self._last_user_item = item_id
        previous = self._last_item()
        self._keep(item_id, kept)
        return Output(events=[ev.item_added(item, previous), ev.item_done(item, previous)])

    def _on_conversation_item_truncate(self, event: _Fields) -> Output:
        """Cuts an assistant audio item to what the user heard, finished or still streaming.

        The audio past ``audio_end_ms`` is gone and so are the words the user did not hear: the
        transcript keeps the share of its words that the played share of the audio holds, cut at a
        word boundary (:func:`~app.core.heard_text.cut_transcript`). An item still streaming stops:
        its response ends as ``response.cancel`` ends it, so no more of its audio follows.
        """
        item_id = event.string("item_id", required=True)
        item = self._items.get(item_id or "")
        if item is None or item.audio_ms is None:
            raise ClientError(
                f"No assistant audio item {item_id!r} to truncate.",
                "item_truncate_invalid_item_id",
                "item_id",
            )
        content_index = int(event.number("content_index", required=True) or 0)
        end_ms = int(event.number("audio_end_ms", required=True) or 0)
        streaming = item.said is not None
        if end_ms > item.audio_ms + 1:
            so_far = "sent so far" if streaming else "audio"
            raise ClientError(
                f"audio_end_ms {end_ms} is past the item's {so_far} ({item.audio_ms:.0f} ms).",
                param="audio_end_ms",
            )
        out = Output(events=[ev.item_truncated(str(item_id), content_index, end_ms)])
        if streaming:
            item.said = cut_transcript(item.said or "", end_ms, item.audio_ms, audio_complete=False)
            if self.active_response is not None:
                out.commands.append(CancelResponse(self.active_response, "client_cancelled"))
        elif item.wire is not None:
            words, complete = _transcript(item.wire), item.wire.get("status") == "completed"
            item.wire = _with_transcript(item.wire, cut_transcript(words, end_ms, item.audio_ms, complete))
        item.audio_ms = float(min(end_ms, item.audio_ms))
        item.truncated = True
        return out

    def _on_conversation_item_retrieve(self, event: _Fields) -> Output:
        item_id = event.string("item_id", MAX_ITEM_ID_CHARS, required=True)
        item = self._items.get(item_id or "")
        if item is None or item.wire is None:
            raise ClientError(
                f"The conversation has no item {item_id!r}.", "item_retrieve_invalid_item_id", "item_id"
            )
        return Output(events=[ev.item_retrieved(item.wire)])

    def _on_conversation_item_delete(self, event: _Fields) -> Output:
        item_id = event.string("item_id", MAX_ITEM_ID_CHARS, required=True)
        assert item_id is not None
        item = self._items.pop(item_id, None)
        if item is None:
            raise ClientError(
                f"The conversation has no item {item_id!r}.", "item_delete_invalid_item_id", "item_id"
            )
        self._item_chars -= item.chars
        if item_id in self._tool_outputs:  # a tool output not yet answered: the next response ignores it
            self._tool_outputs.remove(item_id)
        if item_id == self._last_user_item:
            # The next response answers the newest user item left, unless that one was answered.
            latest = next((i for i, kept in reversed(self._items.items()) if kept.role == "user"), None)
            unanswered = latest is not None and not self._items[latest].answered
            self._last_user_item = latest if unanswered else self._answered_user_item
        return Output(events=[ev.item_deleted(item_id)])

    def _keep(self, item_id: str, item: _Item) -> None:
        self._items[item_id] = item
        self._item_chars += item.chars
        self._forget_oldest()

    def _forget_oldest(self) -> None:
        while len(self._items) > MAX_ITEMS or self._item_chars > MAX_CONVERSATION_CHARS:
            oldest = next(iter(self._items))
            forgotten = self._items.pop(oldest)
            self._item_chars -= forgotten.chars
            self.forgotten_items += 1
            if forgotten.output is not None and oldest in self._tool_outputs:
                self._tool_outputs.remove(oldest)

    def _last_item(self) -> str | None:
        return next(reversed(self._items), None)

    # -- responses ---------------------------------------------------------------------------
    def _on_response_create(self, event: _Fields) -> Output:
        # Of the overrides only these two are used; the others must sit in an object.
        response = event.object("response")
        modalities = _modalities(response) if response is not None else None
        metadata = _metadata(response) if response is not None else None
        if self.active_response is not None:
            raise ClientError(
                "The conversation already has an active response.", "conversation_already_has_active_response"
            )
        return self._start_response(ResponseOptions(modalities or self.config.output_modalities, metadata))

    def _on_response_cancel(self, event: _Fields) -> Output:
        wanted = event.string("response_id")
        if self.active_response is None or (wanted is not None and wanted != self.active_response):
            raise ClientError("There is no active response to cancel.", "response_cancel_not_active")
        return Output(commands=[CancelResponse(self.active_response, "client_cancelled")])

    def _start_response(self, options: ResponseOptions | None = None) -> Output:
        response_id = ev.new_id("resp")
        self.active_response = response_id
        user_item = self._last_user_item if self._last_user_item != self._answered_user_item else None
        self._answered_user_item = self._last_user_item
        outputs = tuple(
            output for item_id in self._tool_outputs if (output := self._items[item_id].output) is not None
        )
        self._tool_outputs = []
        kept = None if user_item is None else self._items.get(user_item)
        if kept is not None:
            kept.answered = True
        text = None if user_item is None else self.transcript_of(user_item)
        heard_ms = None if kept is None else kept.heard_ms
        source = ResponseInput(user_item, text, outputs, heard_ms)
        options = options or ResponseOptions(self.config.output_modalities)
        return Output(commands=[StartResponse(response_id, source, options)])

    def _error(
        self, message: str, code: str, param: str | None = None, client_event_id: str | None = None
    ) -> Output:
        return Output(events=[ev.error(message, code, param=param, client_event_id=client_event_id)])


_HANDLERS: dict[str, Callable[[Session, _Fields], Output]] = {
    "session.update": Session._on_session_update,
    "input_audio_buffer.append": Session._on_input_audio_buffer_append,
    "input_audio_buffer.commit": Session._on_input_audio_buffer_commit,
    "input_audio_buffer.clear": Session._on_input_audio_buffer_clear,
    "conversation.item.create": Session._on_conversation_item_create,
    "conversation.item.truncate": Session._on_conversation_item_truncate,
    "conversation.item.retrieve": Session._on_conversation_item_retrieve,
    "conversation.item.delete": Session._on_conversation_item_delete,
    "response.create": Session._on_response_create,
    "response.cancel": Session._on_response_cancel,
}


def _transcription_model(fields: _Fields | None) -> str | None:
    if fields is None:
        return None
    fields.string("language")
    fields.string("prompt", MAX_INSTRUCTIONS_CHARS)
    return fields.string("model") or "local"


def _turn_detection(fields: _Fields | None) -> TurnDetectionConfig | None:
    if fields is None:
        return None
    kind = fields.choice("type", ("server_vad", "semantic_vad"), required=True)
    config = TurnDetectionConfig(type="semantic_vad" if kind == "semantic_vad" else "server_vad")
    threshold = fields.number("threshold")
    if threshold is not None:
        config.threshold = threshold
    for name in ("prefix_padding_ms", "silence_duration_ms"):
        value = fields.number(name)
        if value is not None:
            setattr(config, name, int(value))
    fields.number("idle_timeout_ms")
    for flag in ("create_response", "interrupt_response"):
        setting = fields.boolean(flag)
        if setting is not None:
            setattr(config, flag, setting)
    config.eagerness = fields.choice("eagerness", ("low", "medium", "high", "auto"))
    return config


def _modalities(fields: _Fields) -> ev.Modalities | None:
    """``output_modalities``: ``["audio"]`` (audio and its transcript) or ``["text"]`` (text only)."""
    values = fields.array("output_modalities", 2)
    if values is None:
        return None
    param = fields.param("output_modalities")
    if not values or any(value not in ("audio", "text") for value in values):
        raise ClientError(f'\'{param}\' must be ["audio"] or ["text"].', param=param)
    return ("audio",) if "audio" in values else ("text",)


def _metadata(response: _Fields) -> dict[str, str] | None:
    """``response.metadata``: at most 16 string keys of up to 64 characters, string values of up to 512."""
    fields = response.object("metadata")
    if fields is None:
        return None
    if len(fields.values) > MAX_METADATA_KEYS:
        raise ClientError(
            f"'{fields.path}' has {len(fields.values)} keys; the limit is {MAX_METADATA_KEYS}.",
            param=fields.path,
        )
    metadata: dict[str, str] = {}
    for key, value in fields.values.items():
        param = fields.param(_shorten(key))
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise ClientError(
                f"A key of '{fields.path}' is {len(key)} characters long; "
                f"the limit is {MAX_METADATA_KEY_CHARS}.",
                param=param,
            )
        if not isinstance(value, str):
            raise ClientError(f"'{param}' must be a string, not {_json_type(value)}.", "invalid_type", param)
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise ClientError(
                f"'{param}' is {len(value)} characters long; the limit is {MAX_METADATA_VALUE_CHARS}.",
                param=param,
            )
        metadata[key] = value
    return metadata


def _voice(audio_out: _Fields) -> str | None:
    if isinstance(audio_out.values.get("voice"), dict):
        custom = audio_out.object("voice")
        assert custom is not None
        return custom.string("id", required=True)
    return audio_out.string("voice")


def _tools(session: _Fields) -> list[dict[str, Any]]:
    tools = session.array("tools", MAX_TOOLS) or []
    for index, tool in enumerate(tools):
        spec = _Fields(tool, f"session.tools[{index}]")
        spec.choice("type", ("function",))
        name = spec.string("name", None, required=True)
        if not _TOOL_NAME.fullmatch(name or ""):
            raise ClientError(
                f"'{spec.param('name')}' must be 1 to 64 letters, digits, '_' or '-'.",
                param=spec.param("name"),
            )
        spec.string("description", MAX_INSTRUCTIONS_CHARS)
        spec.object("parameters")
    return list(tools)


def _transcript(item: dict[str, Any]) -> str:
    """An assistant audio item's transcript ("" when it has none)."""
    content = item.get("content") or [{}]
    return str(content[0].get("transcript") or "")


def _with_transcript(item: dict[str, Any], transcript: str) -> dict[str, Any]:
    """A copy of an assistant audio item with its transcript replaced."""
    content = item.get("content") or [{"type": "output_audio"}]
    return {**item, "content": [{**content[0], "transcript": transcript}, *content[1:]]}


def _message_text(fields: _Fields) -> str:
    parts = fields.array("content", MAX_CONTENT_PARTS) or []
    texts = [
        _Fields(part, f"item.content[{index}]").string("text", MAX_ITEM_CHARS)
        for index, part in enumerate(parts)
    ]
    text = " ".join(t for t in texts if t).strip()
    if len(text) > MAX_ITEM_CHARS:
        raise ClientError(
            f"The message's text is {len(text)} characters long; the limit is {MAX_ITEM_CHARS}.",
            param="item.content",
        )
    return text
