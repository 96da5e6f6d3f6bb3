"""End of turn by meaning: semantic_vad in the embedded server with the Smart Turn model.

The session's rules are pure (audio in, JudgeTurnEnd out, the judgement back in); the server runs
a judge in a worker; the real model is loaded from the installed file and run on real speech.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr
from websockets.asyncio.client import connect

from app.audio.resample import float_to_pcm16
from app.core import protocol as p
from app.localmodel.server import EmbeddedServer, new_token
from app.localmodel.session import (
    EndUtterance,
    JudgeTurnEnd,
    Output,
    Session,
    UtterancePaused,
    UtteranceResumed,
)
from app.localmodel.turn_end import TurnEndModel, features, model_path
from app.localmodel.turn_text import AUDIO_VETO, judge_turn, unfinished_because
from tests.fake_components import fake_components
from tests.test_embedded_server import Client, silence, speechlike

FloatArray = np.ndarray[Any, np.dtype[np.float32]]


def semantic(session: Session, eagerness: str = "auto") -> None:
    detection = {"type": "semantic_vad", "eagerness": eagerness}
    update = {
        "type": "session.update",
        "session": {"type": "realtime", "audio": {"input": {"turn_detection": detection}}},
    }
    out = session.handle(json.dumps(update))
    assert any(isinstance(e, p.SessionUpdated) for e in out.events), out.events


def feed(session: Session, samples: FloatArray) -> Output:
    """``samples`` (24 kHz) appended in 20 ms events, as a client streams them; all that came out."""
    pcm = float_to_pcm16(samples)
    out = Output()
    for i in range(0, len(pcm), 960):
        event = {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm[i : i + 960]).decode()}
        out += session.handle(json.dumps(event))
    return out


def of(out: Output, kind: type) -> list[Any]:
    return [x for x in [*out.events, *out.commands] if isinstance(x, kind)]


def judged_session(eagerness: str = "auto") -> tuple[Session, JudgeTurnEnd]:
    """A session that heard one second of speech and then the short pause: the question asked."""
    session = Session(judges_turn_end=True)
    semantic(session, eagerness)
    feed(session, silence(0.5))
    out = feed(session, speechlike(1.0))
    assert of(out, p.SpeechStarted)
    out = feed(session, silence(0.3))
    (question,) = of(out, JudgeTurnEnd)
    assert not of(out, p.SpeechStopped)  # asked, not decided
    return session, question


def test_a_pause_the_model_calls_complete_ends_the_turn_where_the_speech_stopped() -> None:
    session, question = judged_session()
    assert 1450 <= question.at_ms <= 1560  # the speech ended at 1500 ms
    out = session.turn_judged(question.item_id, question.at_ms, complete=True)
    (stopped,) = of(out, p.SpeechStopped)
    assert stopped.audio_end_ms == int(question.at_ms) and stopped.item_id == question.item_id
    assert [c.item_id for c in of(out, EndUtterance)] == [question.item_id]


def test_an_unfinished_turn_goes_on_as_the_same_item_when_the_user_speaks_again() -> None:
    session, question = judged_session()
    assert not session.turn_judged(question.item_id, question.at_ms, complete=False).events
    out = feed(session, silence(0.5))  # a pause inside the sentence
    out += feed(session, speechlike(0.8))  # "... it keeps dropping"
    assert not of(out, p.SpeechStarted) and not of(out, p.SpeechStopped)
    out = feed(session, silence(0.3))
    (again,) = of(out, JudgeTurnEnd)
    assert again.item_id == question.item_id and again.at_ms > question.at_ms + 1000
    # The first question's answer is stale now: it must not end the turn at the first pause.
    assert not session.turn_judged(question.item_id, question.at_ms, complete=True).events
    (stopped,) = of(session.turn_judged(again.item_id, again.at_ms, complete=True), p.SpeechStopped)
    assert stopped.audio_end_ms == int(again.at_ms)


def test_an_unfinished_turn_still_ends_after_the_longer_pause() -> None:
    session, question = judged_session()
    session.turn_judged(question.item_id, question.at_ms, complete=False)
    out = feed(session, silence(0.7))
    assert not of(out, p.SpeechStopped)  # 1000 ms since the speech: still waiting
    out = feed(session, silence(0.4))
    (stopped,) = of(out, p.SpeechStopped)  # 1200 ms: ended where the speech stopped
    assert stopped.audio_end_ms == int(question.at_ms)
    assert not session.turn_judged(question.item_id, question.at_ms, complete=True).events  # late


def test_eagerness_sets_how_soon_the_model_is_asked_and_a_complete_turn_ends() -> None:
    asked, ended = {}, {}
    for eagerness in ("high", "auto", "low"):
        session = Session(judges_turn_end=True)
        semantic(session, eagerness)
        feed(session, silence(0.5))
        feed(session, speechlike(1.0))
        for step in range(1, 60):
            out = feed(session, silence(0.01))
            for question in of(out, JudgeTurnEnd):
                asked[eagerness] = step * 10
                out += session.turn_judged(question.item_id, question.at_ms, complete=True)
            if of(out, p.SpeechStopped):
                ended[eagerness] = step * 10
                break
    assert asked["high"] <= asked["auto"] < asked["low"], asked
    assert ended["high"] < ended["auto"] < ended["low"], ended
    assert asked["auto"] <= 100 and ended["auto"] <= 200, (asked, ended)


def test_a_complete_judgement_in_a_short_pause_waits_for_the_commit_pause() -> None:
    """The judging starts 70 ms into the pause; a turn judged complete by then still ends only
    once the pause is 150 ms long, where the speech stopped, and not if the user speaks on."""
    session = Session(judges_turn_end=True)
    semantic(session)
    feed(session, silence(0.5))
    feed(session, speechlike(1.0))
    out = Output()
    for _ in range(10):  # 100 ms of pause: asked, not yet decided
        out += feed(session, silence(0.01))
    (question,) = of(out, JudgeTurnEnd)
    assert 1450 <= question.at_ms <= 1560
    assert not session.turn_judged(question.item_id, question.at_ms, complete=True).events  # too soon
    out = feed(session, silence(0.03))
    assert not of(out, p.SpeechStopped)  # 130 ms
    out = feed(session, silence(0.04))
    (stopped,) = of(out, p.SpeechStopped)  # 170 ms: past the commit pause
    assert stopped.audio_end_ms == int(question.at_ms)
    assert [c.item_id for c in of(out, EndUtterance)] == [question.item_id]


def first_question() -> tuple[Session, Output, JudgeTurnEnd]:
    """A semantic_vad session asked about a 1 s turn's first pause, that feed's output, the question."""
    session = Session(judges_turn_end=True)
    semantic(session)
    feed(session, silence(0.5))
    feed(session, speechlike(1.0))
    out = feed(session, silence(0.1))
    (question,) = of(out, JudgeTurnEnd)
    return session, out, question


def test_a_turn_judged_complete_goes_on_when_the_user_speaks_before_the_commit_pause() -> None:
    session, _, question = first_question()
    session.turn_judged(question.item_id, question.at_ms, complete=True)
    out = feed(session, speechlike(0.6))  # the gap before a word's last consonant, then more words
    out += feed(session, silence(0.3))
    assert not of(out, p.SpeechStarted) and not of(out, p.SpeechStopped)  # the old verdict is gone
    (again,) = of(out, JudgeTurnEnd)
    assert again.item_id == question.item_id and again.at_ms > question.at_ms + 500
    assert not of(out, p.SpeechStopped)  # the new pause waits for its own judgement


def test_a_pause_judged_unfinished_is_asked_about_again_once_and_can_end_then() -> None:
    session, question = judged_session()  # 300 ms into the pause
    session.turn_judged(question.item_id, question.at_ms, complete=False)
    out = feed(session, silence(0.1))
    assert not of(out, JudgeTurnEnd)  # 400 ms
    out = feed(session, silence(0.1))
    (again,) = of(out, JudgeTurnEnd)  # 500 ms: the same pause, asked again
    assert again.again and (again.item_id, again.at_ms) == (question.item_id, question.at_ms)
    assert not of(feed(session, silence(0.3)), JudgeTurnEnd)  # only once
    (stopped,) = of(session.turn_judged(again.item_id, again.at_ms, complete=True), p.SpeechStopped)
    assert stopped.audio_end_ms == int(question.at_ms)


def test_the_answer_is_prepared_from_the_moment_a_pause_is_judged() -> None:
    """UtterancePaused (the server's cue to decode and prepare the answer) comes with the
    question, and UtteranceResumed when the user speaks on."""
    session, out, question = first_question()
    assert [c.item_id for c in of(out, UtterancePaused)] == [question.item_id]
    out = feed(session, speechlike(0.3))
    assert [c.item_id for c in of(out, UtteranceResumed)] == [question.item_id]


def test_without_a_model_semantic_vad_is_a_silence_window() -> None:
    session = Session()
    semantic(session)
    feed(session, silence(0.5))
    feed(session, speechlike(1.0))
    out = feed(session, silence(0.3))
    assert not of(out, JudgeTurnEnd) and not of(out, p.SpeechStopped)
    out = feed(session, silence(0.4))
    assert not of(out, JudgeTurnEnd) and of(out, p.SpeechStopped)


def test_server_vad_is_never_judged() -> None:
    session = Session(judges_turn_end=True)
    feed(session, silence(0.5))
    feed(session, speechlike(1.0))
    out = feed(session, silence(0.8))
    assert not of(out, JudgeTurnEnd) and of(out, p.SpeechStopped)


# -- the server runs the judge ----------------------------------------------------------------------


@pytest.fixture
async def judged() -> AsyncIterator[tuple[Client, list[float]]]:
    """A client of a server whose judge says "complete" once the turn is over 2.5 s long."""
    asked: list[float] = []

    def judge(audio: FloatArray) -> float:
        asked.append(len(audio) / 16000)
        return 0.9 if len(audio) > 2.5 * 16000 else 0.01  # sure the voice is mid-sentence, then done

    server = EmbeddedServer(fake_components(turn_end=judge), new_token())
    await server.start()
    try:
        async with connect(server.url, additional_headers={"Authorization": f"Bearer {server.token}"}) as ws:
            client = Client(ws)
            await client.next("session.created")
            await client.send(
                {
                    "type": "session.update",
                    "session": {
                        "type": "realtime",
                        "audio": {"input": {"turn_detection": {"type": "semantic_vad"}}},
                    },
                }
            )
            await client.next("session.updated")
            yield client, asked
    finally:
        await server.close()


async def test_the_server_asks_its_model_and_answers_a_turn_it_calls_complete(
    judged: tuple[Client, list[float]],
) -> None:
    client, asked = judged
    await client.append(silence(0.5))
    await client.append(speechlike(1.0))
    await client.append(silence(0.6))  # judged unfinished: no answer yet
    await client.append(speechlike(0.6))
    await client.append(silence(0.4))
    events = await client.until("response.done", timeout=10)
    kinds = [e["type"] for e in events]
    assert kinds.count("input_audio_buffer.speech_started") == 1  # one turn, both parts
    assert kinds.count("input_audio_buffer.speech_stopped") == 1
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    assert 2600 <= stopped["audio_end_ms"] <= 2800  # the second part ended at 2700 ms
    # Each judged on the turn so far (the first pause again at 450 ms, unless the client's audio,
    # sent faster than real time, made that question stale before it was asked).
    assert len(asked) in (2, 3) and max(asked) > min(asked) + 1.0, asked
    assert events[-1]["response"]["status"] == "completed"


# -- the real model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> TurnEndModel:
    if model_path() is None:
        if os.environ.get("HELPDESK_VOICE_REQUIRE_DEVICES") == "1":
            pytest.fail("the Smart Turn model must be installed here (scripts/install.sh)")
        pytest.skip("the Smart Turn model is not installed")
    return TurnEndModel()


def spoken(text: str, tmp_path: Path, tail_s: float = 0.2) -> FloatArray:
    """espeak-ng saying ``text`` at 16 kHz, its own trailing silence cut, then ``tail_s`` of quiet."""
    wav = tmp_path / "said.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, timeout=30)
    with wave.open(str(wav)) as handle:
        rate = handle.getframerate()
        samples = np.frombuffer(handle.readframes(handle.getnframes()), "<i2").astype(np.float32) / 32768
    audio = soxr.resample(samples, rate, 16000).astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    return np.concatenate([audio[: loud[-1] + 1], np.zeros(int(tail_s * 16000), np.float32)])


def test_features_are_eight_seconds_of_whisper_log_mel_with_the_newest_audio_last() -> None:
    short = features(np.full(16000, 0.1, np.float32))
    assert short.shape == (80, 800) and short.dtype == np.float32
    long = np.concatenate([np.zeros(16000 * 9, np.float32), np.sin(np.arange(16000) / 5).astype(np.float32)])
    mel = features(long)
    assert mel.shape == (80, 800)
    assert mel[:, -50:].max() > mel[:, :50].max() + 0.5  # the tone is at the end, the start is quiet


def test_the_model_tells_a_finished_request_from_one_cut_off_mid_sentence(
    model: TurnEndModel, tmp_path: Path
) -> None:
    finished = model.probability(spoken("my VPN keeps dropping every few minutes", tmp_path))
    cut_off = model.probability(spoken("the printer on the third floor", tmp_path))
    assert finished > 0.5 > cut_off, (finished, cut_off)


def test_the_model_judges_silence_and_odd_input_without_failing(model: TurnEndModel) -> None:
    for audio in (np.zeros(0, np.float32), np.zeros(16000, np.float32), np.ones(200_000, np.float32)):
        assert 0.0 <= model.probability(audio) <= 1.0


def test_the_loader_says_how_to_install_a_missing_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELPDESK_VOICE_SMART_TURN_MODEL", str(tmp_path / "missing.onnx"))
    assert model_path() is None
    with pytest.raises(FileNotFoundError, match="pipecat-ai without its dependencies"):
        TurnEndModel()


# -- the words ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "said",
    [
        "I need a new charger because",
        "the update is stuck at",
        "my account is",
        "I deleted a folder on the shared drive and",
        "my VPN",
        "the printer on the second floor",
        "since yesterday",
        "when I open Outlook",
        "I can't find",
        "I need to get",
        "I got an email from the bank that",
    ],
)
def test_words_that_cannot_end_a_request_keep_the_turn_open(said: str) -> None:
    assert unfinished_because(said) is not None
    complete, why, unsure = judge_turn(said, 0.99)  # however sure the voice sounds
    assert not complete and "unfinished" in why and not unsure  # however long the pause


@pytest.mark.parametrize(
    "said",
    [
        "I forgot my password",
        "my VPN keeps dropping every few minutes",
        "the printer on the third floor won't print",
        "when I open Outlook it crashes",
        "I can't connect to the Wi-Fi",
        "the meeting room display shows a blue screen",
        "what should I do",
        "reset my password",
        "VPN problems",
        "yes please",
        "thanks",
        "no",
        "done",
        "repeat that",
        "can you check that",
        "I already tried all of that",
    ],
)
def test_finished_requests_and_short_replies_read_as_finished(said: str) -> None:
    assert unfinished_because(said) is None
    assert judge_turn(said, 0.6)[0]


def test_the_voice_can_veto_finished_words_and_no_words_wait_for_the_longer_pause() -> None:
    assert not judge_turn("I need a new charger", AUDIO_VETO / 2)[0]
    assert judge_turn("I need a new charger", AUDIO_VETO)[0]
    assert not judge_turn("", 0.99)[0] and not judge_turn("", None)[0]
    assert judge_turn("", None).unsure and judge_turn("I need a new charger", AUDIO_VETO / 2).unsure
    assert judge_turn("thanks", None)[0]


@pytest.mark.parametrize(
    "said",
    [
        "My headset works in music,",
        "I need a new charger because...",
        "The sound on my laptop stop-",
        "Since yesterday\u2026",
    ],
)
def test_a_sentence_the_recogniser_wrote_as_going_on_keeps_the_turn_open(said: str) -> None:
    assert "go on" in (unfinished_because(said) or "")
    judged = judge_turn(said, 0.99)
    assert not judged.complete and judged.unsure  # a longer pause may end the sentence


def test_finished_punctuation_and_short_replies_with_a_comma_read_as_finished() -> None:
    for said in ("My headset works in music.", "Can you help me?", "Yes,", "No, thanks,", "Done..."):
        assert unfinished_because(said) is None, said
