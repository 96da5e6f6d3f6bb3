"""Local speech detection: webrtcvad plus an energy floor over a tracked noise floor.

:class:`SpeechDetector` is the pure detector on 16 kHz PCM16 in 10 ms frames (the offline server's
turn detection uses it too). :class:`BargeInDetector` runs it in the capture path: on speech onset
while the assistant is playing it calls the player's ``halt`` (a pause, resumed if it was not the
user's turn) right there, in the audio thread, and records a timestamped event for the
conversation layer; with nothing playing it reports speech start and end. Whether a frame is the
assistant's echo is decided before, by the echo verdict (:func:`app.audio.echo.judge`). Events go
into a bounded deque (appends never block), so the audio thread never waits on a reader.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import webrtcvad

from app.audio.framing import Framer

VAD_RATE = 16000
FRAME_MS = 10
FRAME_SAMPLES = VAD_RATE * FRAME_MS // 1000
_SILENCE_DBFS = -100.0

EventKind = Literal["speech_start", "speech_end", "barge_in"]


@dataclass(frozen=True)
class SpeechEvent:
    kind: EventKind
    at: float  # capture time of the first (start, barge-in) or last (end) speech frame
    decided_at: float  # capture time of the frame that completed the decision
    level_dbfs: float
    noticed_at: float  # monotonic time when the detector ran on that frame


@dataclass
class DetectorSettings:
    onset_frames: int = 3  # consecutive speech frames before an onset counts
    hangover_frames: int = 30  # non-speech frames before speech has ended (300 ms)
    vad_mode: int = 2  # webrtcvad aggressiveness 0..3
    margin_db: float = 10.0  # speech must stand this far above the noise floor
    min_level_dbfs: float = -50.0  # and above this absolute level
    warmup_frames: int = 30  # frames heard before the noise floor is trusted (300 ms)
    floor_window_frames: int = 150  # the noise floor is the quietest level of the last 1.5 s
    # Frames judged while the echo canceller settles (``strict``): it may pass some echo, so an
    # onset needs more frames and more level over the noise floor.
    strict_onset_frames: int = 5
    strict_margin_db: float = 6.0


def frame_level_dbfs(frame: npt.NDArray[np.int16]) -> float:
    if len(frame) == 0:
        return _SILENCE_DBFS
    samples = frame.astype(np.float64)
    rms = math.sqrt(float(np.dot(samples, samples)) / len(samples))
    if rms < 1e-9:
        return _SILENCE_DBFS
    return 20.0 * math.log10(rms / 32768.0)


class SpeechDetector:
    """Is someone talking? webrtcvad plus a level over a tracked noise floor, on 16 kHz 10 ms frames.

    Pure: frames and their capture times in, ``speech_start`` and ``speech_end`` events out (into
    a bounded deque). The offline server's turn detection runs on it as it is;
    :class:`BargeInDetector` adds what an onset means while the assistant plays.
    """

    def __init__(
        self, settings: DetectorSettings | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings or DetectorSettings()
        self._clock = clock
        self._vad = webrtcvad.Vad(self.settings.vad_mode)
        self.events: deque[SpeechEvent] = deque(maxlen=256)
        self.enabled = True  # off while the microphone is muted: a muted user cannot interrupt
        self.noise_floor_dbfs = _SILENCE_DBFS
        self._floor = _MinimumTracker(self.settings.floor_window_frames)
        self._frames_seen = 0
        self.in_speech = False
        self._run = 0  # consecutive speech frames
        self._run_start = 0.0
        self._quiet = 0  # consecutive non-speech frames while in speech
        self._last_speech_at = 0.0
        self._framer = Framer(FRAME_SAMPLES, np.int16)
        self._pending_start = 0.0  # capture time of the framer's first pending sample

    @property
    def silence_frames(self) -> int:
        """Non-speech frames since the last speech frame while in speech (a pause in progress)."""
        return self._quiet if self.in_speech else 0

    def feed(self, samples: npt.NDArray[np.int16], start_time: float) -> None:
        """Feed 16 kHz PCM16 samples of any length; ``start_time`` is when the first was captured."""
        if not self.enabled:
            self._framer.reset()
            self._run = 0
            return
        if not self._framer.pending:
            self._pending_start = start_time
        start = self._pending_start
        _, frames = self._framer.push(samples)
        # Moved on with the framer before the frames run, so one that fails leaves the times right.
        self._pending_start += len(frames) * FRAME_MS / 1000.0
        for i, frame in enumerate(frames):
            self.feed_frame(frame, start + i * FRAME_MS / 1000.0)

    def feed_frame(
        self, frame: npt.NDArray[np.int16], at: float, *, echo: bool = False, strict: bool = False
    ) -> None:
        """One 10 ms frame of 16 kHz PCM16 captured at monotonic time ``at``.

        ``echo``: the echo verdict says the frame is the assistant's voice, so it is not speech.
        ``strict``: the echo canceller is settling, so an onset needs more frames and level.
        """
        if not self.enabled:
            self._run = 0
            return
        s = self.settings
        level = frame_level_dbfs(frame)
        self.noise_floor_dbfs = self._floor.add(level)
        self._frames_seen += 1
        if self._frames_seen <= s.warmup_frames:
            return
        onset_frames = max(s.onset_frames, s.strict_onset_frames) if strict else s.onset_frames
        margin_db = s.margin_db + (s.strict_margin_db if strict else 0.0)
        voiced = not echo and self._vad.is_speech(
            np.ascontiguousarray(frame, dtype="<i2").tobytes(), VAD_RATE
        )
        loud = level >= max(s.min_level_dbfs, self.noise_floor_dbfs + margin_db)
        if voiced and loud:
            if self._run == 0:
                self._run_start = at
            self._run += 1
            self._quiet = 0
            self._last_speech_at = at
            if not self.in_speech and self._run >= onset_frames:
                self.in_speech = True
                self._onset(self._run_start, at, level)
        else:
            self._run = 0
            if self.in_speech:
                self._quiet += 1
                if self._quiet >= s.hangover_frames:
                    self.in_speech = False
                    self._quiet = 0
                    self._emit("speech_end", self._last_speech_at + FRAME_MS / 1000.0, at, level)

    def _onset(self, start: float, decided_at: float, level: float) -> None:
        self._emit("speech_start", start, decided_at, level)

    def _emit(self, kind: EventKind, at: float, decided_at: float, level: float) -> None:
        self.events.append(SpeechEvent(kind, at, decided_at, level, self._clock()))


class BargeInDetector(SpeechDetector):
    """The speech detector behind the microphone: an onset while the assistant plays halts it.

    ``halt`` runs right in the thread that feeds the frames (the echo worker, or the capture
    callback without echo cancellation): no other thread, no server round trip.
    """

    def __init__(
        self,
        is_playing: Callable[[], bool],
        halt: Callable[[], None],
        settings: DetectorSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(settings, clock)
        self._is_playing = is_playing
        self._halt = halt

    def _onset(self, start: float, decided_at: float, level: float) -> None:
        if self._is_playing():
            self._halt()
            self._emit("barge_in", start, decided_at, level)
        else:
            super()._onset(start, decided_at, level)


class _MinimumTracker:
    """Minimum statistics: the quietest frame level over a sliding window, kept in sub-windows.

    Speech always has quiet gaps between syllables, so the minimum follows the room's noise and
    not the talker, while a steady noise (fan, hum, hiss) lifts it within one window.
    """

    _PARTS = 10

    def __init__(self, window_frames: int) -> None:
        self._part_frames = max(1, window_frames // self._PARTS)
        self._minima: deque[float] = deque(maxlen=self._PARTS)
        self._current = math.inf
        self._count = 0

    def add(self, level: float) -> float:
        self._current = min(self._current, level)
        self._count += 1
        if self._count >= self._part_frames:
            self._minima.append(self._current)
            self._current = math.inf
            self._count = 0
        return min(self._current, *self._minima) if self._minima else self._current
