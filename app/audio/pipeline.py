"""The audio half of the app wired together: capture with barge-in detection, and playback.

The detector holds the player's ``halt`` and ``is_playing`` directly, so a barge-in silences the
speaker from inside the capture callback with no other thread involved.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.audio.bargein import BargeInDetector, DetectorSettings
from app.audio.capture import Capture
from app.audio.devices import AudioDevice
from app.audio.player import Player


@dataclass
class AudioSettings:
    block_ms: float = 10.0
    jitter_target_ms: float = 60.0
    fade_ms: float = 5.0
    frame_ms: int = 20


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
        self.capture = Capture(
            input_device,
            block_ms=self.settings.block_ms,
            frame_ms=self.settings.frame_ms,
            detector=self.detector,
        )

    def start(self) -> None:
        # Output first: a halt decided by the first captured blocks must find a running player.
        self.player.start()
        try:
            self.capture.start()
        except Exception:
            self.player.close()
            raise

    def close(self) -> None:
        self.capture.close()
        self.player.close()

    def __enter__(self) -> AudioPipeline:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
