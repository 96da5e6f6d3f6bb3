"""The audio half of the app wired together: capture with barge-in detection, and playback.

The detector holds the player's ``halt`` and ``is_playing`` directly. Without echo cancellation
the capture callback feeds it, so a barge-in silences the speaker from inside the capture callback
with no other thread involved. With echo cancellation (``AudioSettings.echo_cancellation``) the
capture callback hands its 16 kHz samples to a bounded queue and an :class:`EchoWorker` thread
runs the session's echo canceller against the player's published reference, then feeds the
detector each cleaned 10 ms frame with the canceller's attenuation (``halt`` is thread-safe).
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

from app.audio.bargein import BargeInDetector, DetectorSettings
from app.audio.capture import Capture
from app.audio.devices import AudioDevice
from app.audio.echo import EchoPath, ReferenceAligner, load_echo_canceller
from app.audio.player import Player
from app.audio.resample import FloatArray, float_to_int16

log = logging.getLogger(__name__)


@dataclass
class AudioSettings:
    block_ms: float = 10.0
    jitter_target_ms: float = 60.0
    fade_ms: float = 5.0
    frame_ms: int = 20
    echo_cancellation: bool = False  # opt-in: see docs/architecture.md, "Echo handling"
    echo_queue_chunks: int = 200  # capture blocks waiting for the echo worker (2 s at 10 ms)


class EchoWorker:
    """One thread, one canceller per session (never reset): mic chunks in, detector frames out."""

    def __init__(
        self,
        chunks: queue.Queue[tuple[FloatArray, float]],
        player: Player,
        detector: BargeInDetector,
        path: EchoPath,
        poll_s: float = 0.05,
    ) -> None:
        self.chunks = chunks
        self.player = player
        self.detector = detector
        self.path = path
        self.poll_s = poll_s
        self.frames = 0
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
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _collect_reference(self) -> None:
        blocks = tuple(self.player.reference)  # snapshot: the output callback appends meanwhile
        fresh = [b for b in blocks if b.handed_at > self._last_handed_at]
        if fresh:
            self._last_handed_at = fresh[-1].handed_at
            self.path.add_reference(fresh)

    def process(self, samples: FloatArray, captured_at: float) -> None:
        """One capture chunk (16 kHz float): cancel the echo and feed the detector per frame."""
        self._collect_reference()
        for frame in self.path.process(samples, captured_at):
            self.frames += 1
            self.last_attenuation_db = frame.attenuation_db
            self.detector.feed_frame(
                float_to_int16(frame.samples), frame.captured_at, attenuation_db=frame.attenuation_db
            )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                samples, captured_at = self.chunks.get(timeout=self.poll_s)
            except queue.Empty:
                continue
            try:
                self.process(samples, captured_at)
            except Exception:  # keep the session alive; the direct path is not coming back
                log.exception("echo worker failed on a capture chunk")


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
        self.detector = BargeInDetector(self.player.is_playing, self.player.halt, detector_settings)
        self.echo: EchoWorker | None = None
        echo_input: queue.Queue[tuple[FloatArray, float]] | None = None
        if self.settings.echo_cancellation:
            echo_input = queue.Queue(maxsize=self.settings.echo_queue_chunks)
            path = EchoPath(load_echo_canceller(), ReferenceAligner(self.player.rate))
            self.echo = EchoWorker(echo_input, self.player, self.detector, path)
        self.capture = Capture(
            input_device,
            block_ms=self.settings.block_ms,
            frame_ms=self.settings.frame_ms,
            detector=self.detector,
            echo_input=echo_input,
        )

    def start(self) -> None:
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
