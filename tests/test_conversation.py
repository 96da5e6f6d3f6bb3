"""The conversation state machine, driven with recorded-style server events and local inputs."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from app.core import protocol as p
from app.core import wire
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
from app.core.conversation import Conversation, ConversationSettings
from app.core.hearing import Hearing, MicFrame
from tests import server_events as s

ANSWER = "You can reset your password at the self service portal, then sign in again."


class Harness:
    def __init__(self, **settings: Any) -> None:
        config = p.Session(
            instructions="Be a helpful IT technician.", transcription=p.Transcription("whisper-1")
        )
        self.conv = Conversation(ConversationSettings(session=config, **settings))
        self.now = 100.0
        self.log: list[Action] = []

    def run(self, actions: list[Action]) -> list[Action]:
        self.log += actions
        return actions

    def state(self) -> State:
        """The conversation's state now. A call, not ``h.conv.state``: mypy would keep an asserted
        attribute narrowed across the calls that change it and reject the next assert."""
        return self.conv.state

    def at(self, now: float) -> Harness:
        self.now = now
        return self

    def feed(self, *events: dict[str, Any]) -> list[Action]:
        out: list[Action] = []
        for event in events:
            out += self.run(self.conv.server_event(p.parse_server_event(event), self.now))
        return out

    def connect(self) -> list[Action]:
        self.run(self.conv.start(self.now))
        return self.run(self.conv.connected_to_server(False, self.now))

    def barge_in(self, at: float, confirm: bool = True) -> list[Action]:
        """A local barge-in; ``confirm``: the user goes on talking until the machine decides."""
        actions = self.run(self.conv.local_speech("barge_in", at, self.now))
        if confirm:
            self.now = max(self.now, at + 0.8)  # past the shortest turn plus the hangover
            actions += self.run(self.conv.tick(self.now))
        return actions

    def halted(self, played: dict[str, float], silent_at: float) -> list[Action]:
        return self.run(self.conv.playback_halted(played, silent_at, self.now))

    def user_turn(self, item: str = "item_u1", speech_end: float | None = None) -> list[Action]:
        out = self.feed(s.speech_started(item))
        if speech_end is not None:
            self.now = max(self.now, speech_end + 0.3)  # decided after the detector's hangover
            out += self.run(self.conv.local_speech("speech_end", speech_end, self.now))
        out += self.feed(s.speech_stopped(item), s.committed(item))
        return out


def sent(actions: list[Action], kind: str | None = None) -> list[dict[str, Any]]:
    return [wire.write(a.event) for a in actions if isinstance(a, Send) and (kind is None or a.type == kind)]


def of(actions: list[Action], cls: type[Any]) -> list[Any]:
    return [a for a in actions if isinstance(a, cls)]


def states(actions: list[Action]) -> list[State]:
    return [a.state for a in actions if isinstance(a, StateChanged)]


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.connect()
    return harness


# --- session and microphone ------------------------------------------------------------------


def test_connect_sends_session_update_and_listens() -> None:
    h = Harness()
    assert states(h.run(h.conv.start(h.now))) == [State.CONNECTING]
    actions = h.run(h.conv.connected_to_server(False, h.now))
    (update,) = sent(actions, "session.update")
    assert update["session"]["type"] == "realtime"
    assert update["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert states(actions) == [State.LISTENING]


def test_mic_frames_go_out_only_when_connected_and_not_muted(h: Harness) -> None:
    frame = MicFrame(b"\x01\x00" * 480, 100.0)
    (append,) = sent(h.conv.mic_frame(frame), "input_audio_buffer.append")
    assert append["audio"]
    muted = h.conv.set_muted(True, h.now)
    assert sent(muted, "input_audio_buffer.clear")
    assert h.conv.mic_frame(frame) == []
    h.conv.set_muted(False, h.now)
    h.conv.disconnected("gone", retrying=True, now=h.now)
    assert h.conv.mic_frame(frame) == []


# --- a whole turn ----------------------------------------------------------------------------


def test_a_spoken_turn_end_to_end_with_metrics(h: Harness) -> None:
    actions = h.at(100.0).user_turn(speech_end=100.4)
    assert states(actions) == [State.USER_SPEAKING, State.THINKING]
    h.at(100.9).feed(s.user_transcript("item_u1", "I forgot my password"))
    actions = h.at(101.0).feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=2000))
    plays = of(actions, PlayAudio)
    assert len(plays) == 4 and {a.item_id for a in plays} == {"item_a1"}
    assert sum(len(a.pcm16) for a in plays) == 2 * 24 * 2000
    assert of(actions, EndAudio) == [EndAudio("item_a1")]
    assert State.ASSISTANT_SPEAKING in states(actions)
    assert not of(actions, TurnCompleted)  # still playing
    h.run(h.conv.first_audio("item_a1", 100.85))
    done = h.at(103.2).run(h.conv.item_played_out("item_a1", 103.2))
    (completed,) = of(done, TurnCompleted)
    assert completed.user_text == "I forgot my password"
    assert completed.assistant_text == ANSWER
    m = completed.metrics.as_dict()
    assert m["turn"] == 1 and m["user_speech_end"] == 100.4 and m["first_audio_out"] == 100.85
    assert m["ttfa_ms"] == pytest.approx(450.0)
    assert m["barge_in"] is False and m["halt_ms"] is None and m["played_ms"] == pytest.approx(2000.0)
    assert set(m) >= {
        "turn",
        "user_speech_end",
        "first_audio_out",
        "ttfa_ms",
        "barge_in",
        "halt_ms",
        "played_ms",
        "truncated_at_ms",
        "underruns",
        "reconnects",
        "backend",
    }
    json.loads(completed.metrics.to_json())
    assert states(done) == [State.LISTENING]
    finals = [a for a in done if isinstance(a, Transcript) and a.final and a.role == "assistant"]
    assert finals and finals[0].text == ANSWER and not finals[0].interrupted


def test_a_turn_is_under_way_from_the_first_word_until_the_answer_has_played(h: Harness) -> None:
    assert not h.conv.under_way  # listening, nobody speaking: the audio may idle
    h.run(h.conv.local_speech("speech_start", 99.9, 100.0))
    assert h.conv.under_way  # the local detector heard the user before the server did
    h.at(100.0).user_turn(speech_end=100.4)
    assert h.conv.under_way  # waiting for the answer
    h.at(101.0).feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=1000))
    assert h.conv.under_way  # speaking
    h.at(102.2).run(h.conv.item_played_out("item_a1", 102.2))
    assert h.state() is State.LISTENING and not h.conv.under_way


# --- barge-in --------------------------------------------------------------------------------


def test_barge_in_before_the_first_delta_cancels_and_drops_late_audio(h: Harness) -> None:
    h.user_turn()
    h.feed(s.response_created("resp_1"))
    actions = h.barge_in(at=101.0)
    assert sent(actions, "response.cancel") == [wire.write(p.ResponseCancel("resp_1"))]
    assert not sent(actions, "conversation.item.truncate")
    assert not sent(actions, "conversation.item.truncate")
    late = h.feed(
        s.item_added("resp_1", "item_a1"),
        s.audio_delta("resp_1", "item_a1", s.pcm(200)),
        s.transcript_delta("resp_1", "item_a1", "You can"),
    )
    assert not of(late, PlayAudio) and not of(late, Transcript)
    h.feed(s.response_done("resp_1", "cancelled", "client_cancelled"))
    assert h.state() is State.USER_SPEAKING


def test_barge_in_mid_item_truncates_at_what_was_heard(h: Harness) -> None:
    h.at(100.0).user_turn(speech_end=100.3)
    events = s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=4000)
    h.at(100.8).feed(*events[:-3])  # all audio in, response still in progress
    actions = h.at(102.0).barge_in(at=101.95)
    assert sent(actions, "response.cancel") == [wire.write(p.ResponseCancel("resp_1"))]
    assert of(actions, Halt) == [Halt()]  # the audio thread paused the player; now it is over
    assert h.state() is State.USER_SPEAKING
    actions = h.at(102.03).halted({"item_a1": 1212.7}, silent_at=102.02)
    (truncate,) = sent(actions, "conversation.item.truncate")
    assert truncate == wire.write(p.ConversationItemTruncate("item_a1", 0, 1212))
    (cut,) = [a for a in actions if isinstance(a, Transcript)]
    assert cut.interrupted and cut.final
    assert cut.text.endswith("...") and ANSWER.startswith(cut.text[:-3])
    assert 0.2 < len(cut.text) / len(ANSWER) < 0.4  # about 30 % of the audio was heard
    completed = of(h.feed(s.response_done("resp_1", "cancelled", "client_cancelled")), TurnCompleted)
    completed += of(actions, TurnCompleted)
    (turn,) = completed
    assert turn.metrics.barge_in and turn.metrics.truncated_at_ms == 1212
    assert turn.metrics.halt_ms == pytest.approx(70.0)
    assert turn.metrics.played_ms == pytest.approx(1212.7)
    assert turn.assistant_text == cut.text
    # A handoff puts the answer on the ticket as the user heard it, not as the model wrote it.
    assert h.conv.heard_transcript()[-1] == ("assistant", cut.text)
    # Late audio of the cut item never plays.
    assert not of(h.feed(s.audio_delta("resp_1", "item_a1", s.pcm(100))), PlayAudio)


def test_turn_completes_only_after_the_halt_report(h: Harness) -> None:
    h.user_turn()
    h.feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=4000)[:-3])
    h.barge_in(at=101.0)
    early = h.feed(s.response_done("resp_1", "cancelled", "client_cancelled"))
    assert not of(early, TurnCompleted)  # what was heard is not known yet
    (turn,) = of(h.halted({"item_a1": 1000.0}, silent_at=101.05), TurnCompleted)
    assert turn.metrics.played_ms == 1000.0 and turn.assistant_text.endswith("...")


def test_item_that_ends_before_the_halt_reaches_it_counts_as_heard_whole(h: Harness) -> None:
    h.user_turn()
    h.feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=1000))
    h.barge_in(at=101.0)
    (turn,) = of(h.run(h.conv.item_played_out("item_a1", h.now)), TurnCompleted)
    assert turn.metrics.played_ms == pytest.approx(1000.0) and turn.assistant_text == ANSWER


def test_barge_in_while_buffered_audio_plays_after_response_done(h: Harness) -> None:
    h.user_turn()
    h.feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=3000))
    actions = h.barge_in(at=101.0)
    assert not sent(actions, "response.cancel")  # the response is over; only its audio plays on
    actions = h.halted({"item_a1": 900.0}, silent_at=101.05)
    assert sent(actions, "conversation.item.truncate") == [
        wire.write(p.ConversationItemTruncate("item_a1", 0, 900))
    ]


def test_barge_in_after_the_item_finished_playing_sends_nothing(h: Harness) -> None:
    h.user_turn()
    h.feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=1000))
    h.run(h.conv.item_played_out("item_a1", h.now))
    actions = h.barge_in(at=103.0) + h.halted({}, silent_at=103.01)
    assert not sent(actions)
    # Even a halt report naming the finished item must not truncate it.
    assert not sent(h.halted({"item_a1": 1000.0}, silent_at=103.02))


def test_server_cut_answer_heard_to_its_end_is_still_marked_as_cut(h: Harness) -> None:
    h.user_turn()
    h.feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=4000)[:6])  # half the audio
    h.run(h.conv.local_speech("speech_start", h.now - 0.1, h.now))
    h.feed(s.speech_started("item_u2"))  # the server interrupts its own answer...
    h.feed(s.response_done("resp_1", "cancelled", "turn_detected"))
    actions = h.halted({"item_a1": 2000.0}, silent_at=h.now)  # ...after all that arrived was heard
    (cut,) = [a for a in actions if isinstance(a, Transcript)]
    assert cut.interrupted and cut.text.endswith("...")


def test_truncate_is_clamped_to_the_audio_the_item_holds(h: Harness) -> None:
    h.user_turn()
    h.feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=2000)[:-3])
    h.barge_in(at=101.0)
    (truncate,) = sent(h.halted({"item_a1": 2600.0}, silent_at=101.1), "conversation.item.truncate")
    assert truncate["audio_end_ms"] == 2000


def test_no_cancel_without_an_active_response(h: Harness) -> None:
    actions = h.barge_in(at=100.5)
    assert not sent(actions)
    assert h.state() is State.USER_SPEAKING


def test_server_speech_started_while_playing_halts_without_double_cancel(h: Harness) -> None:
    h.user_turn()
    h.feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=3000)[:-3])
    # The user was already talking when the answer began: no onset over it for the detector.
    h.run(h.conv.local_speech("speech_start", h.now - 0.1, h.now))
    actions = h.feed(s.speech_started("item_u2"))
    assert of(actions, Halt) == [Halt()]
    assert not sent(actions, "response.cancel")  # interrupt_response: the server cancels itself
    assert sent(h.halted({"item_a1": 500.0}, silent_at=h.now), "conversation.item.truncate")


def test_server_speech_started_cancels_when_the_server_does_not_interrupt() -> None:
    h = Harness()
    h.conv.settings.session = p.Session(
        instructions="x", turn_detection=p.TurnDetection(interrupt_response=False)
    )
    h.connect()
    h.user_turn()
    h.feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=3000)[:-3])
    h.run(h.conv.local_speech("speech_start", h.now - 0.1, h.now))
    assert sent(h.feed(s.speech_started("item_u2")), "response.cancel") == [
        wire.write(p.ResponseCancel("resp_1"))
    ]


# --- false interruptions and what the server hears ---------------------------------------------


def frame_at(at: float, hearing: Hearing, fill: int = 1) -> MicFrame:
    return MicFrame(bytes([fill, 0]) * 480, at, hearing)


def test_a_cough_pauses_the_answer_and_it_resumes_with_nothing_sent(h: Harness) -> None:
    h.at(100.0).user_turn(speech_end=100.3)
    h.at(100.8).feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=4000)[:-3])
    paused = h.at(102.0).barge_in(at=101.96, confirm=False)
    assert not sent(paused) and not of(paused, Halt)  # the player is paused, the answer kept
    assert h.state() is State.USER_SPEAKING
    # The cough's sound while the verdict is open never reaches the server.
    assert h.conv.mic_frame(frame_at(102.0, "user")) == []
    assert h.conv.mic_frame(frame_at(102.02, "user")) == []
    ended = h.at(102.42).run(h.conv.local_speech("speech_end", 102.11, h.now))  # 150 ms of sound
    assert ended == []  # "Wait," is as short: the silence after it decides
    assert h.run(h.conv.tick(102.70)) == []
    resumed = h.run(h.conv.tick(102.72))  # 0.6 s of silence after the sound
    assert of(resumed, ResumeAudio) == [ResumeAudio()]
    assert not sent(resumed) and not of(resumed, Halt)
    assert h.state() is State.ASSISTANT_SPEAKING
    assert h.run(h.conv.tick(103.5)) == []  # the decision is final: no late cancel
    h.feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=4000)[-3:])
    (turn,) = of(h.run(h.conv.item_played_out("item_a1", 106.0)), TurnCompleted)
    assert turn.metrics.false_interruptions == 1 and not turn.metrics.barge_in
    assert turn.assistant_text == ANSWER  # one answer, whole: nothing was cut
    assert not [e for e in sent(h.log) if e["type"] in ("response.cancel", "conversation.item.truncate")]


def test_speech_that_goes_on_is_a_turn_and_the_held_audio_follows_the_cancel(h: Harness) -> None:
    h.at(100.0).user_turn(speech_end=100.3)
    h.at(100.8).feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=4000)[:-3])
    # Echo frames go out as silence but are kept: the words' first syllable may be in them.
    for i, at in enumerate((101.5, 101.8, 101.9)):
        (append,) = sent(h.conv.mic_frame(frame_at(at, "echo", fill=i + 1)), "input_audio_buffer.append")
        assert set(base64.b64decode(append["audio"])) == {0}
    h.at(102.0).barge_in(at=101.95, confirm=False)
    h.conv.mic_frame(frame_at(102.0, "user", fill=7))
    assert not sent(h.run(h.conv.tick(102.5)))  # 0.55 s in: a cough would have ended by now...
    decided = h.run(h.conv.tick(102.7))  # ...but the end of speech has not come: a turn
    assert of(decided, Halt) == [Halt()]
    appended = [base64.b64decode(e["audio"]) for e in sent(decided, "input_audio_buffer.append")]
    assert [a[0] for a in appended] == [2, 3, 7]  # from 0.3 s before the onset, in order
    kinds = [e["type"] for e in sent(decided)]
    assert kinds.index("response.cancel") < kinds.index("input_audio_buffer.append")
    (truncate,) = sent(h.halted({"item_a1": 1150.0}, silent_at=101.99), "conversation.item.truncate")
    assert truncate["audio_end_ms"] == 1150
    (append,) = sent(h.conv.mic_frame(frame_at(102.72, "user", fill=9)), "input_audio_buffer.append")
    assert base64.b64decode(append["audio"])[0] == 9  # live again


def _echo_frames(h: Harness, start: float, count: int) -> None:
    """``count`` 10 ms echo frames from ``start``, each marked by its number in its first byte."""
    for n in range(count):
        h.conv.mic_frame(MicFrame(bytes([n % 250 + 1, 0]) * 240, start + n * 0.01, "echo"))


def _held_marks(h: Harness, onset: float) -> list[int]:
    h.at(onset + 0.4).barge_in(at=onset, confirm=False)
    decided = [a for n in range(1, 20) for a in h.run(h.conv.tick(onset + 0.4 + n * 0.05))]
    assert of(decided, Halt)  # the user went on talking: a turn
    appended = b"".join(base64.b64decode(e["audio"]) for e in sent(decided, "input_audio_buffer.append"))
    return list(appended[::480])


def test_the_held_audio_reaches_back_by_time_whatever_the_frames_length(h: Harness) -> None:
    h.at(100.0).user_turn(speech_end=100.3)
    h.at(100.8).feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=4000)[:-3])
    # Two seconds of 10 ms echo frames, the last of them 0.335 s after the user's onset (the echo
    # verdict comes after the detector's): 0.635 s of them are wanted, 64 frames from 102.26.
    _echo_frames(h, 100.9, 200)
    assert _held_marks(h, onset=102.555) == [n % 250 + 1 for n in range(136, 200)]


def test_echo_frames_older_than_a_second_are_not_kept() -> None:
    h = Harness(prefix_s=3.0)
    h.connect()
    h.at(100.0).user_turn(speech_end=100.3)
    h.at(100.8).feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=4000)[:-3])
    _echo_frames(h, 100.9, 200)  # up to 102.89
    marks = _held_marks(h, onset=102.8)
    # Back to a second before the newest frame (the frame exactly a second back may fall either
    # side of the line), and nothing before it.
    assert marks == list(range(marks[0], 201)) and 100 <= marks[0] <= 101


def test_an_end_of_speech_after_the_shortest_turn_decides_at_once(h: Harness) -> None:
    h.user_turn()
    h.feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=4000)[:-3])
    h.at(102.0).barge_in(at=101.5, confirm=False)
    decided = h.at(102.2).run(h.conv.local_speech("speech_end", 101.9, h.now))  # 400 ms: "stop!"
    assert sent(decided, "response.cancel") and of(decided, Halt) and not of(decided, ResumeAudio)


def test_a_short_word_then_more_words_is_a_turn(h: Harness) -> None:
    h.user_turn()
    h.feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=4000)[:-3])
    h.at(101.0).barge_in(at=100.95, confirm=False)
    assert h.at(101.37).run(h.conv.local_speech("speech_end", 101.07, h.now)) == []  # "Wait,"
    assert h.at(101.45).run(h.conv.local_speech("speech_start", 101.44, h.now)) == []  # "actually..."
    assert not of(h.run(h.conv.tick(101.65)), ResumeAudio)  # talking again: no resume
    decided = h.run(h.conv.tick(102.05))  # 120 ms + at least 190 ms of speech: a turn
    assert sent(decided, "response.cancel") and of(decided, Halt)


def test_muting_while_paused_resumes_the_answer(h: Harness) -> None:
    h.user_turn()
    h.feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=4000)[:-3])
    h.barge_in(at=h.now, confirm=False)
    actions = h.run(h.conv.set_muted(True, h.now))
    assert of(actions, ResumeAudio) and not sent(actions, "response.cancel")


def test_clear_frames_go_out_as_captured_and_user_frames_too(h: Harness) -> None:
    hearings: tuple[Hearing, ...] = ("clear", "user")
    for hearing in hearings:
        (append,) = sent(h.conv.mic_frame(frame_at(100.0, hearing, fill=5)), "input_audio_buffer.append")
        assert base64.b64decode(append["audio"])[0] == 5


def test_server_speech_started_over_the_answer_is_ignored_while_the_local_detector_hears_nobody(
    h: Harness,
) -> None:
    h.user_turn()
    h.feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=4000)[:-3])
    actions = h.feed(s.speech_started("item_u2"))
    assert not of(actions, Halt) and not sent(actions)
    assert h.state() is State.ASSISTANT_SPEAKING


def test_two_interleaved_items_are_played_and_cut_separately(h: Harness) -> None:
    h.user_turn()
    h.feed(
        s.response_created("resp_1"), s.item_added("resp_1", "item_a"), s.item_added("resp_1", "item_b", 1)
    )
    actions = h.feed(
        s.audio_delta("resp_1", "item_a", s.pcm(500)),
        s.audio_delta("resp_1", "item_b", s.pcm(300), output_index=1),
        s.audio_delta("resp_1", "item_a", s.pcm(500)),
    )
    assert [(a.item_id, len(a.pcm16)) for a in of(actions, PlayAudio)] == [
        ("item_a", 24000),
        ("item_b", 14400),
        ("item_a", 24000),
    ]
    h.barge_in(at=101.0)
    truncates = sent(
        h.halted({"item_a": 600.0, "item_b": 0.0}, silent_at=101.05), "conversation.item.truncate"
    )
    assert sorted((t["item_id"], t["audio_end_ms"]) for t in truncates) == [("item_a", 600), ("item_b", 0)]


# --- tools -----------------------------------------------------------------------------------


def _tool_call(
    h: Harness, response: str, call: str, name: str = "create_ticket", done: bool = True
) -> list[Action]:
    events = [
        s.response_created(response),
        s.arguments_done(response, f"item_{call}", call, name, '{"summary": "VPN drops"}'),
    ]
    if done:
        events.append(s.response_done(response))
    return h.feed(*events)


def test_tool_call_runs_then_output_and_follow_up_response(h: Harness) -> None:
    h.user_turn()
    actions = _tool_call(h, "resp_1", "call_1")
    assert of(actions, RunTool) == [RunTool("call_1", "create_ticket", '{"summary": "VPN drops"}')]
    assert h.state() is State.TOOL_RUNNING
    assert not of(actions, TurnCompleted)
    output = json.dumps({"ticket_id": "HD-1042", "message": "Ticket HD-1042 created"})
    actions = h.run(h.conv.tool_finished("call_1", output, True, h.now))
    assert [e["item"]["type"] for e in sent(actions, "conversation.item.create")] == ["function_call_output"]
    assert sent(actions, "response.create")
    (activity,) = [a for a in actions if isinstance(a, ToolActivity)]
    assert activity.status == "done" and activity.message == "Ticket HD-1042 created"
    # The follow-up answer belongs to the same turn.
    done = h.feed(*s.spoken_answer("resp_2", "item_a2", "Your ticket is HD-1042.", audio_ms=800))
    done += h.run(h.conv.item_played_out("item_a2", h.now))
    (turn,) = of(done, TurnCompleted)
    assert turn.metrics.turn == 1 and turn.assistant_text == "Your ticket is HD-1042."


def test_text_a_tool_sent_for_the_user_is_shown_in_full(h: Harness) -> None:
    """attach_diagnostics: the user reads in the transcript exactly what went to the ticket."""
    h.user_turn()
    _tool_call(h, "resp_1", "call_1", name="attach_diagnostics")
    report = "Diagnostics from the user's computer (sent with their consent):\nVPN: no VPN adapter is up"
    output = json.dumps({"attached_to": "HD-1042", "shown": report, "message": "Attached to HD-1042:"})
    (activity,) = of(h.run(h.conv.tool_finished("call_1", output, True, h.now)), ToolActivity)
    assert activity.status == "done" and activity.message == f"Attached to HD-1042:\n{report}"


def test_parallel_tool_calls_answer_once_when_all_are_done(h: Harness) -> None:
    h.user_turn()
    h.feed(
        s.response_created("resp_1"),
        s.arguments_done("resp_1", "item_c1", "call_1", "search_knowledge_base", '{"query": "vpn"}'),
        s.arguments_done("resp_1", "item_c2", "call_2", "create_ticket", '{"summary": "x"}'),
        s.response_done("resp_1"),
    )
    first = h.run(h.conv.tool_finished("call_2", '{"ok": true}', True, h.now))
    assert sent(first, "conversation.item.create") and not sent(first, "response.create")
    second = h.run(h.conv.tool_finished("call_1", '{"results": []}', True, h.now))
    assert len(sent(second, "response.create")) == 1
    assert not sent(h.run(h.conv.tool_finished("call_1", "{}", True, h.now)))  # duplicate result


def test_tool_error_is_reported_not_raised(h: Harness) -> None:
    h.user_turn()
    _tool_call(h, "resp_1", "call_1")
    output = json.dumps({"error": {"type": "timeout", "message": "took too long"}})
    actions = h.run(h.conv.tool_finished("call_1", output, False, h.now))
    (activity,) = of(actions, ToolActivity)
    assert activity.status == "failed" and "took too long" in activity.message
    assert sent(actions, "response.create")  # the model explains the failure to the user


def test_slow_tool_reports_status_once(h: Harness) -> None:
    h.at(100.0).user_turn()
    _tool_call(h, "resp_1", "call_1")
    assert not of(h.run(h.conv.tick(101.4)), ToolActivity)
    (slow,) = of(h.run(h.conv.tick(101.6)), ToolActivity)
    assert slow.status == "slow" and "ticket" in slow.message
    assert not of(h.run(h.conv.tick(103.0)), ToolActivity)


def test_barge_in_during_a_tool_call_does_not_start_a_stale_answer(h: Harness) -> None:
    h.user_turn()
    _tool_call(h, "resp_1", "call_1")
    actions = h.barge_in(at=101.0)
    assert not sent(actions, "response.cancel")  # the tool-calling response is already done
    actions = h.run(h.conv.tool_finished("call_1", '{"ticket_id": "HD-1"}', True, h.now))
    assert sent(actions, "conversation.item.create")
    assert not sent(actions, "response.create")  # the server answers the user's new turn instead


def test_tool_running_while_speaking_keeps_talking(h: Harness) -> None:
    h.user_turn()
    h.feed(*s.spoken_answer("resp_1", "item_a1", "Let me look that up.", audio_ms=1500)[:-1])
    actions = h.feed(s.arguments_done("resp_1", "item_c", "call_1", "search_knowledge_base", "{}"))
    assert of(actions, RunTool) and h.state() is State.ASSISTANT_SPEAKING


# --- reconnect -------------------------------------------------------------------------------


def test_drop_mid_turn_then_reconnect_replays_and_resumes(h: Harness) -> None:
    h.user_turn()
    h.feed(s.user_transcript("item_u1", "my vpn keeps dropping"))
    h.feed(*s.spoken_answer("resp_1", "item_a1", "Which VPN profile do you use?", audio_ms=1000))
    h.run(h.conv.item_played_out("item_a1", h.now))
    h.feed(s.speech_started("item_u2"), s.speech_stopped("item_u2"), s.committed("item_u2"))
    h.feed(s.user_transcript("item_u2", "the corporate one"), s.response_created("resp_2"))
    h.feed(s.item_added("resp_2", "item_a2"), s.audio_delta("resp_2", "item_a2", s.pcm(300)))
    actions = h.run(h.conv.disconnected("The connection dropped; reconnecting in 0.3 s", True, h.now))
    assert of(actions, EndAudio) == [EndAudio("item_a2")]  # what arrived still plays out
    assert h.state() is State.RECONNECTING
    assert of(actions, Notice)[0].level == "warning"
    actions = h.run(h.conv.connected_to_server(True, h.now))
    kinds = [(e["type"], e.get("item", {}).get("role")) for e in sent(actions)]
    assert kinds[0] == ("session.update", None)
    replay = [e["item"] for e in sent(actions, "conversation.item.create")]
    assert [(i["role"], i["content"][0].get("text")) for i in replay] == [
        ("user", "my vpn keeps dropping"),
        ("assistant", "Which VPN profile do you use?"),
        ("user", "the corporate one"),
    ]
    assert sent(actions)[-1]["type"] == "response.create"  # the lost answer is asked for again
    assert h.state() is State.THINKING
    # The cut answer does not end the turn: the new answer belongs to it.
    done = h.feed(*s.spoken_answer("resp_3", "item_a3", "The corporate profile needs a reset.", audio_ms=900))
    done += h.run(h.conv.item_played_out("item_a2", h.now)) + h.run(h.conv.item_played_out("item_a3", h.now))
    (turn,) = of(done, TurnCompleted)
    assert turn.metrics.turn == 2 and turn.metrics.reconnects == 1
    assert turn.user_text == "the corporate one"
    assert turn.assistant_text.endswith("The corporate profile needs a reset.")


def test_barge_in_during_reconnect_is_local_only_and_the_replay_has_the_cut_text(h: Harness) -> None:
    h.user_turn()
    h.feed(s.user_transcript("item_u1", "printer jammed"))
    h.feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=4000))
    h.run(h.conv.disconnected("dropped", True, h.now))
    actions = h.barge_in(at=101.0) + h.halted({"item_a1": 2000.0}, silent_at=101.05)
    assert not sent(actions)  # no socket: nothing to cancel or truncate
    replay = sent(h.run(h.conv.connected_to_server(True, h.now)), "conversation.item.create")
    assistant = [e["item"]["content"][0]["text"] for e in replay if e["item"]["role"] == "assistant"]
    assert assistant and assistant[0].endswith("...") and len(assistant[0]) < len(ANSWER)


def _say(h: Harness, frames: int, start: float) -> bytes:
    """The user talks for ``frames`` 20 ms frames, as the local detector hears it; returns the audio."""
    h.run(h.conv.local_speech("speech_start", start, h.now))
    audio = b""
    for n in range(frames):
        pcm = bytes([n % 251 + 1, 0]) * 480
        audio += pcm
        h.run(h.conv.mic_frame(MicFrame(pcm, start + n * 0.02)))
    h.run(h.conv.local_speech("speech_end", start + frames * 0.02, h.now))
    return audio


def _appended(actions: list[Action]) -> bytes:
    return b"".join(base64.b64decode(e["audio"]) for e in sent(actions, "input_audio_buffer.append"))


def test_what_the_user_says_while_disconnected_is_passed_on_after_the_reconnect(h: Harness) -> None:
    h.run(h.conv.disconnected("dropped", True, h.now))
    spoken = _say(h, 50, start=h.now)
    actions = h.run(h.conv.connected_to_server(True, h.now))
    types = [e["type"] for e in sent(actions)]
    assert types[0] == "session.update" and types[-1] == "input_audio_buffer.append"
    assert spoken in _appended(actions)
    # The server's turn detection answers the words: asking as well would answer twice.
    assert "response.create" not in types
    assert any("meanwhile" in n.message for n in of(actions, Notice))
    # Said once: the next reconnect has nothing new to pass on.
    h.run(h.conv.disconnected("dropped", True, h.now))
    assert not sent(h.run(h.conv.connected_to_server(True, h.now)), "input_audio_buffer.append")


def test_a_request_the_drop_took_before_its_transcript_is_said_again(h: Harness) -> None:
    spoken = _say(h, 40, start=h.now)
    h.user_turn("item_u1")  # committed by the server, which dies before transcribing it
    h.feed(s.response_created("resp_1"))
    h.run(h.conv.disconnected("dropped", True, h.now))
    actions = h.run(h.conv.connected_to_server(True, h.now))
    assert spoken in _appended(actions)
    assert not sent(actions, "response.create")


def test_a_request_the_server_transcribed_is_not_said_again(h: Harness) -> None:
    _say(h, 40, start=h.now)
    h.user_turn("item_u1")
    h.feed(s.user_transcript("item_u1", "my vpn keeps dropping"), s.response_created("resp_1"))
    h.run(h.conv.mic_frame(MicFrame(b"\x00\x00" * 480, h.now)))  # silence after it
    h.run(h.conv.disconnected("dropped", True, h.now))
    actions = h.run(h.conv.connected_to_server(True, h.now))
    assert not sent(actions, "input_audio_buffer.append")
    replayed = [e["item"]["content"][0]["text"] for e in sent(actions, "conversation.item.create")]
    assert replayed == ["my vpn keeps dropping"]
    assert sent(actions)[-1]["type"] == "response.create"  # the lost answer, asked for from the text


def test_an_answered_request_is_not_said_again(h: Harness) -> None:
    _say(h, 40, start=h.now)
    h.user_turn("item_u1")  # no transcription on this server
    h.feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=1000))
    h.run(h.conv.disconnected("dropped", True, h.now))
    assert not sent(h.run(h.conv.connected_to_server(True, h.now)), "input_audio_buffer.append")


def test_echo_is_passed_on_as_the_silence_the_server_heard() -> None:
    h = Harness()
    h.connect()
    h.run(h.conv.disconnected("dropped", True, h.now))
    echo = MicFrame(b"\x7f\x7f" * 480, h.now, hearing="echo")
    h.run(h.conv.mic_frame(echo))
    _say(h, 10, start=h.now + 0.02)
    resent = _appended(h.run(h.conv.connected_to_server(True, h.now)))
    assert resent.startswith(bytes(960)) and b"\x7f\x7f" not in resent


def test_push_to_talk_passes_nothing_on_after_a_reconnect() -> None:
    h = Harness(push_to_talk=True)
    h.connect()
    h.run(h.conv.disconnected("dropped", True, h.now))
    h.conv.ptt_pressed = True
    _say(h, 20, start=h.now)
    assert not sent(h.run(h.conv.connected_to_server(True, h.now)), "input_audio_buffer.append")


def test_tool_finishing_while_disconnected_is_sent_after_reconnect(h: Harness) -> None:
    h.user_turn()
    h.feed(s.user_transcript("item_u1", "new laptop please"))
    _tool_call(h, "resp_1", "call_1")
    h.run(h.conv.disconnected("dropped", True, h.now))
    assert not sent(h.run(h.conv.tool_finished("call_1", '{"ticket_id": "HD-7"}', True, h.now)))
    actions = h.run(h.conv.connected_to_server(True, h.now))
    items = [e["item"]["type"] for e in sent(actions, "conversation.item.create")]
    assert items == ["message", "function_call", "function_call_output"]
    assert sent(actions)[-1]["type"] == "response.create"


def test_fatal_disconnect_is_an_error_state(h: Harness) -> None:
    actions = h.run(h.conv.disconnected("The API key was rejected", False, h.now))
    assert h.state() is State.ERROR and of(actions, Notice)[0].level == "error"


# --- errors and unknowns ---------------------------------------------------------------------


def test_unknown_and_malformed_events_change_nothing(h: Harness) -> None:
    before = h.state()
    assert h.feed({"type": "response.brand_new_thing", "x": 1}) == []
    assert h.run(h.conv.server_event(p.parse_server_event("{not json"), h.now)) == []
    assert h.state() is before


def test_error_events_become_notices_except_benign_races(h: Harness) -> None:
    (notice,) = of(h.feed(s.error("invalid_value", "Invalid value: 'robot'")), Notice)
    assert notice.level == "error" and "robot" in notice.message
    assert h.feed(s.error("response_cancel_not_active", "no active response")) == []
    assert h.state() is State.LISTENING


# --- typed text, mute, push-to-talk, cue -----------------------------------------------------


def test_typed_text_interrupts_and_asks(h: Harness) -> None:
    h.user_turn()
    h.feed(*s.spoken_answer("resp_1", "item_a1", ANSWER, audio_ms=3000)[:-3])
    actions = h.run(h.conv.send_text("  actually it's the printer  ", h.now))
    assert of(actions, Halt) == [Halt()]
    types = [e["type"] for e in sent(actions)]
    assert types == ["response.cancel", "conversation.item.create", "response.create"]
    assert (
        sent(actions, "conversation.item.create")[0]["item"]["content"][0]["text"]
        == "actually it's the printer"
    )
    assert h.run(h.conv.send_text("   ", h.now)) == []


def test_push_to_talk_turns_off_server_turn_detection_and_commits_on_release() -> None:
    h = Harness(push_to_talk=True)
    (update,) = sent(h.connect(), "session.update")
    assert update["session"]["audio"]["input"]["turn_detection"] is None
    frame = MicFrame(b"\x00\x00" * 480, 100.0)
    assert h.conv.mic_frame(frame) == []
    pressed = h.run(h.conv.push_to_talk(True, h.now))
    assert sent(pressed, "input_audio_buffer.clear") and h.state() is State.USER_SPEAKING
    assert sent(h.conv.mic_frame(frame), "input_audio_buffer.append")
    released = h.run(h.conv.push_to_talk(False, 105.0))
    assert [e["type"] for e in sent(released)] == ["input_audio_buffer.commit", "response.create"]
    assert h.state() is State.THINKING


def test_fail_fast_cue_plays_once_and_real_audio_replaces_it(h: Harness) -> None:
    h.at(100.0).user_turn()
    assert not of(h.run(h.conv.tick(100.79)), PlayCue)
    (cue,) = of(h.run(h.conv.tick(100.81)), PlayCue)
    assert not of(h.run(h.conv.tick(101.5)), PlayCue)
    actions = h.feed(*s.spoken_answer("resp_1", "item_a1", "Sure.", audio_ms=400)[:4])
    assert Halt((cue.cue_id,)) in actions
    h.run(h.conv.item_played_out("item_a1", 102.0))


def test_no_cue_when_audio_arrives_in_time(h: Harness) -> None:
    h.at(100.0).user_turn()
    h.at(100.5).feed(*s.spoken_answer("resp_1", "item_a1", "Sure.", audio_ms=400))
    assert not of(h.run(h.conv.tick(101.0)), PlayCue)


def test_every_event_the_machine_sends_validates_against_the_openai_types() -> None:
    openai_types = pytest.importorskip("openai.types.realtime")
    from pydantic import TypeAdapter

    adapter = TypeAdapter(openai_types.RealtimeClientEvent)
    events: list[dict[str, Any]] = []
    for scenario in (
        test_drop_mid_turn_then_reconnect_replays_and_resumes,
        test_barge_in_mid_item_truncates_at_what_was_heard,
        test_tool_call_runs_then_output_and_follow_up_response,
        test_tool_finishing_while_disconnected_is_sent_after_reconnect,
    ):
        harness = Harness()
        harness.connect()
        scenario(harness)
        events += sent(harness.log) + sent(harness.conv.mic_frame(MicFrame(b"\x00\x00" * 480, 0.0)))
    assert {e["type"] for e in events} >= {
        "session.update",
        "conversation.item.create",
        "conversation.item.truncate",
        "response.cancel",
        "response.create",
        "input_audio_buffer.append",
    }
    for event in events:
        adapter.validate_python(event)
