"""Barge-in measured from the outside, through virtual devices, as a listener would hear it.

A trial plays a long assistant sound through the app's own audio pipeline, speaks a user
utterance into the virtual microphone while it plays, and records both the microphone and the
speaker's monitor on one monotonic clock: halt latency is the time from the first sample of user
speech in the microphone to the last loud sample of the assistant on the speaker. The user's
first sample is found by matching the spoken signal in the microphone recording, so that with a
speaker-to-microphone echo path the assistant's own echo does not count as the user.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from app.audio.devices import AudioDevice, find_device
from app.audio.pipeline import AudioPipeline, AudioSettings
from app.audio.probe import SignalPlayer, TimedRecorder
from app.audio.resample import FloatArray, float_to_pcm16
from app.audio.streams import open_stream
from app.testkit.rig import VirtualAudioRig
from app.testkit.timing import first_loud, last_loud, locate, window

USER_ONSET_THRESHOLD = 0.02
USER_START_THRESHOLD = 0.002  # about -54 dBFS: the user's first audible sample, however soft
EARLY_TOLERANCE_S = 0.03  # a barge-in this much before the user's first audible sample is on echo
ASSISTANT_LOUD_THRESHOLD = 0.01


@dataclass(frozen=True)
class BargeInTrial:
    onset_at: float | None  # first user-speech sample in the microphone
    silent_at: float | None  # after the last loud assistant sample on the speaker's monitor
    halt_ms: float | None  # what a listener measures: onset to silence
    detector_ms: float | None  # onset to the detector's decision (echo worker, or capture callback)
    capture_ms: float | None  # deciding frame captured to the capture callback seeing it
    halt_processed_ms: float | None  # onset to the output callback writing the fade
    played_ms: float | None  # what the player reports the listener heard of the item
    barge_in: bool  # did the detector fire a barge-in on the user
    false_halts: int = 0  # barge-ins decided before the user spoke (on echo)
    false_halt_ms: tuple[float, ...] = ()  # when they started, relative to the user's onset

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def assistant_sound(seconds: float, rate: int = 24000) -> bytes:
    """A steady two-tone 'assistant voice' whose end is easy to find on a recording."""
    t = np.arange(int(rate * seconds)) / rate
    signal = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 330 * t)
    return float_to_pcm16(signal.astype(np.float32))


class BargeInBench:
    """The app's pipeline on the virtual mic and speaker, plus recorders of both."""

    def __init__(self, rig: VirtualAudioRig, settings: AudioSettings | None = None) -> None:
        self.rig = rig
        self.mic = find_device(rig.mic, "input")
        self.speaker = find_device(rig.speaker, "output")
        self.feed = find_device(rig.mic_feed, "output")
        self.monitor = find_device(rig.speaker_monitor, "input")
        self.pipeline = AudioPipeline(self.mic, self.speaker, settings)
        self.mic_recorder = TimedRecorder(self.mic.default_samplerate)
        self.speaker_recorder = TimedRecorder(self.monitor.default_samplerate)
        self._streams: list[Any] = []
        self._trial = 0

    def __enter__(self) -> BargeInBench:
        for device, recorder in ((self.mic, self.mic_recorder), (self.monitor, self.speaker_recorder)):
            stream = open_stream("input", device, recorder.callback)
            stream.start()
            self._streams.append(stream)
        self.pipeline.start()
        time.sleep(0.5)  # let the detector learn the (silent) room
        return self

    def __exit__(self, *exc: object) -> None:
        self.pipeline.close()
        for stream in self._streams:
            stream.close()
        self._streams.clear()

    def speak(self, signal: FloatArray) -> SignalPlayer:
        """Play ``signal`` (at the feed device's rate) into the virtual microphone; returns at once."""
        player = SignalPlayer(signal, self.feed.default_samplerate)
        stream = open_stream("output", self.feed, player.callback)
        stream.start()
        self._streams.append(stream)
        return player

    def trial(
        self,
        user_speech: FloatArray,
        lead_s: float = 1.0,
        assistant_s: float = 4.0,
        assistant: bytes | None = None,
    ) -> BargeInTrial:
        """One barge-in: the assistant talks for ``lead_s``, then the user speaks over it.

        ``assistant`` is 24 kHz PCM16 to play instead of :func:`assistant_sound`.
        """
        self._trial += 1
        item = f"trial-{self._trial}"
        detector = self.pipeline.detector
        detector.events.clear()
        # A barge-in pauses the player (the conversation decides later whether to resume). The
        # deque is bounded (nobody drains it here), so its length stops growing: compare the newest.
        pauses = self.pipeline.player.buffer.pauses
        newest_before = pauses[-1] if pauses else None
        started = time.monotonic()
        self.pipeline.player.push(item, assistant if assistant is not None else assistant_sound(assistant_s))
        self.pipeline.player.end_item(item)
        time.sleep(lead_s)
        self.speak(user_speech).finished.wait(len(user_speech) / self.feed.default_samplerate + 2.0)
        time.sleep(0.6)  # the detector's hangover ends the user's turn
        ended = time.monotonic()
        # The user talked on: a turn, so the paused answer stops for good, as the conversation does.
        self.pipeline.player.halt([item])
        self._close_finished_feeds()

        onset = user_onset(self.mic_recorder, started, ended, user_speech, USER_ONSET_THRESHOLD)
        start = user_onset(self.mic_recorder, started, ended, user_speech, USER_START_THRESHOLD)
        barges = [e for e in list(detector.events) if e.kind == "barge_in"]
        early = [e for e in barges if start is None or e.at < start - EARLY_TOLERANCE_S]
        barge = next((e for e in barges if e not in early), None)
        record = pauses[-1] if pauses and pauses[-1] is not newest_before else None
        silent = last_loud(*self.speaker_recorder.timeline(), started, ended, ASSISTANT_LOUD_THRESHOLD)
        if early:  # the assistant stopped before the user spoke: nothing to measure
            silent = None
            record = None

        def since_onset(t: float | None) -> float | None:
            return None if onset is None or t is None else (t - onset) * 1000.0

        return BargeInTrial(
            onset_at=onset,
            silent_at=silent,
            halt_ms=since_onset(silent),
            detector_ms=since_onset(barge.noticed_at if barge else None),
            capture_ms=None if barge is None else (barge.noticed_at - barge.decided_at) * 1000.0,
            halt_processed_ms=since_onset(record.processed_at if record else None),
            played_ms=None if record is None else record.played_ms.get(item),
            barge_in=barge is not None,
            false_halts=len(early),
            false_halt_ms=tuple(
                round((e.at - onset) * 1000.0, 1) if onset is not None else float("nan") for e in early
            ),
        )

    def echo_only(self, assistant: bytes, seconds: float) -> list[float]:
        """Play ``assistant`` (24 kHz PCM16) with nobody talking; the capture times of barge-ins."""
        self._trial += 1
        item = f"echo-{self._trial}"
        detector = self.pipeline.detector
        detector.events.clear()
        self.pipeline.player.push(item, assistant)
        self.pipeline.player.end_item(item)
        time.sleep(seconds)
        self.pipeline.player.halt([item])
        time.sleep(0.3)
        return [e.at for e in list(detector.events) if e.kind == "barge_in"]

    def _close_finished_feeds(self) -> None:
        # Keep the two recorders (the first streams); feeds are done once their trial ends.
        for stream in self._streams[2:]:
            stream.close()
        del self._streams[2:]


def user_onset(
    recorder: TimedRecorder, start: float, end: float, spoken: FloatArray, threshold: float
) -> float | None:
    """When the first sample of ``spoken`` above ``threshold`` reached the microphone (matched filter)."""
    times, samples = recorder.timeline()
    times, samples = window(times, samples, start, end)
    first = np.flatnonzero(np.abs(spoken) > threshold)
    begun = locate(times, samples, spoken)
    if begun is None or len(first) == 0:
        return None
    at = begun + float(first[0]) / recorder.rate
    return at if at <= float(times[-1]) else None


def first_time_above(recorder: TimedRecorder, start: float, end: float, threshold: float) -> float | None:
    """When ``recorder`` first captured a sample louder than ``threshold`` between ``start`` and ``end``."""
    return first_loud(*recorder.timeline(), start, end, threshold)


def device_names(*devices: AudioDevice) -> list[str]:
    return [d.name for d in devices]
