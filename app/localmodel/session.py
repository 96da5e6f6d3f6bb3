"""One client's session on the embedded server: protocol handling and state, no I/O.

``handle`` takes a raw client frame and returns an :class:`Output`: server events to send now and
commands for the server's workers (speech recognition, the reply pipeline). Slow work never runs
here; the server reports its results back (``user_transcribed``, ``response_finished``), so the
protocol rules are tested without sockets, threads or models.

Bad input gets an ``error`` event (``invalid_request_error`` with a message that says what is wrong
and ``param``, the path of the field) and the session carries on as it was: a frame that is not
JSON (``NaN`` and ``Infinity`` included) or is nested deeper than :data:`MAX_DEPTH`, an unknown
event type, a field of the wrong type, a number outside its bounds (declared with the event types in
:mod:`app.core.protocol`), a text or a list over
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

import json
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from app.audio.bargein import FRAME_MS, VAD_RATE, DetectorSettings, SpeechDetector
from app.audio.resample import StreamResampler, float_to_int16, pcm16_to_float
from app.core import protocol as p
from app.core import wire
from app.core.heard_text import cut_transcript

RATE = 24000
SPECULATE_AFTER_MS = 150  # a pause this long lets the server start on the reply early
# semantic_vad without an end-of-turn model: a silence window by eagerness.
_EAGERNESS_SILENCE_MS = {"low": 800, "medium": 500, "auto": 500, "high": 300}


@dataclass(frozen=True)
class JudgedPauses:
    """semantic_vad with an end-of-turn judge: how long a pause is before what happens (ms).

    ``look``: the judging starts (the words decoded, the voice heard) and so does the answer's
    preparation, while the pause may still be the gap before a word's last consonant. ``commit``:
    a turn judged complete ends no sooner than this; gaps inside words and between them run to
    about 130 ms, so looking before then and deciding only after it takes the judging's time (a
    decode, about 150 ms here) off the wait without cutting words off. ``recheck``: a pause judged
    unfinished is judged once more, on a new decode: with more silence after it the recogniser
    often hears a word it was unsure of (a short "done") or ends the sentence it had left open.
    ``fallback``: a turn judged unfinished ends anyway; it outlasts the pauses people make inside
    a sentence (300-900 ms).
    """

    look: int
    commit: int
    recheck: int
    fallback: int


# "high" answers sooner and risks cutting people off; "low" waits out longer pauses.
_EAGERNESS_JUDGED_MS: Final[dict[str, JudgedPauses]] = {
    "low": JudgedPauses(300, 300, 900, 2500),
    "medium": JudgedPauses(70, 150, 450, 1200),
    "auto": JudgedPauses(70, 150, 450, 1200),
    "high": JudgedPauses(60, 100, 350, 800),
}

# -- limits ----------------------------------------------------------------------------------
# A whole turn of Whisper decoding stays a few seconds of CPU, and one session at most ~6 MB of audio.
MAX_TURN_S = 120
MAX_DEPTH = 64  # JSON nesting; real events, tool schemas included, stay under 20 levels
MAX_ITEMS = 1000  # conversation items kept (a 70-turn call makes about 210)
MAX_ITEM_CHARS = p.MAX_ITEM_CHARS  # text of one item: a message, a tool output, a call's arguments
MAX_CONVERSATION_CHARS = 2 * 2**20  # text kept over all items
MAX_METADATA_KEY_CHARS = 64  # a response's metadata keys, with OpenAI's bound
_PREFIX_KEEP_BYTES = p.MAX_PREFIX_PADDING_MS * RATE * 2 // 1000
# A new detector (session start, a clear or commit, a new turn_detection, a turn cut at MAX_TURN_S)
# judges nothing in its warm-up and learns the room's noise floor over one window after it, so an
# onset it finds that soon may come late: speech that began right away would lose its first words to
# the prefix padding. Its first turn then takes all the audio since it started (kept, see above).
_SETTLE_MS = (DetectorSettings().warmup_frames + DetectorSettings().floor_window_frames) * FRAME_MS
assert _SETTLE_MS * RATE * 2 // 1000 <= _PREFIX_KEEP_BYTES

# What session.update changes; the other fields are checked (their types and bounds) and not used.
_APPLIED: Final = frozenset(
    {"instructions", "model", "voice", "transcription", "turn_detection", "tools", "output_modalities"}
)
# A client event that does not fit its type is refused with OpenAI's codes for the problem.
_CODES: Final[dict[wire.Problem, str]] = {
    "missing": "missing_required_parameter",
    "type": "invalid_type",
    "value": "invalid_value",
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


@dataclass
class _PendingPause:
    """A pause in a judged turn (semantic_vad with a judge), from where the speech stopped."""

    at_ms: float
    judged_complete: bool = False  # judged the end, before its commit pause
    rechecked: bool = False  # asked about again


@dataclass(frozen=True)
class JudgeTurnEnd:
    """The user paused after speaking: has the turn ended? Answer with :meth:`Session.turn_judged`."""

    item_id: str
    at_ms: float  # where the speech stopped
    again: bool = False  # the same pause, judged unfinished before, asked again now it is longer


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

    modalities: tuple[p.Modality, ...] = ("audio",)  # ("text",): text only, no audio
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
    | JudgeTurnEnd
    | EndUtterance
    | StartResponse
    | CancelResponse
)


@dataclass
class Output:
    events: list[p.KnownServerEvent] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)

    def __iadd__(self, other: Output) -> Output:
        self.events += other.events
        self.commands += other.commands
        return self


# -- session configuration -------------------------------------------------------------------


def _initial_session(session_id: str) -> p.Session:
    """What a new session reports: the server's defaults, in full, as OpenAI's do."""
    detection = _effective(p.TurnDetection())
    return p.Session(
        id=session_id,
        object="realtime.session",
        model="helpdesk-voice-embedded",
        instructions="",
        voice="joe",
        turn_detection=detection,
        max_output_tokens="inf",
        truncation="auto",
        speed=1.0,
    )


def _effective(detection: p.TurnDetection | None) -> p.TurnDetection | None:
    """Turn detection with the server's defaults where the client left a value out."""
    if detection is None:
        return None
    if detection.kind == "semantic_vad":
        return replace(detection, eagerness=detection.eagerness or "auto")
    return replace(
        detection,
        threshold=0.5 if detection.threshold is None else detection.threshold,
        prefix_padding_ms=300 if detection.prefix_padding_ms is None else detection.prefix_padding_ms,
        silence_duration_ms=500 if detection.silence_duration_ms is None else detection.silence_duration_ms,
    )


class ClientError(Exception):
    """A client event the session refuses; becomes an ``error`` event."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


# -- reading client events -------------------------------------------------------------------


def _shorten(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    wire: p.ItemInfo | None = field(default=None, repr=False)  # the item as retrieve returns it
    heard_ms: float | None = None  # a user audio item's length, for usage
    answered: bool = False  # a user item a response has answered

    @property
    def chars(self) -> int:
        return len(self.text or "") + (len(self.output[1]) if self.output is not None else 0)


class Session:
    """``judges_turn_end``: the server can judge whether a turn is complete (:class:`JudgeTurnEnd`),
    which semantic_vad then uses; without it, semantic_vad is a silence window by eagerness."""

    def __init__(self, session_id: str | None = None, *, judges_turn_end: bool = False) -> None:
        self.config = _initial_session(session_id or p.new_id("sess"))
        self.judges_turn_end = judges_turn_end
        self._pending: _PendingPause | None = None  # while a pause in the turn is judged
        self._pauses = JudgedPauses(0, 0, 0, 0)  # semantic_vad with a judge; 0: no judging
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
        self._cut_by_speech: str | None = None  # the latest response, when the user's speech cancelled it
        self._configure_turn_detection()

    # -- entry points ------------------------------------------------------------------------
    def opened(self) -> Output:
        return Output(events=[p.SessionCreated(self.config)])

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
        kind = p.CLIENT_EVENTS.get(event["type"])
        if kind is None:
            return self._error(
                f"Unsupported event type: {_shorten(event['type'])!r}.",
                "unsupported_event",
                "type",
                client_event_id,
            )
        try:
            return self._dispatch(wire.read(kind, event))
        except wire.WireError as exc:
            code = exc.code or _CODES[exc.problem]
            if exc.path == "audio" and exc.problem == "value":
                code = exc.code or "invalid_audio"  # not base64
            return self._error(f"{exc}.", code, exc.path or None, client_event_id)
        except ClientError as exc:
            return self._error(str(exc), exc.code, exc.param, client_event_id)
        except (KeyError, TypeError, ValueError) as exc:  # a case the checks above missed
            return self._error(
                f"Invalid {event['type']} event: {exc}.", "invalid_value", None, client_event_id
            )

    def _dispatch(self, event: p.ClientEvent) -> Output:
        match event:
            case p.SessionUpdate():
                return self._on_session_update(event)
            case p.InputAudioBufferAppend():
                return self._on_input_audio_buffer_append(event)
            case p.InputAudioBufferCommit():
                return self._on_input_audio_buffer_commit()
            case p.InputAudioBufferClear():
                return self._on_input_audio_buffer_clear()
            case p.ConversationItemCreate():
                return self._on_conversation_item_create(event)
            case p.ConversationItemTruncate():
                return self._on_conversation_item_truncate(event)
            case p.ConversationItemRetrieve():
                return self._on_conversation_item_retrieve(event)
            case p.ConversationItemDelete():
                return self._on_conversation_item_delete(event)
            case p.ResponseCreate():
                return self._on_response_create(event)
            case p.ResponseCancel():
                return self._on_response_cancel(event)

    def user_transcribed(self, item_id: str, text: str, respond: bool) -> Output:
        """The recognizer's final text for a committed user audio item."""
        out = Output()
        if self.config.transcription_model is not None:
            out.events.append(
                p.InputAudioTranscriptionCompleted(item_id, 0, text, {"type": "duration", "seconds": 0.0})
            )
        item = self._items.get(item_id)
        if item is not None and item.role == "user" and item.text is None:
            item.text = text
            item.wire = _user_audio_item(item_id, text)
            self._item_chars += len(text)
            self._forget_oldest()
        if respond and self.active_response is None and text.strip():
            out += self._start_response()
        return out

    def output_item_started(self, item: p.ItemInfo, audio: bool = False) -> Output:
        """A response's item (an assistant message or a function call) joins the conversation.

        An audio item can be truncated from this moment, before any of its audio is sent (at 0 ms).
        """
        previous = self._last_item()
        role = "assistant" if item.type == "message" else item.type
        kept = _Item(role, wire=item, audio_ms=0.0, said="") if audio else _Item(role, wire=item)
        self._keep(str(item.id), kept)
        return Output(events=[p.ConversationItemAdded(item, previous)])

    def output_audio_sent(self, item_id: str, audio_ms: float, said: str) -> None:
        """A response's audio item has sent ``audio_ms`` of audio so far, ``said`` its words begun."""
        kept = self._items.get(item_id)
        if kept is not None and not kept.truncated:
            kept.audio_ms = audio_ms
            kept.said = said

    def output_item_finished(self, item: p.ItemInfo, audio_ms: float | None = None) -> Output:
        """A response's item is complete (or cut short); ``audio_ms`` is an audio item's length.

        An item truncated while it streamed stays as the truncate left it: its audio as heard and
        its transcript cut to the words heard (``conversation.item.done`` says so too).
        """
        item_id = str(item.id)
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
        return Output(events=[p.ConversationItemDone(item, previous)])

    def response_finished(self, response_id: str, audio_items: dict[str, float] | None = None) -> None:
        """The server finished (or cancelled) a response; ``audio_items`` maps item id -> audio ms."""
        for item_id, audio_ms in (audio_items or {}).items():
            kept = self._items.get(item_id)
            if kept is not None and not kept.truncated:
                kept.audio_ms = audio_ms
        if self.active_response == response_id:
            self.active_response = None

    def last_assistant_words(self) -> str:
        """The assistant's latest message as the user heard it: cut where it was truncated, the
        words begun so far while it streams; "" before the assistant said anything."""
        for item in reversed(self._items.values()):
            if item.role != "assistant":
                continue
            if item.said is not None:
                return item.said
            if item.wire is None:
                return ""
            return " ".join(part.transcript or part.text or "" for part in item.wire.content).strip()
        return ""

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
    def _on_session_update(self, event: p.SessionUpdate) -> Output:
        update = event.session
        given = wire.given(p.Session, update.raw)  # only the fields the client sent change
        for side in ("input", "output"):
            fmt: p.AudioFormat = getattr(update, f"{side}_format")
            if f"{side}_format" in given and (fmt.type != "audio/pcm" or fmt.rate not in (None, RATE)):
                path = f"session.audio.{side}.format"
                raise ClientError("Only audio/pcm at 24000 Hz is supported.", "unsupported_format", path)
        if "output_modalities" in given and not update.output_modalities:
            param = "session.output_modalities"
            raise ClientError(f'\'{param}\' must be ["audio"] or ["text"].', param=param)
        # Checked whole, then applied: a refused update leaves the session as it was.
        changes = {name: getattr(update, name) for name in given & _APPLIED}
        if "voice" in changes:
            changes["voice"] = update.voice_name  # a custom voice by its id
        for name in ("instructions", "model", "voice"):
            if changes.get(name, "") is None:
                del changes[name]  # null: as it was
        transcription = changes.get("transcription")
        if transcription is not None and transcription.model is None:
            changes["transcription"] = replace(transcription, model="local")
        if "output_modalities" in changes:
            changes["output_modalities"] = ("audio",) if "audio" in update.output_modalities else ("text",)
        detection_changed = "turn_detection" in changes
        if detection_changed:
            changes["turn_detection"] = _effective(update.turn_detection)
        config = replace(self.config, **changes)
        out = Output()
        if detection_changed and self._utterance is not None:
            # The new detector starts in silence and would never end this turn: end it now.
            out += self._speech_stopped(self._audio_ms)
        self.config = config
        if detection_changed:
            self._configure_turn_detection()
        out.events.append(p.SessionUpdated(config))
        return out

    def _configure_turn_detection(self) -> None:
        detection = self.config.turn_detection
        self._detector_since_ms = self._audio_ms
        self._detector_fresh = True
        if detection is None:
            self._detector = None
            return
        self._pending = None
        self._pauses = JudgedPauses(0, 0, 0, 0)
        silence_ms = detection.silence_duration_ms or 500
        if detection.kind == "semantic_vad":
            eagerness = detection.eagerness or "auto"
            silence_ms = _EAGERNESS_SILENCE_MS.get(eagerness, 500)
            if self.judges_turn_end:
                self._pauses = _EAGERNESS_JUDGED_MS.get(eagerness, _EAGERNESS_JUDGED_MS["auto"])
                silence_ms = self._pauses.look
        threshold = 0.5 if detection.threshold is None else detection.threshold
        mode = 3 if threshold >= 0.7 else 2 if threshold >= 0.4 else 1
        self._detector = SpeechDetector(
            DetectorSettings(onset_frames=3, hangover_frames=max(5, silence_ms // 10), vad_mode=mode)
        )

    # -- input audio -------------------------------------------------------------------------
    def _on_input_audio_buffer_append(self, event: p.InputAudioBufferAppend) -> Output:
        pcm = event.audio
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
                if self._pending is not None and self._utterance is not None:
                    self._pending = None  # a pause inside the turn: it goes on, the same item
                    continue
                out += self._speech_started(speech.at * 1000.0)
            elif speech.kind == "speech_end":
                if self._pauses.fallback and self._utterance is not None:
                    self._pending = _PendingPause(speech.at * 1000.0)
                    out.commands.append(JudgeTurnEnd(self._utterance, self._pending.at_ms))
                else:
                    out += self._speech_stopped(speech.at * 1000.0)
        detector.events.clear()
        pending = self._pending
        if pending is not None and self._utterance is not None:
            quiet_ms = self._audio_ms - pending.at_ms
            pauses = self._pauses
            if not pending.judged_complete and not pending.rechecked and quiet_ms >= pauses.recheck:
                pending.rechecked = True
                out.commands.append(JudgeTurnEnd(self._utterance, pending.at_ms, again=True))
            if quiet_ms >= pauses.fallback or (pending.judged_complete and quiet_ms >= pauses.commit):
                # Judged complete and now quiet long enough, or judged unfinished but quiet since.
                out += self._speech_stopped(pending.at_ms)
        if self._utterance is not None:
            # A pause being judged is one to prepare the answer in, from the moment the judging starts.
            paused = self._pending is not None or detector.silence_frames * 10 >= SPECULATE_AFTER_MS
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
            self._cut_by_speech = self.active_response
        item_id = p.new_id("item")
        # The turn's audio, and audio_start_ms with it, begins prefix_padding_ms before the onset
        # (as OpenAI's does), or where a new detector started when it found the turn that soon.
        padding_ms = self.config.turn_detection.prefix_padding_ms or 0
        begin_ms = max(at_ms - padding_ms, self._detector_since_ms)
        if self._detector_fresh and at_ms - self._detector_since_ms <= _SETTLE_MS:
            begin_ms = self._detector_since_ms
        self._detector_fresh = False
        self._utterance = item_id
        self._utterance_start_ms = begin_ms
        self._paused = False
        out.events.append(p.SpeechStarted(int(begin_ms), item_id))
        out.commands.append(BeginUtterance(item_id))
        padding = self._recent_audio(begin_ms)
        if padding:
            out.commands.append(UtteranceAudio(item_id, padding))
        return out

    def turn_judged(self, item_id: str, at_ms: float, complete: bool) -> Output:
        """The server's answer to :class:`JudgeTurnEnd`: a complete turn ends where the speech
        stopped, once the pause is as long as the commit pause (now, when it already is); an
        unfinished one waits for more speech or the fallback pause. An answer about a pause the
        user has since spoken after is stale and changes nothing."""
        pending = self._pending
        if not complete or self._utterance != item_id or pending is None or pending.at_ms != at_ms:
            return Output()
        if self._audio_ms - at_ms < self._pauses.commit:
            pending.judged_complete = True  # _detect ends the turn when the pause is long enough
            return Output()
        return self._speech_stopped(at_ms)

    def _speech_stopped(self, at_ms: float) -> Output:
        assert self.config.turn_detection is not None
        item_id = self._utterance
        self._pending = None
        if item_id is None:
            return Output()
        self._utterance = None
        self._paused = False
        out = Output(events=[p.SpeechStopped(int(at_ms), item_id)])
        out += self._commit(item_id, at_ms - self._utterance_start_ms)
        out.commands.append(EndUtterance(item_id, self.config.turn_detection.create_response))
        return out

    def _on_input_audio_buffer_commit(self) -> Output:
        if len(self._buffer) < RATE * 2 // 10:  # OpenAI refuses less than 100 ms as well
            raise ClientError(
                "The input audio buffer holds less than 100 ms of audio.", "input_audio_buffer_commit_empty"
            )
        item_id = self._utterance or p.new_id("item")
        out = Output()
        heard_ms = len(self._buffer) / 2 / RATE * 1000.0
        if self._utterance is None:
            out.commands += [BeginUtterance(item_id), UtteranceAudio(item_id, bytes(self._buffer))]
        else:
            heard_ms = self._audio_ms - self._utterance_start_ms
        self._utterance = None
        self._pending = None
        out += self._commit(item_id, heard_ms)
        out.commands.append(EndUtterance(item_id, respond=False))
        # A new detector: speech that goes on, or comes right away, is the next turn, heard whole.
        self._configure_turn_detection()
        return out

    def _commit(self, item_id: str, heard_ms: float) -> Output:
        previous = self._last_item()
        item = _user_audio_item(item_id)
        self._keep(item_id, _Item("user", wire=item, heard_ms=max(0.0, heard_ms)))
        self._last_user_item = item_id
        self._buffer.clear()
        return Output(
            events=[
                p.InputAudioBufferCommitted(item_id, previous),
                p.ConversationItemAdded(item, previous),
                p.ConversationItemDone(item, previous),
            ]
        )

    def _on_input_audio_buffer_clear(self) -> Output:
        self._buffer.clear()
        if self._utterance is None:  # a new detector: speech right after the clear is heard whole
            self._configure_turn_detection()
        return Output(events=[p.InputAudioBufferCleared()])

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
    def _on_conversation_item_create(self, event: p.ConversationItemCreate) -> Output:
        item = event.item
        if item.type not in ("message", "function_call", "function_call_output"):
            choices = "message, function_call, function_call_output"
            raise ClientError(
                f"'item.type' must be one of {choices}, not {_shorten(item.type)!r}.", param="item.type"
            )
        item_id = item.id or p.new_id("item")
        if item_id in self._items:
            raise ClientError(f"The conversation already has an item {item_id!r}.", param="item.id")
        item = replace(item, id=item_id, object="realtime.item", status="completed")
        if item.type == "message":
            role = _required(item.role, "item.role")
            if role not in ("user", "assistant", "system"):
                raise ClientError(
                    f"'item.role' must be one of user, assistant, system, not {_shorten(role)!r}.",
                    param="item.role",
                )
            text = _message_text(item)
            kept = _Item(role, text if role == "user" else None, wire=item)
        elif item.type == "function_call_output":
            call_id = _required(item.call_id, "item.call_id")
            kept = _Item(item.type, output=(call_id, _required(item.output, "item.output")), wire=item)
            self._tool_outputs.append(item_id)
        else:
            _required(item.call_id, "item.call_id")
            _required(item.name, "item.name")
            item = replace(item, arguments=item.arguments or "{}")
            kept = _Item(item.type, wire=item)
        if kept.role == "user":
            self._last_user_item = item_id
        previous = self._last_item()
        self._keep(item_id, kept)
        return Output(
            events=[p.ConversationItemAdded(item, previous), p.ConversationItemDone(item, previous)]
        )

    def _on_conversation_item_truncate(self, event: p.ConversationItemTruncate) -> Output:
        """Cuts an assistant audio item to what the user heard, finished or still streaming.

        The audio past ``audio_end_ms`` is gone and so are the words the user did not hear: the
        transcript keeps the share of its words that the played share of the audio holds, cut at a
        word boundary (:func:`~app.core.heard_text.cut_transcript`). An item still streaming stops:
        its response ends as ``response.cancel`` ends it, so no more of its audio follows.
        """
        item_id = event.item_id
        item = self._items.get(item_id)
        if item is None or item.audio_ms is None:
            raise ClientError(
                f"No assistant audio item {item_id!r} to truncate.",
                "item_truncate_invalid_item_id",
                "item_id",
            )
        content_index, end_ms = event.content_index, event.audio_end_ms
        streaming = item.said is not None
        if end_ms > item.audio_ms + 1:
            so_far = "sent so far" if streaming else "audio"
            raise ClientError(
                f"audio_end_ms {end_ms} is past the item's {so_far} ({item.audio_ms:.0f} ms).",
                param="audio_end_ms",
            )
        out = Output(events=[p.ConversationItemTruncated(item_id, content_index, end_ms)])
        if streaming:
            item.said = cut_transcript(item.said or "", end_ms, item.audio_ms, audio_complete=False)
            if self.active_response is not None:
                out.commands.append(CancelResponse(self.active_response, "client_cancelled"))
        elif item.wire is not None:
            words, complete = _transcript(item.wire), item.wire.status == "completed"
            item.wire = _with_transcript(item.wire, cut_transcript(words, end_ms, item.audio_ms, complete))
        item.audio_ms = float(min(end_ms, item.audio_ms))
        item.truncated = True
        return out

    def _on_conversation_item_retrieve(self, event: p.ConversationItemRetrieve) -> Output:
        item_id = event.item_id
        item = self._items.get(item_id)
        if item is None or item.wire is None:
            raise ClientError(
                f"The conversation has no item {item_id!r}.", "item_retrieve_invalid_item_id", "item_id"
            )
        return Output(events=[p.ConversationItemRetrieved(item.wire)])

    def _on_conversation_item_delete(self, event: p.ConversationItemDelete) -> Output:
        item_id = event.item_id
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
        return Output(events=[p.ConversationItemDeleted(item_id)])

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
    def _on_response_create(self, event: p.ResponseCreate) -> Output:
        # Of the overrides only these two are used; the others are checked by their types.
        asked = event.response or p.ResponseOptions()
        if asked.output_modalities is not None and not asked.output_modalities:
            param = "response.output_modalities"
            raise ClientError(f'\'{param}\' must be ["audio"] or ["text"].', param=param)
        modalities = asked.output_modalities or self.config.output_modalities
        for key in asked.metadata or {}:
            if len(key) > MAX_METADATA_KEY_CHARS:
                raise ClientError(
                    f"A key of 'response.metadata' is {len(key)} characters long; "
                    f"the limit is {MAX_METADATA_KEY_CHARS}.",
                    param=f"response.metadata.{_shorten(key)}",
                )
        if self.active_response is not None:
            raise ClientError(
                "The conversation already has an active response.", "conversation_already_has_active_response"
            )
        chosen: tuple[p.Modality, ...] = ("audio",) if "audio" in modalities else ("text",)
        metadata = None if asked.metadata is None else dict(asked.metadata)
        return self._start_response(ResponseOptions(chosen, metadata))

    def _on_response_cancel(self, event: p.ResponseCancel) -> Output:
        wanted = event.response_id
        if self._cut_by_speech is not None and wanted in (None, self._cut_by_speech):
            # A client that cancels on speech_started (LiveKit's does) asks for what the server did
            # already: its response.done says cancelled, turn_detected. Not worth an error.
            return Output()
        if self.active_response is None or (wanted is not None and wanted != self.active_response):
            # OpenAI's words: clients (LiveKit's) know a cancel that raced the response's end by the
            # message's "Cancellation failed" and stay quiet about it.
            raise ClientError("Cancellation failed: no active response found.", "response_cancel_not_active")
        return Output(commands=[CancelResponse(self.active_response, "client_cancelled")])

    def _start_response(self, options: ResponseOptions | None = None) -> Output:
        response_id = p.new_id("resp")
        self.active_response = response_id
        self._cut_by_speech = None
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
        error = p.ErrorEvent("invalid_request_error", code, message, param, client_event_id)
        return Output(events=[error])


def _required(value: str | None, param: str) -> str:
    if value is None:
        raise ClientError(f"'{param}' is required.", "missing_required_parameter", param)
    return value


def _user_audio_item(item_id: str, transcript: str | None = None) -> p.ItemInfo:
    part = p.ContentPart("input_audio", transcript=transcript)
    return p.ItemInfo(item_id, "message", "user", "completed", (part,), object="realtime.item")


def _transcript(item: p.ItemInfo) -> str:
    """An assistant audio item's transcript ("" when it has none)."""
    return (item.content[0].transcript or "") if item.content else ""


def _with_transcript(item: p.ItemInfo, transcript: str) -> p.ItemInfo:
    """A copy of an assistant audio item with its transcript replaced."""
    first, *rest = item.content or (p.ContentPart("output_audio"),)
    return replace(item, content=(replace(first, transcript=transcript), *rest))


def _message_text(item: p.ItemInfo) -> str:
    text = " ".join(part.text for part in item.content if part.text).strip()
    if len(text) > MAX_ITEM_CHARS:
        raise ClientError(
            f"The message's text is {len(text)} characters long; the limit is {MAX_ITEM_CHARS}.",
            param="item.content",
        )
    return text
