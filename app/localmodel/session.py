"""One client's session on the embedded server: protocol handling and state, no I/O.

``handle`` takes a raw client frame and returns an :class:`Output`: server events to send now and
commands for the server's workers (speech recognition, the reply pipeline). Slow work never runs
here; the server reports its results back (``user_transcribed``, ``response_finished``), so the
protocol rules are tested without sockets, threads or models.

Bad input (invalid JSON, an unknown event type, audio that is not base64 or not whole samples)
gets an ``error`` event and the session carries on.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from app.audio.bargein import VAD_RATE, DetectorSettings, SpeechDetector
from app.audio.resample import StreamResampler, float_to_int16, pcm16_to_float
from app.localmodel import events as ev

RATE = 24000
MAX_BUFFER_S = 300  # a manual-commit buffer holds at most five minutes; older audio is dropped
SPECULATE_AFTER_MS = 150  # a pause this long lets the server start on the reply early
_EAGERNESS_SILENCE_MS = {"low": 800, "medium": 500, "auto": 500, "high": 300}


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


@dataclass(frozen=True)
class StartResponse:
    response_id: str
    source: ResponseInput


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
            "output_modalities": ["audio"],
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


# -- the session -----------------------------------------------------------------------------


@dataclass
class _AssistantItem:
    item_id: str
    audio_ms: float


class Session:
    def __init__(self, session_id: str | None = None) -> None:
        self.config = SessionConfig(session_id or ev.new_id("sess"))
        self._buffer = bytearray()
        self._buffer_start_ms = 0.0  # audio time of the first byte in the buffer
        self._audio_ms = 0.0  # audio time of everything appended so far
        self._detector: SpeechDetector | None = None
        self._vad_resampler = StreamResampler(RATE, VAD_RATE)
        self._recent = deque[bytes]()  # the last few hundred ms, for prefix padding
        self._recent_bytes = 0
        self._utterance: str | None = None  # user item being spoken
        self._paused = False
        self._items: list[str] = []
        self._user_text: dict[str, str | None] = {}  # user item id -> typed text (None: from audio)
        self._assistant: dict[str, _AssistantItem] = {}
        self._tool_outputs: list[tuple[str, str]] = []
        self._last_user_item: str | None = None
        self._answered_user_item: str | None = None
        self.active_response: str | None = None
        self._configure_turn_detection()

    # -- entry points ------------------------------------------------------------------------
    def opened(self) -> Output:
        return Output(events=[ev.session_created(self.config.as_dict())])

    def handle(self, raw: str | bytes) -> Output:
        try:
            event = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._error(f"The event is not valid JSON: {exc}", "invalid_json")
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return self._error("An event must be a JSON object with a string 'type'.", "invalid_event")
        client_event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        handler = getattr(self, "_on_" + event["type"].replace(".", "_"), None)
        if handler is None:
            return self._error(
                f"Unsupported event type: {event['type']!r}.", "unsupported_event", "type", client_event_id
            )
        try:
            result: Output = handler(event)
        except ClientError as exc:
            return self._error(str(exc), exc.code, exc.param, client_event_id)
        except (KeyError, TypeError, ValueError) as exc:
            return self._error(
                f"Invalid {event['type']} event: {exc}.", "invalid_value", None, client_event_id
            )
        return result

    def user_transcribed(self, item_id: str, text: str, respond: bool) -> Output:
        """The recognizer's final text for a committed user audio item."""
        out = Output()
        if self.config.transcription_model is not None:
            out.events.append(ev.transcription_completed(item_id, text))
        if item_id in self._user_text and self._user_text[item_id] is None:
            self._user_text[item_id] = text
        if respond and self.active_response is None and text.strip():
            out += self._start_response()
        return out

    def response_finished(self, response_id: str, audio_items: dict[str, float]) -> None:
        """The server finished (or cancelled) a response; ``audio_items`` maps item id -> audio ms."""
        for item_id, audio_ms in audio_items.items():
            self._assistant[item_id] = _AssistantItem(item_id, audio_ms)
            self._items.append(item_id)
        if self.active_response == response_id:
            self.active_response = None

    def transcript_of(self, item_id: str) -> str | None:
        return self._user_text.get(item_id)

    # -- session.update ----------------------------------------------------------------------
    def _on_session_update(self, event: dict[str, Any]) -> Output:
        session = event["session"]
        if not isinstance(session, dict):
            raise ClientError("'session' must be an object.", param="session")
        if session.get("type", "realtime") != "realtime":
            raise ClientError("Only realtime sessions are supported.", param="session.type")
        config = self.config
        if isinstance(session.get("instructions"), str):
            config.instructions = session["instructions"]
        if isinstance(session.get("model"), str):
            config.model = session["model"]
        audio = session.get("audio") or {}
        audio_in = audio.get("input") or {}
        audio_out = audio.get("output") or {}
        for where, part in (("input", audio_in), ("output", audio_out)):
            fmt = part.get("format")
            if fmt is not None and (fmt.get("type") != "audio/pcm" or fmt.get("rate", RATE) != RATE):
                raise ClientError(
                    "Only audio/pcm at 24000 Hz is supported.",
                    "unsupported_format",
                    f"session.audio.{where}.format",
                )
        if "transcription" in audio_in:
            transcription = audio_in["transcription"]
            config.transcription_model = (
                None if transcription is None else str(transcription.get("model") or "local")
            )
        if "turn_detection" in audio_in:
            config.turn_detection = _turn_detection(audio_in["turn_detection"])
            self._configure_turn_detection()
        voice = audio_out.get("voice")
        if isinstance(voice, str):
            config.voice = voice
        if "tools" in session:
            tools = session["tools"] or []
            if not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("name") for t in tools):
                raise ClientError(
                    "'tools' must be a list of function tools with names.", param="session.tools"
                )
            config.tools = tools
        return Output(events=[ev.session_updated(config.as_dict())])

    def _configure_turn_detection(self) -> None:
        detection = self.config.turn_detection
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
    def _on_input_audio_buffer_append(self, event: dict[str, Any]) -> Output:
        audio = event["audio"]
        if not isinstance(audio, str):
            raise ClientError("'audio' must be a base64 string.", "invalid_audio", "audio")
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
        self._utterance = item_id
        self._paused = False
        out.events.append(ev.speech_started(item_id, int(at_ms)))
        out.commands.append(BeginUtterance(item_id))
        prefix_ms = self.config.turn_detection.prefix_padding_ms
        padding = self._recent_audio(at_ms - prefix_ms)
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
        out += self._commit(item_id)
        out.commands.append(EndUtterance(item_id, self.config.turn_detection.create_response))
        return out

    def _on_input_audio_buffer_commit(self, event: dict[str, Any]) -> Output:
        if len(self._buffer) < RATE * 2 // 10:  # OpenAI refuses less than 100 ms as well
            raise ClientError(
                "The input audio buffer holds less than 100 ms of audio.", "input_audio_buffer_commit_empty"
            )
        item_id = self._utterance or ev.new_id("item")
        out = Output()
        if self._utterance is None:
            out.commands += [BeginUtterance(item_id), UtteranceAudio(item_id, bytes(self._buffer))]
        self._utterance = None
        out += self._commit(item_id)
        out.commands.append(EndUtterance(item_id, respond=False))
        return out

    def _commit(self, item_id: str) -> Output:
        previous = self._items[-1] if self._items else None
        self._items.append(item_id)
        self._user_text[item_id] = None
        self._last_user_item = item_id
        self._buffer.clear()
        self._buffer_start_ms = self._audio_ms
        item = ev.user_audio_item(item_id)
        return Output(
            events=[
                ev.committed(item_id, previous),
                ev.item_added(item, previous),
                ev.item_done(item, previous),
            ]
        )

    def _on_input_audio_buffer_clear(self, event: dict[str, Any]) -> Output:
        self._buffer.clear()
        self._buffer_start_ms = self._audio_ms
        return Output(events=[ev.cleared()])

    def _trim_buffer(self) -> None:
        limit = MAX_BUFFER_S * RATE * 2
        if len(self._buffer) > limit:
            drop = len(self._buffer) - limit
            del self._buffer[:drop]
            self._buffer_start_ms += drop / 2 / RATE * 1000.0

    def _remember(self, pcm: bytes) -> None:
        self._recent.append(pcm)
        self._recent_bytes += len(pcm)
        keep = RATE * 2  # one second covers any prefix padding
        while self._recent_bytes - len(self._recent[0]) > keep:
            self._recent_bytes -= len(self._recent.popleft())

    def _recent_audio(self, since_ms: float) -> bytes:
        recent = b"".join(self._recent)
        start_ms = self._audio_ms - len(recent) / 2 / RATE * 1000.0
        offset = max(0, int((since_ms - start_ms) * RATE / 1000.0)) * 2
        return recent[offset:]

    # -- conversation items ------------------------------------------------------------------
    def _on_conversation_item_create(self, event: dict[str, Any]) -> Output:
        item = dict(event["item"])
        kind = item.get("type")
        item.setdefault("id", ev.new_id("item"))
        item_id = str(item["id"])
        item.update(object="realtime.item", status="completed")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system"):
                raise ClientError(f"Unsupported message role {role!r}.", param="item.role")
            text = " ".join(
                str(part.get("text", "")) for part in item.get("content", []) if isinstance(part, dict)
            ).strip()
            if role == "user":
                self._user_text[item_id] = text
                self._last_user_item = item_id
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str) or not isinstance(item.get("output"), str):
                raise ClientError(
                    "A function_call_output needs 'call_id' and 'output' strings.", param="item"
                )
            self._tool_outputs.append((item["call_id"], item["output"]))
        elif kind == "function_call":
            if not isinstance(item.get("call_id"), str) or not isinstance(item.get("name"), str):
                raise ClientError("A function_call needs 'call_id' and 'name' strings.", param="item")
            item.setdefault("arguments", "{}")
        else:
            raise ClientError(f"Unsupported item type {kind!r}.", param="item.type")
        previous = self._items[-1] if self._items else None
        self._items.append(item_id)
        return Output(events=[ev.item_added(item, previous), ev.item_done(item, previous)])

    def _on_conversation_item_truncate(self, event: dict[str, Any]) -> Output:
        item_id, content_index, end_ms = event["item_id"], event["content_index"], event["audio_end_ms"]
        item = self._assistant.get(item_id)
        if item is None:
            raise ClientError(
                f"No assistant audio item {item_id!r} to truncate.",
                "item_truncate_invalid_item_id",
                "item_id",
            )
        if not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
            raise ClientError("'audio_end_ms' must be a whole number >= 0.", param="audio_end_ms")
        if end_ms > item.audio_ms + 1:
            raise ClientError(
                f"audio_end_ms {end_ms} is past the item's audio ({item.audio_ms:.0f} ms).",
                param="audio_end_ms",
            )
        item.audio_ms = float(end_ms)
        return Output(events=[ev.item_truncated(item_id, int(content_index), end_ms)])

    # -- responses ---------------------------------------------------------------------------
    def _on_response_create(self, event: dict[str, Any]) -> Output:
        if self.active_response is not None:
            raise ClientError(
                "The conversation already has an active response.", "conversation_already_has_active_response"
            )
        return self._start_response()

    def _on_response_cancel(self, event: dict[str, Any]) -> Output:
        wanted = event.get("response_id")
        if self.active_response is None or (wanted is not None and wanted != self.active_response):
            raise ClientError("There is no active response to cancel.", "response_cancel_not_active")
        return Output(commands=[CancelResponse(self.active_response, "client_cancelled")])

    def _start_response(self) -> Output:
        response_id = ev.new_id("resp")
        self.active_response = response_id
        user_item = self._last_user_item if self._last_user_item != self._answered_user_item else None
        self._answered_user_item = self._last_user_item
        outputs, self._tool_outputs = tuple(self._tool_outputs), []
        text = None if user_item is None else self._user_text.get(user_item)
        return Output(commands=[StartResponse(response_id, ResponseInput(user_item, text, outputs))])

    def _error(
        self, message: str, code: str, param: str | None = None, client_event_id: str | None = None
    ) -> Output:
        return Output(events=[ev.error(message, code, param=param, client_event_id=client_event_id)])


def _turn_detection(value: Any) -> TurnDetectionConfig | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in ("server_vad", "semantic_vad"):
        raise ClientError(
            "turn_detection must be null, server_vad or semantic_vad.",
            param="session.audio.input.turn_detection",
        )
    config = TurnDetectionConfig(type=value["type"])
    for name in ("threshold", "prefix_padding_ms", "silence_duration_ms"):
        if value.get(name) is not None:
            number = value[name]
            if not isinstance(number, int | float) or isinstance(number, bool) or number < 0:
                raise ClientError(
                    f"{name} must be a number >= 0.", param=f"session.audio.input.turn_detection.{name}"
                )
            setattr(config, name, type(getattr(config, name))(number))
    for flag in ("create_response", "interrupt_response"):
        if isinstance(value.get(flag), bool):
            setattr(config, flag, value[flag])
    if isinstance(value.get("eagerness"), str):
        config.eagerness = value["eagerness"]
    return config
