"""The conversation state machine: events in, actions out, no I/O.

Inputs are server events (parsed by :mod:`app.core.protocol`), local speech-detector events,
playback progress from the player, tool results, connection changes, user commands and clock
ticks; every input takes ``now`` (monotonic seconds) so the machine never reads a clock itself.
Outputs are :mod:`app.core.actions`.

Barge-in: the audio thread has already paused the player when the machine hears of it. The
answer is kept, and so is the user's audio (the server does not hear it yet), until the machine
knows whether it was the user's turn: less than ``min_turn_s`` of speech (a cough, a click)
followed by ``resume_after_s`` of silence resumes the answer where it stopped, and nothing is
sent. A real turn stops the answer: the machine cancels the response (only while one is in
progress), sends the held audio, and, once the player reports what the listener heard,
truncates the item there (clamped to the item's audio, never for an item that finished playing)
and cuts the assistant's transcript to match.

While the assistant's voice may be in the microphone, the server hears silence unless the local
detector hears the user (see :mod:`app.core.hearing`): the local decision wins while the model is
answering, and the server's own turn detection never fires on echo.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from app.core import protocol as p
from app.core.actions import (
    Action,
    EndAudio,
    Halt,
    Notice,
    PlayAudio,
    PlayCue,
    ResumeAudio,
    RunTool,
    Send,
    State,
    StateChanged,
    ToolActivity,
    Transcript,
    TurnCompleted,
)
from app.core.heard_text import cut_transcript
from app.core.hearing import MicFrame
from app.core.metrics import TurnMetrics
from app.core.safe_text import one_line
from app.core.unheard import UnheardSpeech

LocalSpeechKind = Literal["speech_start", "speech_end", "barge_in"]

# Echo frames kept (as silence on the wire) in case a barge-in's onset reaches back into them: the
# last second of them, by capture time (the frames' length is the capture's business), and never
# more than this many frames.
_RECENT_S = 1.0
_RECENT_MAX_FRAMES = 500
# Pump and queue delays between the detector's end of speech and the machine hearing of it.
_DECISION_SLACK_S = 0.1

# Errors that only mean the server had already done what we asked (a race, not a problem).
BENIGN_ERROR_CODES = frozenset({"response_cancel_not_active", "item_truncate_invalid_item_id"})


_UNDER_WAY = frozenset({State.USER_SPEAKING, State.THINKING, State.ASSISTANT_SPEAKING, State.TOOL_RUNNING})


@dataclass
class ConversationSettings:
    session: p.Session
    push_to_talk: bool = False
    cue_after_s: float = 0.8
    slow_tool_after_s: float = 1.5
    backend: str = "embedded"
    replay_limit: int = 40  # history items re-sent after a reconnect
    # A local barge-in pauses the answer; less speech than this (a cough, a click, "mm") before
    # a silence was not the user's turn, and the answer resumes where it stopped.
    min_turn_s: float = 0.3
    # The local detector's silence before it reports the end of speech: with ``min_turn_s`` it
    # says when a paused answer is decided at the latest (a longer utterance is still going on).
    speech_hangover_s: float = 0.3
    # Microphone audio from before the detector's onset that goes to the server with the turn.
    prefix_s: float = 0.3
    # Silence after a short sound before the answer resumes: longer than the pause after a
    # "Wait," (the next words came 370 ms after it, measured), short enough to resume a cough's
    # answer within about 0.8 s.
    resume_after_s: float = 0.6


@dataclass
class _AssistantItem:
    item_id: str
    response_id: str
    audio_ms: float = 0.0  # received so far
    transcript: str = ""
    has_audio: bool = False
    audio_done: bool = False  # no more audio will come (finished, cancelled or connection lost)
    audio_complete: bool = False  # the server said the audio is whole (response.output_audio.done)
    played_out: bool = False
    interrupted: bool = False
    halt_pending: bool = False  # cut while playing: waiting for the player to say what was heard
    heard_ms: float | None = None


@dataclass
class _Call:
    call_id: str
    name: str
    arguments: str
    response_id: str
    started_at: float
    output: str | None = None
    slow_reported: bool = False


@dataclass
class _Response:
    response_id: str
    items: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    done: bool = False
    cancel_sent: bool = False
    follow_up_sent: bool = False  # response.create after its tool outputs


@dataclass
class _HistoryEntry:
    kind: Literal["user", "assistant", "call", "call_output"]
    key: str  # item id or call id
    text: str = ""
    name: str = ""


@dataclass
class _Interruption:
    """A local barge-in whose answer is paused, not yet known to be the user's turn.

    The user's sound comes in bursts (the detector's speech start and end); their speech adds up.
    Enough of it is a turn. A short sound followed by enough silence is not: "Wait, actually..."
    has a pause after "wait" (120 ms of speech, measured) that a cough has too, so the verdict
    waits ``resume_after_s`` of silence before it calls a short sound a cough.
    """

    onset_at: float  # capture time of the first speech frame
    held: list[MicFrame]  # the user's audio, kept from the server until the verdict
    burst_at: float | None  # capture time the burst in progress began (None: silence)
    spoken_s: float = 0.0  # speech in the bursts that have ended
    silent_since: float = 0.0  # capture time the last burst ended

    def speech_started(self, at: float) -> None:
        if self.burst_at is None:
            self.burst_at = at

    def speech_ended(self, at: float) -> None:
        if self.burst_at is not None:
            self.spoken_s += max(0.0, at - self.burst_at)
            self.burst_at = None
            self.silent_since = at

    def verdict(self, now: float, settings: ConversationSettings) -> Literal["turn", "resume"] | None:
        if self.burst_at is not None:
            # No end reported yet: the burst has gone on at least until the detector's hangover
            # (and the pump) ago.
            lasted = max(0.0, now - settings.speech_hangover_s - _DECISION_SLACK_S - self.burst_at)
            return "turn" if self.spoken_s + lasted >= settings.min_turn_s else None
        if self.spoken_s >= settings.min_turn_s:
            return "turn"
        return "resume" if now - self.silent_since >= settings.resume_after_s else None


@dataclass
class _Turn:
    metrics: TurnMetrics
    user_item_id: str | None = None
    user_text: str = ""
    speech_onset_at: float | None = None
    response_ids: list[str] = field(default_factory=list)
    completed: bool = False
    awaiting_retry: bool = False  # its answer was lost with the connection; a new one will come
    cue_deadline: float | None = None
    underruns_at_start: int = 0


class Conversation:
    def __init__(self, settings: ConversationSettings) -> None:
        self.settings = settings
        self.state = State.IDLE
        self.muted = False
        self.connected = False
        self.ptt_pressed = False
        self._items: dict[str, _AssistantItem] = {}
        self._responses: dict[str, _Response] = {}
        self._active_response: str | None = None
        self._calls: dict[str, _Call] = {}
        self._history: list[_HistoryEntry] = []
        self._turns: list[_Turn] = []
        self._turn_number = 0
        self._local_speech_end: float | None = None
        self._local_speech_start: float | None = None
        self._cue_counter = 0
        self._cues_playing: list[str] = []
        self._underruns = 0
        self._pending_reply = False  # a user turn waits for an answer that a drop may have lost
        self._interruption: _Interruption | None = None
        self._local_in_speech = False  # the local detector's last word: the user is talking
        self._recent: deque[MicFrame] = deque(maxlen=_RECENT_MAX_FRAMES)  # silenced echo frames
        self._unheard = UnheardSpeech()  # said again to a new session after a reconnect

    @property
    def under_way(self) -> bool:
        """A turn is in progress (the user's or the assistant's): the audio must not idle."""
        return self.state in _UNDER_WAY or self._local_in_speech

    # ------------------------------------------------------------------------------------------
    # User commands
    # ------------------------------------------------------------------------------------------
    def start(self, now: float) -> list[Action]:
        if self.state is not State.IDLE:
            return []
        return self._set_state(State.CONNECTING)

    def stop(self, now: float) -> list[Action]:
        actions: list[Action] = []
        self._interruption = None
        if self._audio_playing():
            actions.append(Halt())
        actions += self._cancel_active_response()
        self._cancel_cue()
        return actions + self._set_state(State.IDLE)

    def set_muted(self, muted: bool, now: float) -> list[Action]:
        self.muted = muted
        actions: list[Action] = []
        if muted and self._interruption is not None:
            actions += self._resume(now)  # a muted user cannot have interrupted
        actions.append(StateChanged(self.state, self.muted))
        if muted and self.connected and not self.settings.push_to_talk:
            # Whatever the server had of the user's speech should not become a turn.
            actions.append(Send(p.InputAudioBufferClear()))
        return actions

    def push_to_talk(self, pressed: bool, now: float) -> list[Action]:
        if not self.settings.push_to_talk or pressed == self.ptt_pressed:
            return []
        self.ptt_pressed = pressed
        actions: list[Action] = []
        if pressed:
            actions += self._interrupt_assistant(now, onset_at=now)
            self._begin_user_turn(now)
            if self.connected:
                actions.append(Send(p.InputAudioBufferClear()))
            return actions + self._set_state(State.USER_SPEAKING)
        turn = self._current_turn()
        if turn is not None:
            turn.metrics.user_speech_end = now
        if self.connected:
            actions += [Send(p.InputAudioBufferCommit()), Send(p.ResponseCreate())]
            self._pending_reply = True
        return actions + self._await_response(now)

    def send_text(self, text: str, now: float) -> list[Action]:
        text = text.strip()
        if not text:
            return []
        actions = self._interrupt_assistant(now, onset_at=None)
        turn = self._begin_user_turn(now)
        turn.user_text = text
        turn.metrics.user_speech_end = now
        key = f"typed-{turn.metrics.turn}"
        turn.user_item_id = key
        self._history.append(_HistoryEntry("user", key, text))
        actions.append(Transcript("user", key, text, final=True))
        self._pending_reply = True
        if self.connected:
            actions += [Send(p.ConversationItemCreate.message("user", text)), Send(p.ResponseCreate())]
        return actions + self._await_response(now)

    # ------------------------------------------------------------------------------------------
    # Microphone and local detector
    # ------------------------------------------------------------------------------------------
    def mic_frame(self, frame: MicFrame) -> list[Action]:
        """A 24 kHz PCM16 frame from the microphone: forward it, silence it or hold it.

        While the assistant's voice may be in the microphone the server hears silence unless the
        local detector hears the user: the local decision wins while the model is answering, and
        the server's turn detection never fires on echo. While a paused answer waits for its
        verdict, the user's audio is held: a cough must not reach the server, where it would
        become a turn (and, with ``interrupt_response``, cancel the answer we may resume).
        """
        if self.muted:
            return []
        if self.settings.push_to_talk:
            talking = self.connected and self.ptt_pressed
            return [Send(p.InputAudioBufferAppend(frame.pcm16))] if talking else []
        if self._interruption is not None and self.connected:
            self._interruption.held.append(frame)
            return []
        if frame.hearing == "echo":
            recent = self._recent
            recent.append(frame)
            while recent[0].captured_at < frame.captured_at - _RECENT_S:
                recent.popleft()
            heard = bytes(len(frame.pcm16))
        else:
            self._recent.clear()
            heard = frame.pcm16
        # Kept while disconnected too: what the user says then is said again after the reconnect.
        self._unheard.add(heard, speech=frame.hearing != "echo" and self._local_in_speech)
        return [Send(p.InputAudioBufferAppend(heard))] if self.connected else []

    def local_speech(self, kind: LocalSpeechKind, at: float, now: float) -> list[Action]:
        """A local detector event; ``at`` is the capture time of the speech it is about."""
        if self.muted or self.state in (State.IDLE, State.ERROR):
            return []
        self._local_in_speech = kind != "speech_end"
        interruption = self._interruption
        if interruption is not None:
            # The answer is paused (so the detector reports starts, not barge-ins): more of the
            # same interruption, which may decide it.
            if kind == "speech_end":
                self._local_speech_end = at
                interruption.speech_ended(at)
            else:
                interruption.speech_started(at)
            return self._decide_interruption(now)
        if kind == "speech_end":
            self._local_speech_end = at
            return []
        self._local_speech_start = at
        self._local_speech_end = None
        if kind == "barge_in":
            if not self._audio_playing():
                # Only the earcon, or the last of an answer that has just ended, was paused:
                # nothing to resume, the user has the floor.
                actions: list[Action] = [Halt(), *self._interrupt_assistant(now, onset_at=at)]
                if not self.settings.push_to_talk:
                    self._begin_user_turn(now)
                    actions += self._set_state(State.USER_SPEAKING)
                return actions
            # The audio thread has paused the player: the answer waits, kept, for the verdict
            # (a turn, or a cough). The audio just before the onset is the start of the words.
            held = [f for f in self._recent if f.captured_at >= at - self.settings.prefix_s]
            self._recent.clear()
            self._interruption = _Interruption(at, held, burst_at=at)
            return self._set_state(State.USER_SPEAKING)
        return []

    def _decide_interruption(self, now: float) -> list[Action]:
        interruption = self._interruption
        verdict = None if interruption is None else interruption.verdict(now, self.settings)
        if verdict == "turn":
            return self._confirm_interruption(now)
        if verdict == "resume":
            return self._resume(now)
        return []

    def _confirm_interruption(self, now: float) -> list[Action]:
        """The paused answer was interrupted by a real turn: stop it, and let the server hear."""
        interruption = self._interruption
        if interruption is None:
            return []
        self._interruption = None
        actions = self._interrupt_assistant(now, onset_at=interruption.onset_at)
        if not self.settings.push_to_talk:
            self._begin_user_turn(now)
            actions += self._set_state(State.USER_SPEAKING)
        if self.connected and not self.muted:
            actions += [Send(p.InputAudioBufferAppend(f.pcm16)) for f in interruption.held]
            for held in interruption.held:
                self._unheard.add(held.pcm16, speech=True)
        return actions

    def _resume(self, now: float) -> list[Action]:
        """Not the user's turn after all: the answer goes on from where it stopped."""
        self._interruption = None
        for response_id in {i.response_id for i in self._items_playing()}:
            turn = self._turn_of_response(response_id)
            if turn is not None:
                turn.metrics.false_interruptions += 1
        state = State.ASSISTANT_SPEAKING if self._audio_playing() else State.LISTENING
        return [ResumeAudio(), *self._set_state(state)]

    # ------------------------------------------------------------------------------------------
    # Playback progress
    # ------------------------------------------------------------------------------------------
    def playback_halted(self, played_ms: Mapping[str, float], silent_at: float, now: float) -> list[Action]:
        """The player cut these items; ``played_ms`` is what the listener heard of each."""
        actions: list[Action] = []
        for item_id, heard in played_ms.items():
            if item_id in self._cues_playing:
                self._cues_playing.remove(item_id)
                continue
            item = self._items.get(item_id)
            if item is None or item.played_out:
                continue
            item.interrupted = True
            item.halt_pending = False
            item.heard_ms = min(heard, item.audio_ms)
            audio_end_ms = int(item.heard_ms)
            turn = self._turn_of_response(item.response_id)
            finished_playing = item.audio_complete and heard >= item.audio_ms - 1.0
            if self.connected and not finished_playing:
                actions.append(Send(p.ConversationItemTruncate(item_id, 0, audio_end_ms)))
                if turn is not None:
                    turn.metrics.truncated_at_ms = audio_end_ms
            item.played_out = True
            if turn is not None:
                metrics = turn.metrics
                metrics.barge_in = True
                metrics.played_ms = item.heard_ms
                if turn.speech_onset_at is not None:
                    metrics.halt_ms = max(0.0, (silent_at - turn.speech_onset_at) * 1000.0)
            cut = self._heard_text(item)
            self._set_history_text(item_id, cut)
            actions.append(Transcript("assistant", item_id, cut, final=True, interrupted=True))
            actions += self._maybe_complete_turn_of(item.response_id, now)
        return actions

    def first_audio(self, item_id: str, at: float) -> list[Action]:
        """The player handed the item's first audible sample to the device at ``at``."""
        item = self._items.get(item_id)
        turn = self._turn_of_response(item.response_id) if item else None
        if turn is None or turn.metrics.first_audio_out is not None:
            return []
        turn.metrics.first_audio_out = at
        if turn.metrics.user_speech_end is not None:
            turn.metrics.ttfa_ms = max(0.0, (at - turn.metrics.user_speech_end) * 1000.0)
        return []

    def item_played_out(self, item_id: str, now: float) -> list[Action]:
        if item_id in self._cues_playing:
            self._cues_playing.remove(item_id)
            return []
        item = self._items.get(item_id)
        if item is None or item.played_out or (item.interrupted and not item.halt_pending):
            return []
        # An item can finish playing just before a halt reached it: then it was heard whole.
        item.played_out = True
        item.halt_pending = False
        turn = self._turn_of_response(item.response_id)
        if turn is not None:
            turn.metrics.played_ms = (turn.metrics.played_ms or 0.0) + item.audio_ms
        return self._maybe_complete_turn_of(item.response_id, now)

    def set_underruns(self, total: int) -> None:
        self._underruns = total

    # ------------------------------------------------------------------------------------------
    # Connection
    # ------------------------------------------------------------------------------------------
    def connected_to_server(self, reconnected: bool, now: float) -> list[Action]:
        self.connected = True
        actions: list[Action] = [Send(p.SessionUpdate(self._session_config()))]
        if not reconnected:
            self._unheard.take()  # what was said before the first connection was said to nobody
        else:
            actions += self._replay()
            for turn in self._turns:
                if not turn.completed:
                    turn.metrics.reconnects += 1
            unheard = self._unheard.take() if self._server_takes_turns() else []
            if unheard:
                # The server's turn detection hears the request again and answers it: no
                # response.create as well, or it would answer twice.
                actions += [Send(p.InputAudioBufferAppend(chunk)) for chunk in _chunks(unheard)]
                actions.append(Notice("info", "Reconnected; passing on what you said meanwhile."))
                return actions + self._set_state(State.THINKING)
            if self._pending_reply or self._outputs_awaiting_follow_up():
                actions.append(Send(p.ResponseCreate()))
                self._pending_reply = True
                for response in self._responses.values():
                    if response.calls and all(self._calls[c].output is not None for c in response.calls):
                        response.follow_up_sent = True
                actions.append(Notice("info", "Reconnected; picking up where we left off."))
                return actions + self._set_state(State.THINKING)
            actions.append(Notice("info", "Reconnected."))
        return actions + self._set_state(State.LISTENING)

    def _server_takes_turns(self) -> bool:
        """The server's turn detection answers speech it hears by itself (not push-to-talk)."""
        detection = self._session_config().turn_detection
        return not self.settings.push_to_talk and detection is not None and detection.create_response

    def disconnected(
        self, message: str, retrying: bool, now: float, needs_user: bool | None = None
    ) -> list[Action]:
        """The connection is gone; ``needs_user`` defaults to "only when no retry will fix it"."""
        self.connected = False
        actions: list[Action] = []
        # The response in flight is gone with the socket; what was buffered still plays out.
        for response in self._responses.values():
            if response.done:
                continue
            response.done = True
            if not response.cancel_sent:
                self._pending_reply = True  # the answer was lost with the socket: ask again
                turn = self._turn_of_response(response.response_id)
                if turn is not None:
                    turn.awaiting_retry = True
            for item_id in response.items:
                item = self._items[item_id]
                if not item.audio_complete:
                    item.heard_ms = item.audio_ms  # the rest never arrives: shown as cut
                    self._set_history_text(item_id, self._heard_text(item))
                if item.has_audio and not item.audio_done:
                    item.audio_done = True
                    actions.append(EndAudio(item_id))
        self._active_response = None
        self._cancel_cue()
        level: Literal["warning", "error"] = "warning" if retrying else "error"
        actions.append(Notice(level, message, needs_user=not retrying if needs_user is None else needs_user))
        if self.state is State.IDLE:
            return actions
        return actions + self._set_state(State.RECONNECTING if retrying else State.ERROR)

    # ------------------------------------------------------------------------------------------
    # Tools
    # ------------------------------------------------------------------------------------------
    def tool_finished(self, call_id: str, output: str, ok: bool, now: float) -> list[Action]:
        call = self._calls.get(call_id)
        if call is None or call.output is not None:
            return []
        call.output = output
        self._history.append(_HistoryEntry("call_output", call_id, output))
        actions: list[Action] = [
            ToolActivity(call_id, call.name, "done" if ok else "failed", _tool_message(call, output, ok))
        ]
        if self.connected:
            actions.append(Send(p.ConversationItemCreate.function_call_output(call_id, output)))
        return actions + self._maybe_follow_up(call.response_id, now)

    # ------------------------------------------------------------------------------------------
    # Time
    # ------------------------------------------------------------------------------------------
    def tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        actions += self._decide_interruption(now)
        turn = self._current_turn()
        if turn is not None and turn.cue_deadline is not None and now >= turn.cue_deadline:
            turn.cue_deadline = None
            if not turn.metrics.cue_played:
                turn.metrics.cue_played = True
                self._cue_counter += 1
                cue_id = f"cue-{self._cue_counter}"
                self._cues_playing.append(cue_id)
                actions.append(PlayCue(cue_id))
        for call in self._calls.values():
            if (
                call.output is None
                and not call.slow_reported
                and now - call.started_at >= self.settings.slow_tool_after_s
            ):
                call.slow_reported = True
                actions.append(
                    ToolActivity(
                        call.call_id, call.name, "slow", f"Still working on {_tool_label(call.name)}..."
                    )
                )
        return actions

    # ------------------------------------------------------------------------------------------
    # Server events
    # ------------------------------------------------------------------------------------------
    def server_event(self, event: p.ServerEvent, now: float) -> list[Action]:
        match event:
            case p.SpeechStarted():
                return self._on_speech_started(event, now)
            case p.SpeechStopped():
                return self._on_speech_stopped(event, now)
            case p.InputAudioBufferCommitted():
                return self._on_committed(event, now)
            case p.InputAudioTranscriptionDelta():
                return self._on_user_delta(event, now)
            case p.InputAudioTranscriptionCompleted():
                return self._on_user_transcript(event, now)
            case p.InputAudioTranscriptionFailed():
                return self._on_user_transcript_failed(event, now)
            case p.ResponseCreated():
                return self._on_response_created(event, now)
            case p.ResponseOutputItemAdded():
                return self._on_output_item_added(event, now)
            case p.ResponseOutputAudioDelta():
                return self._on_audio_delta(event, now)
            case p.ResponseOutputAudioDone():
                return self._on_audio_done(event, now)
            case p.ResponseOutputAudioTranscriptDelta() | p.ResponseOutputTextDelta():
                return self._on_transcript_delta(event, now)
            case p.ResponseOutputAudioTranscriptDone() | p.ResponseOutputTextDone():
                return self._on_transcript_done(event, now)
            case p.ResponseFunctionCallArgumentsDone():
                return self._on_arguments_done(event, now)
            case p.ResponseDone():
                return self._on_response_done(event, now)
            case p.ErrorEvent():
                return self._on_error(event, now)
            case _:  # what the conversation does not act on: session reports, item lifecycle, ...
                return []

    def _on_speech_started(self, event: p.SpeechStarted, now: float) -> list[Action]:
        actions: list[Action] = []
        if self._audio_playing():
            if self._interruption is not None or not self._local_in_speech:
                # The local decision wins while the assistant talks: the server heard silence
                # for the echo (mic_frame), so this is its detector on a noise or on audio from
                # before the answer; a paused answer waits for the local verdict.
                return []
            # The user was already talking when the answer began (no onset over it to detect).
            actions += self._interrupt_assistant(now, onset_at=None, server_cancels=self._server_interrupts())
        if self.state is not State.USER_SPEAKING:
            self._begin_user_turn(now)
        return actions + self._set_state(State.USER_SPEAKING)

    def _on_speech_stopped(self, event: p.SpeechStopped, now: float) -> list[Action]:
        turn = self._begin_user_turn(now)
        local_end = self._local_speech_end
        turn.metrics.user_speech_end = local_end if local_end is not None and local_end <= now else now
        turn.user_item_id = event.item_id or turn.user_item_id
        self._pending_reply = True
        return self._await_response(now)

    def _on_committed(self, event: p.InputAudioBufferCommitted, now: float) -> list[Action]:
        turn = self._current_turn()
        if turn is not None and turn.user_item_id in (None, event.item_id):
            turn.user_item_id = event.item_id
        if not any(e.kind == "user" and e.key == event.item_id for e in self._history):
            self._history.append(_HistoryEntry("user", event.item_id))
        self._unheard.committed()
        return []

    def _on_user_delta(self, event: p.InputAudioTranscriptionDelta, now: float) -> list[Action]:
        return [Transcript("user", event.item_id, event.delta, final=False)]

    def _on_user_transcript(self, event: p.InputAudioTranscriptionCompleted, now: float) -> list[Action]:
        text = event.transcript.strip()
        self._set_history_text(event.item_id, text, kind="user")
        self._unheard.confirmed()
        for turn in reversed(self._turns):
            if turn.user_item_id == event.item_id:
                turn.user_text = text
                break
        return [Transcript("user", event.item_id, text, final=True)]

    def _on_user_transcript_failed(self, event: p.InputAudioTranscriptionFailed, now: float) -> list[Action]:
        return [Transcript("user", event.item_id, "(not transcribed)", final=True)]

    def _on_response_created(self, event: p.ResponseCreated, now: float) -> list[Action]:
        self._responses[event.response_id] = _Response(event.response_id)
        self._active_response = event.response_id
        turn = self._current_turn()
        if turn is None or (turn.completed and not turn.awaiting_retry):
            turn = self._begin_user_turn(now)  # a response the server started on its own
        turn.response_ids.append(event.response_id)
        turn.awaiting_retry = False
        self._pending_reply = False
        if self.state not in (State.USER_SPEAKING, State.ASSISTANT_SPEAKING):
            return self._set_state(State.THINKING)
        return []

    def _on_output_item_added(self, event: p.ResponseOutputItemAdded, now: float) -> list[Action]:
        response = self._response(event.response_id)
        if event.item.type == "message" and event.item.id is not None:
            self._assistant_item(event.item.id, response.response_id)
        return []

    def _on_audio_delta(self, event: p.ResponseOutputAudioDelta, now: float) -> list[Action]:
        item = self._assistant_item(event.item_id, event.response_id)
        if item.interrupted or item.audio_done:
            return []  # late audio of a cancelled item must never play
        item.has_audio = True
        item.audio_ms += len(event.audio) / 2 / p.PCM_RATE * 1000.0
        actions: list[Action] = []
        turn = self._turn_of_response(event.response_id)
        if turn is not None:
            turn.cue_deadline = None
        if self._cues_playing:
            actions.append(Halt(tuple(self._cues_playing)))
        actions.append(PlayAudio(event.item_id, event.audio))
        if self.state is not State.ASSISTANT_SPEAKING and self.state is not State.USER_SPEAKING:
            actions += self._set_state(State.ASSISTANT_SPEAKING)
        return actions

    def _on_audio_done(self, event: p.ResponseOutputAudioDone, now: float) -> list[Action]:
        item = self._items.get(event.item_id)
        if item is None or item.audio_done:
            return []
        item.audio_done = item.audio_complete = True
        return [] if item.interrupted else [EndAudio(event.item_id)]

    def _on_transcript_delta(
        self, event: p.ResponseOutputAudioTranscriptDelta | p.ResponseOutputTextDelta, now: float
    ) -> list[Action]:
        item = self._assistant_item(event.item_id, event.response_id)
        if item.interrupted:
            return []
        item.transcript += event.delta
        return [Transcript("assistant", event.item_id, event.delta, final=False)]

    def _on_transcript_done(
        self, event: p.ResponseOutputAudioTranscriptDone | p.ResponseOutputTextDone, now: float
    ) -> list[Action]:
        item = self._assistant_item(event.item_id, event.response_id)
        if item.interrupted:
            return []
        text = event.transcript if isinstance(event, p.ResponseOutputAudioTranscriptDone) else event.text
        item.transcript = text
        self._set_history_text(item.item_id, text)
        return []

    def _on_arguments_done(self, event: p.ResponseFunctionCallArgumentsDone, now: float) -> list[Action]:
        if event.call_id in self._calls:
            return []
        response = self._response(event.response_id)
        call = _Call(event.call_id, event.name, event.arguments, event.response_id, now)
        self._calls[event.call_id] = call
        response.calls.append(event.call_id)
        self._history.append(_HistoryEntry("call", event.call_id, event.arguments, event.name))
        actions: list[Action] = [
            RunTool(event.call_id, event.name, event.arguments),
            ToolActivity(event.call_id, event.name, "started", f"{_tool_label(event.name).capitalize()}..."),
        ]
        turn = self._turn_of_response(event.response_id)
        if turn is not None:
            turn.cue_deadline = None
        if not self._audio_playing():
            actions += self._set_state(State.TOOL_RUNNING)
        return actions

    def _on_response_done(self, event: p.ResponseDone, now: float) -> list[Action]:
        response = self._response(event.response_id)
        response.done = True
        self._unheard.confirmed()  # answered (or cancelled for newer speech, which is not yet committed)
        if self._active_response == event.response_id:
            self._active_response = None
        actions: list[Action] = []
        for item_id in response.items:
            item = self._items[item_id]
            if item.has_audio and not item.audio_done:
                item.audio_done = True
                if not item.interrupted:
                    actions.append(EndAudio(item_id))
            if not item.has_audio and not item.interrupted:
                item.played_out = True  # a text-only item has nothing left to play
        if event.status == "failed":
            detail = event.status_details.error_message if event.status_details else None
            reason = one_line(detail or "the response failed")
            actions.append(Notice("error", f"The assistant could not answer: {reason}."))
        if response.calls:
            actions += self._maybe_follow_up(event.response_id, now)
            if any(self._calls[c].output is None for c in response.calls) and not self._audio_playing():
                actions += self._set_state(State.TOOL_RUNNING)
        return actions + self._maybe_complete_turn_of(event.response_id, now)

    def _on_error(self, event: p.ErrorEvent, now: float) -> list[Action]:
        if event.code in BENIGN_ERROR_CODES:
            return []
        text = one_line(event.message or event.code or "unknown error")
        return [Notice("error", f"The server reported a problem: {text}")]

    # ------------------------------------------------------------------------------------------
    # Internals
    # ------------------------------------------------------------------------------------------
    def _set_state(self, state: State) -> list[Action]:
        if state is self.state:
            return []
        self.state = state
        return [StateChanged(state, self.muted)]

    def _session_config(self) -> p.Session:
        if self.settings.push_to_talk:
            return replace(self.settings.session, turn_detection=None)
        return self.settings.session

    def _server_interrupts(self) -> bool:
        detection = self._session_config().turn_detection
        return detection is not None and detection.interrupt_response

    def _current_turn(self) -> _Turn | None:
        return self._turns[-1] if self._turns else None

    def _begin_user_turn(self, now: float) -> _Turn:
        current = self._current_turn()
        if current is not None and not current.completed and not current.response_ids:
            # Still the same user turn (e.g. local detector, then the server's speech_started).
            if self._local_speech_start is not None and current.speech_onset_at is None:
                current.speech_onset_at = self._local_speech_start
            return current
        self._turn_number += 1
        turn = _Turn(
            TurnMetrics(turn=self._turn_number, backend=self.settings.backend),
            speech_onset_at=self._local_speech_start,
            underruns_at_start=self._underruns,
        )
        self._turns.append(turn)
        del self._turns[:-16]  # old turns are done with; keep a few for late events
        return turn

    def _await_response(self, now: float) -> list[Action]:
        turn = self._current_turn()
        if turn is not None and not turn.metrics.cue_played:
            turn.cue_deadline = now + self.settings.cue_after_s
        return self._set_state(State.THINKING)

    def _cancel_cue(self) -> None:
        for turn in self._turns:
            turn.cue_deadline = None

    def _response(self, response_id: str) -> _Response:
        response = self._responses.get(response_id)
        if response is None:
            # Events for a response whose response.created we never saw (e.g. after a reconnect).
            response = _Response(response_id)
            self._responses[response_id] = response
        return response

    def _assistant_item(self, item_id: str, response_id: str) -> _AssistantItem:
        item = self._items.get(item_id)
        if item is None:
            response = self._response(response_id)
            # A response the user already cut off may still send items: none of them may play.
            item = _AssistantItem(item_id, response_id, interrupted=response.cancel_sent)
            self._items[item_id] = item
            response.items.append(item_id)
            self._history.append(_HistoryEntry("assistant", item_id))
        return item

    def _turn_of_response(self, response_id: str) -> _Turn | None:
        for turn in reversed(self._turns):
            if response_id in turn.response_ids:
                return turn
        return None

    def _audio_playing(self) -> bool:
        return bool(self._items_playing())

    def _cancel_active_response(self) -> list[Action]:
        response_id = self._active_response
        if response_id is None or not self.connected:
            return []
        response = self._responses[response_id]
        if response.done or response.cancel_sent:
            return []
        response.cancel_sent = True
        return [Send(p.ResponseCancel(response_id))]

    def _interrupt_assistant(
        self, now: float, onset_at: float | None, server_cancels: bool = False
    ) -> list[Action]:
        """The user takes the floor: stop the assistant's response and drop its pending audio."""
        actions: list[Action] = []
        self._interruption = None  # decided: whatever was paused is stopped for good
        playing = self._audio_playing()
        if playing:
            actions.append(Halt())
        if not server_cancels:
            actions += self._cancel_active_response()
        elif self._active_response is not None:
            self._responses[self._active_response].cancel_sent = True
        if playing and onset_at is not None:
            for response_id in {i.response_id for i in self._items_playing()}:
                turn = self._turn_of_response(response_id)
                if turn is not None:
                    turn.speech_onset_at = onset_at
                    turn.metrics.barge_in = True
        # Audio still arriving for what was interrupted must not play. Items that were playing
        # stay open until the player reports what the listener heard of them.
        doomed = self._items_playing()
        for item in doomed:
            item.halt_pending = True
        if self._active_response is not None:
            doomed += [self._items[i] for i in self._responses[self._active_response].items]
        for item in doomed:
            if not item.played_out:
                item.interrupted = True
        self._cancel_cue()
        return actions

    def _items_playing(self) -> list[_AssistantItem]:
        return [i for i in self._items.values() if i.has_audio and not i.played_out and not i.interrupted]

    def _outputs_awaiting_follow_up(self) -> bool:
        return any(
            r.calls and not r.follow_up_sent and all(self._calls[c].output is not None for c in r.calls)
            for r in self._responses.values()
        )

    def _maybe_follow_up(self, response_id: str, now: float) -> list[Action]:
        """Once every tool call of a finished response has its output, ask for the answer."""
        response = self._response(response_id)
        if not response.done or response.follow_up_sent or not response.calls:
            return []
        if any(self._calls[c].output is None for c in response.calls):
            return []
        if not self.connected:
            return []  # sent after the reconnect, with the replay
        response.follow_up_sent = True
        turn = self._turn_of_response(response_id)
        if turn is not None and turn is not self._current_turn():
            return []  # the user has spoken since; the server answers that turn, outputs included
        if self.state is State.USER_SPEAKING:
            return []
        self._pending_reply = True
        actions: list[Action] = [Send(p.ResponseCreate())]
        return actions + self._set_state(State.THINKING)

    def _maybe_complete_turn_of(self, response_id: str, now: float) -> list[Action]:
        turn = self._turn_of_response(response_id)
        if turn is None or turn.completed or turn.awaiting_retry:
            return []
        responses = [self._responses[r] for r in turn.response_ids if r in self._responses]
        if not all(r.done or r.cancel_sent for r in responses):
            return []
        items = [self._items[i] for r in responses for i in r.items]
        if any(i.halt_pending or not (i.played_out or i.interrupted) for i in items):
            return []
        if any(r.calls and not r.follow_up_sent and not r.cancel_sent for r in responses):
            return []  # tool outputs still on their way; the answer comes in a follow-up response
        cancelled = any(r.cancel_sent for r in responses)
        if not items and not cancelled and any(r.calls for r in responses):
            return []  # only tool calls so far: the follow-up response carries the answer
        turn.completed = True
        turn.metrics.underruns = self._underruns - turn.underruns_at_start
        assistant_text = " ".join(self._heard_text(i) for i in items if i.transcript).strip()
        actions: list[Action] = []
        for item in items:
            if not item.interrupted and item.transcript:
                actions.append(Transcript("assistant", item.item_id, self._heard_text(item), final=True))
        actions.append(TurnCompleted(turn.metrics, turn.user_text, assistant_text))
        if self.state in (State.ASSISTANT_SPEAKING, State.THINKING, State.TOOL_RUNNING):
            actions += self._set_state(State.LISTENING if self.connected else self.state)
        return actions

    def _heard_text(self, item: _AssistantItem) -> str:
        if item.heard_ms is None:
            return item.transcript
        return cut_transcript(item.transcript, item.heard_ms, item.audio_ms, item.audio_complete)

    def _set_history_text(self, key: str, text: str, kind: str = "assistant") -> None:
        for entry in reversed(self._history):
            if entry.key == key and entry.kind == kind:
                entry.text = text
                return
        if kind == "user":
            self._history.append(_HistoryEntry("user", key, text))

    def heard_transcript(self) -> list[tuple[str, str]]:
        """The conversation so far as (role, text), the assistant's answers as far as the user heard them."""
        return [(e.kind, e.text) for e in self._history if e.kind in ("user", "assistant") and e.text]

    def _replay(self) -> list[Action]:
        """The conversation so far, as text items, for a fresh server session."""
        actions: list[Action] = []
        entries = [e for e in self._history if e.text or e.kind == "call"][-self.settings.replay_limit :]
        replayed_calls = {e.key for e in entries if e.kind == "call"}
        for entry in entries:
            if entry.kind == "user":
                actions.append(Send(p.ConversationItemCreate.message("user", entry.text)))
            elif entry.kind == "assistant":
                actions.append(Send(p.ConversationItemCreate.message("assistant", entry.text)))
            elif entry.kind == "call":
                actions.append(
                    Send(p.ConversationItemCreate.function_call(entry.key, entry.name, entry.text))
                )
            elif entry.key in replayed_calls:
                # An output without its call would be rejected by the server.
                actions.append(Send(p.ConversationItemCreate.function_call_output(entry.key, entry.text)))
        return actions


def _chunks(frames: list[bytes], size: int = 24000) -> list[bytes]:
    """Frames joined into appends of about half a second (``size`` bytes of 24 kHz PCM16)."""
    chunks: list[bytes] = []
    current = bytearray()
    for frame in frames:
        current += frame
        if len(current) >= size:
            chunks.append(bytes(current))
            current.clear()
    if current:
        chunks.append(bytes(current))
    return chunks


def _tool_label(name: str) -> str:
    labels = {"create_ticket": "creating a ticket", "search_knowledge_base": "looking that up"}
    return labels.get(name, f"running {name}")


def _tool_message(call: _Call, output: str, ok: bool) -> str:
    try:
        data = json.loads(output)
    except ValueError:
        data = None
    if isinstance(data, dict):
        if ok and isinstance(data.get("message"), str):
            # "shown": text the tool sent somewhere on the user's behalf, which they must be able to read.
            shown = data.get("shown")
            return f"{data['message']}\n{shown}" if isinstance(shown, str) and shown else str(data["message"])
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return f"{call.name} failed: {error['message']}"
    return f"{call.name} {'finished' if ok else 'failed'}"
