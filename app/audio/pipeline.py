"""The audio half of the app wired together: capture with barge-in detection, and playback.

The detector holds the player's ``halt`` and ``is_playing`` directly. Without echo cancellation
the capture callback feeds it, so a barge-in silences the speaker from inside the capture callback
with no other thread involved. With echo cancellation (``AudioSettings.echo_cancellation``,
the default) the capture callback hands its 16 kHz samples to a bounded queue and an
:class:`EchoWorker` thread runs the session's echo canceller against the player's published
reference, then feeds the detector each 10 ms frame (``halt`` is thread-safe) and the model's
frame queue with the same signal: the canceller's output while the assistant's echo may be in
the microphone, the microphone itself otherwise (headset mode, or long after the playback).

All day in the tray the pipeline idles (:meth:`AudioPipeline.pace`): a while after the last speech
and sound, the output stream stops and capture moves to coarser blocks; speech or an answer brings
both back.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from app.audio.bargein import VAD_RATE, BargeInDetector, DetectorSettings, SpeechEvent
from app.audio.capture import Capture, FrameSink
from app.audio.devices import AudioDevice
from app.audio.echo import (
    CleanedFrame,
    EchoMode,
    EchoPath,
    MonitorSettings,
    ReferenceAligner,
    judge,
    load_echo_canceller,
)
from app.audio.jitter import HaltRecord
from app.audio.player import PlayedBlock, Player
from app.audio.resample import FloatArray, float_to_int16
from app.audio.streams import StreamOwner
from app.core.hearing import Hearing, MicFrame

log = logging.getLogger(__name__)

# How long the assistant's sound can be heard after it was played: echo path delay plus
# reverberation (the echo monitor's ``tail_s``).
ECHO_TAIL_S = MonitorSettings().tail_s


@dataclass
class AudioSettings:
    block_ms: float = 10.0
    jitter_target_ms: float = 60.0
    fade_ms: float = 5.0
    frame_ms: int = 20
    # On: most users have laptop speakers; with a headset the echo stage measures no echo path
    # within a second and passes the microphone on (docs/architecture.md, "Echo handling").
    echo_cancellation: bool = True
    echo_queue_chunks: int = 200  # capture blocks waiting for the echo worker (2 s at 10 ms)
    # Capture blocks while idle: a tenth of the callbacks, and speech is still heard at once
    # (what it costs is when the switch back starts, not a lost sample).
    idle_block_ms: float = 100.0
    # Quiet this long (nobody speaking, nothing playing, no turn under way) before idling.
    idle_after_s: float = 2.0


@dataclass(frozen=True)
class Paused:
    """The answer was paused (a local barge-in); what the listener had heard comes with its halt."""

    record: HaltRecord


@dataclass(frozen=True)
class FirstAudible:
    """An item's first audible sample reached the listener at ``at``."""

    item_id: str
    at: float


@dataclass(frozen=True)
class PlayedOut:
    """An item played to its end (not halted)."""

    item_id: str


# What the audio tells the engine, in the order it must hear it: a barge-in's onset before its
# halt, the microphone's frames, then the playback's progress.
AudioReport = SpeechEvent | Paused | HaltRecord | MicFrame | FirstAudible | PlayedOut


def _handed_at(block: PlayedBlock) -> float:
    return block.handed_at


@dataclass(frozen=True)
class JudgedFrame:
    signal: FloatArray  # what the model gets (16 kHz): the verdict's signal
    hearing: Hearing  # and how it is labelled for the conversation


def judge_frame(frame: CleanedFrame, detector: BargeInDetector, path: EchoPath) -> JudgedFrame:
    """Judge one echo-path frame, feed it to the detector, and say what the model gets.

    Frames the detector hears the user in are withdrawn from the echo estimates.
    """
    verdict = judge(frame)
    detector.feed_frame(
        float_to_int16(verdict.signal), frame.captured_at, echo=verdict.echo, strict=verdict.settling
    )
    if detector.in_speech:
        path.monitor.user_speaking()
        return JudgedFrame(verdict.signal, "user")
    return JudgedFrame(verdict.signal, "echo" if verdict.possible else "clear")


class EchoWorker:
    """One thread, one canceller per session (never reset): mic chunks in, detector and model frames out."""

    def __init__(
        self,
        chunks: queue.Queue[tuple[FloatArray, float]],
        player: Player,
        detector: BargeInDetector,
        path: EchoPath,
        model: FrameSink | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.chunks = chunks
        self.player = player
        self.detector = detector
        self.path = path
        self.model = model
        self.poll_s = poll_s
        self.frames = 0
        self.cleaned_frames = 0  # frames that went out as the canceller's output
        self.failures = 0  # chunks the echo stage failed on (passed on as captured)
        self.last_attenuation_db: float | None = None
        self._last_handed_at = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="echo-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):  # wakes the thread now rather than at its next poll
            self.chunks.put_nowait((np.zeros(0, np.float32), 0.0))
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _collect_reference(self) -> None:
        blocks = tuple(self.player.reference)  # snapshot: the output callback appends meanwhile
        # handed_at only grows: the fresh blocks are a tail, found without visiting the rest
        fresh = blocks[bisect.bisect_right(blocks, self._last_handed_at, key=_handed_at) :]
        if fresh:
            self._last_handed_at = fresh[-1].handed_at
            self.path.add_reference(fresh)

    @property
    def mode(self) -> EchoMode:
        return self.path.monitor.mode

    def process(self, samples: FloatArray, captured_at: float) -> None:
        """One capture chunk (16 kHz float): cancel the echo, feed the detector and the model."""
        self._collect_reference()
        # One wake for the chunk's frames: an idle capture's 100 ms chunk goes out as one message.
        with self.model.batch() if self.model is not None else contextlib.nullcontext():
            for frame in self.path.process(samples, captured_at):
                self.frames += 1
                self.last_attenuation_db = frame.attenuation_db
                judged = judge_frame(frame, self.detector, self.path)
                if judged.signal is frame.samples and judged.signal is not frame.raw:
                    self.cleaned_frames += 1
                if self.model is not None:
                    self.model.process(judged.signal, frame.captured_at, judged.hearing)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                samples, captured_at = self.chunks.get(timeout=self.poll_s)
            except queue.Empty:
                continue
            if self._stop.is_set():
                break
            try:
                self.process(samples, captured_at)
            except Exception:  # keep the session alive, and the user's words with it
                self.failures += 1
                if self.failures == 1:
                    log.exception("the echo stage failed; passing the microphone on as captured")
                self._pass_through(samples, captured_at)

    def _pass_through(self, samples: FloatArray, captured_at: float) -> None:
        """A chunk as captured, to the detector and the model: a failing echo stage loses nothing."""
        self.detector.feed(float_to_int16(samples), captured_at)
        if self.model is not None:
            self.model.process(samples, captured_at, "user" if self.detector.in_speech else "clear")


class AudioPipeline:
    def __init__(
        self,
        input_device: AudioDevice,
        output_device: AudioDevice,
        settings: AudioSettings | None = None,
        detector_settings: DetectorSettings | None = None,
    ) -> None:
        self.settings = settings or AudioSettings()
        self.player = Player(
            output_device,
            block_ms=self.settings.block_ms,
            target_ms=self.settings.jitter_target_ms,
            fade_ms=self.settings.fade_ms,
        )
        # A barge-in pauses the answer: the conversation resumes it if it was not the user's turn.
        self.detector = BargeInDetector(self.player.is_playing, self.player.pause, detector_settings)
        self.echo: EchoWorker | None = None
        echo_input: queue.Queue[tuple[FloatArray, float]] | None = None
        if self.settings.echo_cancellation:
            echo_input = queue.Queue(maxsize=self.settings.echo_queue_chunks)
        self.capture = Capture(
            input_device,
            block_ms=self.settings.block_ms,
            frame_ms=self.settings.frame_ms,
            detector=self.detector,
            echo_input=echo_input,
            echo_possible=self._echo_possible,
            # With echo cancellation everything after the microphone runs at 16 kHz: capture at
            # that rate where the sound server converts, and nothing is lost but the delay.
            rate=float(VAD_RATE) if echo_input is not None else None,
        )
        if echo_input is not None:
            path = EchoPath(load_echo_canceller(), ReferenceAligner(self.player.rate))
            # The worker, not the capture callback, fills the model's frame queue: what the
            # server hears is the cleaned signal, so its turn detection does not fire on echo.
            self.echo = EchoWorker(echo_input, self.player, self.detector, path, self.capture.model)
        self._busy_at = float("-inf")
        self._watched: dict[str, bool] = {}  # item id -> its first audible sample reported

    # ------------------------------------------------------------------------------------------
    # What the engine drives and reads (the engine knows the pipeline only through these)
    # ------------------------------------------------------------------------------------------
    def play(self, item_id: str, pcm16: bytes) -> None:
        """Queue an item's audio and report its progress through :meth:`drain`."""
        self._watched.setdefault(item_id, False)
        self.player.push(item_id, pcm16)

    def end_item(self, item_id: str) -> None:
        self.player.end_item(item_id)

    def halt(self, item_ids: Iterable[str] | None = None) -> None:
        self.player.halt(item_ids)

    def resume(self) -> None:
        self.player.resume()

    def set_listening(self, listening: bool) -> None:
        """Muted: the local detector ignores the microphone (no barge-in, no speech events)."""
        self.detector.enabled = listening

    def set_frame_waker(self, wake: Callable[[], None] | None) -> None:
        """Called from the audio side once a block's microphone frames are queued; must not block."""
        self.capture.model.on_frame = wake

    def frames_waiting(self) -> bool:
        return not self.capture.frames.empty()

    @property
    def busy(self) -> bool:
        """The user is speaking by the local detector, or an answer plays or is still watched."""
        return self.detector.in_speech or self.player.is_playing() or bool(self._watched)

    @property
    def playing(self) -> bool:
        return self.player.is_playing()

    @property
    def underruns(self) -> int:
        return self.player.buffer.underruns

    @property
    def input_level_dbfs(self) -> float:
        return self.capture.level_dbfs

    def devices(self) -> tuple[tuple[str, StreamOwner], ...]:
        """Each stream with the role the user knows it by, for the engine's device checks."""
        return (("microphone", self.capture), ("speaker", self.player))

    def drain(self) -> list[AudioReport]:
        """Everything that happened since the last call, in the order the conversation must hear it."""
        reports: list[AudioReport] = []
        events = self.detector.events
        while events:
            reports.append(events.popleft())
        buffer = self.player.buffer
        while buffer.pauses:
            reports.append(Paused(buffer.pauses.popleft()))
        while buffer.halts:
            reports.append(buffer.halts.popleft())
        frames = self.capture.frames
        while not frames.empty():
            reports.append(frames.get_nowait())
        for item_id, reported in list(self._watched.items()):
            account = buffer.account(item_id)
            if account is None:
                continue
            if not reported and account.first_audible_at is not None:
                self._watched[item_id] = True
                reports.append(FirstAudible(item_id, account.first_audible_at))
            if account.done:
                del self._watched[item_id]
                if not account.halted:
                    reports.append(PlayedOut(item_id))
        return reports

    def pace(self, busy: bool, now: float) -> None:
        """The engine's word, every pump, on whether a conversation is under way.

        Busy: 10 ms capture blocks and a running output stream (woken ahead of the answer, so its
        first sound is not later). Quiet for ``idle_after_s``: coarse blocks and no output stream.
        """
        self.capture.settle_cadence(now)
        if busy or self.player.is_playing():
            self._busy_at = now
            self.player.wake()
            self.capture.set_cadence(self.settings.block_ms, now)
        elif now - self._busy_at >= self.settings.idle_after_s:
            self.player.rest(now)
            self.capture.set_cadence(self.settings.idle_block_ms, now)

    @property
    def idle(self) -> bool:
        """Idling: coarse capture blocks and the output stream at rest."""
        return self.player.resting and self.capture.block_ms == self.settings.idle_block_ms

    def _echo_possible(self, captured_at: float) -> bool:
        """Without echo cancellation: could the assistant's sound (or its echo tail) be in the mic?"""
        return self.player.is_playing() or captured_at < self.player.sounded_until + ECHO_TAIL_S

    def start(self) -> None:
        self._busy_at = time.monotonic()  # idle only after a quiet while, as after any turn
        # Output first: a halt decided by the first captured blocks must find a running player.
        self.player.start()
        if self.echo is not None:
            self.echo.start()
        try:
            self.capture.start()
        except Exception:
            if self.echo is not None:
                self.echo.stop()
            self.player.close()
            raise

    def close(self) -> None:
        self.capture.close()
        if self.echo is not None:
            self.echo.stop()
        self.player.close()

    def __enter__(self) -> AudioPipeline:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
