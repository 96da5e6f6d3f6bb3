"""Local speech detector for barge-in: webrtcvad plus an energy floor over a tracked noise floor.

It runs in the capture path on 16 kHz PCM16 in 10 ms frames. On speech onset while the assistant
is playing it calls the player's ``halt`` right there, in the audio thread, and records a
timestamped event for the conversation layer; with nothing playing it reports speech start and end.
Events go into a bounded deque (appends never block), so the audio thread never waits on a reader.
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
    # Frames from the echo stage in speaker mode (``echo`` given), while the assistant plays. The
    # excess is how far the raw microphone stands above the echo the playback predicts.
    echo_attenuation_db: float = 10.0  # a frame the canceller took this much from is echo ...
    # ... unless the excess reaches this: then the user dominates the microphone (AEC3's suppressor
    # takes 100-200 ms to release at the start of double talk and would hide the user meanwhile).
    # 6 dB, not less, for speech: its predicted echo is only good to a few dB frame by frame. When
    # the echo stage has measured how far echo alone rises over the prediction (its spread), the
    # threshold is that plus ``double_talk_margin_db``, between ``double_talk_min_db`` and this.
    double_talk_excess_db: float = 6.0
    double_talk_margin_db: float = 2.0
    double_talk_min_db: float = 3.0
    echo_excess_db: float = 2.0  # below this the frame is echo whatever the canceller did (its glitches)
    early_onset_frames: int = 5  # while the canceller settles an onset needs more frames
    early_margin_db: float = 6.0  # and this much more above the noise floor
    settling_excess_db: float = 3.0  # and this much excess


def frame_level_dbfs(frame: npt.NDArray[np.int16]) -> float:
    if len(frame) == 0:
        return _SILENCE_DBFS
    rms = math.sqrt(float(np.mean(np.square(frame.astype(np.float64)))))
    if rms < 1e-9:
        return _SILENCE_DBFS
    return 20.0 * math.log10(rms / 32768.0)


@dataclass(frozen=True)
class EchoContext:
    """What the echo stage says about one frame while the assistant's echo may be in it."""

    attenuation_db: float  # microphone level minus cleaned level: what the canceller removed
    settling: bool = False  # the canceller is not trusted (first seconds, playback resumed, path jumped)
    excess_db: float = 0.0  # raw microphone level above the echo the recent playback predicts
    excess_spread_db: float | None = None  # how far echo alone rises above the prediction (measured)


class BargeInDetector:
    def __init__(
        self,
        is_playing: Callable[[], bool],
        halt: Callable[[], None],
        settings: DetectorSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or DetectorSettings()
        self._clock = clock
        self._is_playing = is_playing
        self._halt = halt
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
        self._pending = np.zeros(0, np.int16)
        self._pending_start = 0.0

    @property
    def silence_frames(self) -> int:
        """Non-speech frames since the last speech frame while in speech (a pause in progress)."""
        return self._quiet if self.in_speech else 0

    def feed(self, samples: npt.NDArray[np.int16], start_time: float) -> None:
        """Feed 16 kHz PCM16 samples of any length; ``start_time`` is when the first was captured."""
        if not self.enabled:
            self._pending = np.zeros(0, np.int16)
            self._run = 0
            return
        if len(self._pending) == 0:
            self._pending_start = start_time
        buffered = np.concatenate((self._pending, samples)) if len(self._pending) else samples
        count = len(buffered) // FRAME_SAMPLES
        for i in range(count):
            frame = buffered[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
            self.feed_frame(frame, self._pending_start + i * FRAME_MS / 1000.0)
        self._pending = buffered[count * FRAME_SAMPLES :].copy()
        self._pending_start += count * FRAME_MS / 1000.0

    def feed_frame(self, frame: npt.NDArray[np.int16], at: float, echo: EchoContext | None = None) -> None:
        """One 10 ms frame of 16 kHz PCM16 captured at monotonic time ``at``.

        ``echo`` comes from the echo stage when the assistant's echo may be in the frame (``None``:
        the raw microphone, no echo possible). While the assistant plays, a frame is echo when the
        canceller removed ``echo_attenuation_db`` or more from it (unless the microphone stands
        ``double_talk_excess_db`` above the predicted echo), or when the microphone is less than
        ``echo_excess_db`` above the predicted echo whatever the canceller did. While the canceller
        settles, an onset needs more frames, more level and ``settling_excess_db``.
        """
        if not self.enabled:
            self._run = 0
            return
        s = self.settings
        playing = self._is_playing()
        level = frame_level_dbfs(frame)
        self.noise_floor_dbfs = self._floor.add(level)
        self._frames_seen += 1
        if self._frames_seen <= s.warmup_frames:
            return
        onset_frames = s.onset_frames
        margin_db = s.margin_db
        is_echo = False
        if echo is not None:  # while playing, and in the echo's tail after it
            required_excess = s.echo_excess_db
            if echo.settling:
                # The canceller may pass echo now: only a microphone clearly louder than the
                # predicted echo can be the user, and an onset needs more frames and level.
                onset_frames = max(onset_frames, s.early_onset_frames)
                margin_db += s.early_margin_db
                required_excess = s.settling_excess_db
            is_echo = echo.excess_db < required_excess or (
                echo.attenuation_db >= s.echo_attenuation_db and not self._double_talk(echo)
            )
        voiced = not is_echo and self._vad.is_speech(
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
                if playing:
                    self._halt()
                    self._emit("barge_in", self._run_start, at, level)
                else:
                    self._emit("speech_start", self._run_start, at, level)
        else:
            self._run = 0
            if self.in_speech:
                self._quiet += 1
                if self._quiet >= s.hangover_frames:
                    self.in_speech = False
                    self._quiet = 0
                    self._emit("speech_end", self._last_speech_at + FRAME_MS / 1000.0, at, level)

    def prefers_raw(self, echo: EchoContext) -> bool:
        """Should this frame be judged (and sent on) as the raw microphone, not the canceller's output?

        True when the canceller suppressed it as echo but the user plainly dominates it.
        """
        return echo.attenuation_db >= self.settings.echo_attenuation_db and self._double_talk(echo)

    def _double_talk(self, echo: EchoContext) -> bool:
        s = self.settings
        threshold = s.double_talk_excess_db
        if echo.excess_spread_db is not None:
            measured = echo.excess_spread_db + s.double_talk_margin_db
            threshold = min(threshold, max(s.double_talk_min_db, measured))
        return echo.excess_db >= threshold

    def _emit(self, kind: EventKind, at: float, decided_at: float, level: float) -> None:
        self.events.append(SpeechEvent(kind, at, decided_at, level, self._clock()))


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
