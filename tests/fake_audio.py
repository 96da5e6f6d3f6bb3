"""A stand-in for the audio pipeline, so the engine can be tested without sound devices.

It keeps time like the real one: the microphone hands over 20 ms frames of silence as the clock
moves, answers play out in real time (first audible at once, played out once their length has
passed after the end was marked), and a halt reports what the listener heard. Tests can also make
the local detector report speech (:meth:`FakeAudio.user_speaks`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from app.audio.bargein import EventKind, SpeechEvent
from app.audio.jitter import HaltRecord
from app.audio.pipeline import AudioReport, FirstAudible, PlayedOut
from app.core.hearing import MicFrame
from app.engine import DeviceStream

FRAME_S = 0.02
FRAME_BYTES = 960  # 20 ms of 24 kHz PCM16


@dataclass
class _Item:
    started_at: float
    audio_bytes: int = 0
    ended: bool = False
    reported_first: bool = False

    def seconds(self) -> float:
        return self.audio_bytes / 48000


@dataclass
class FakeAudio:
    started: bool = False
    closed: bool = False
    listening: bool = True
    played: list[tuple[str, int]] = field(default_factory=list)  # (item id, bytes) per play()
    halts: list[list[str] | None] = field(default_factory=list)
    resumes: int = 0
    paces: int = 0
    _items: dict[str, _Item] = field(default_factory=dict)
    _pending: list[AudioReport] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _mic_at: float = 0.0

    # --- what the engine drives -------------------------------------------------------------
    def start(self) -> None:
        self.started = True
        self._mic_at = time.monotonic()

    def close(self) -> None:
        self.closed = True

    def play(self, item_id: str, pcm16: bytes) -> None:
        with self._lock:
            self.played.append((item_id, len(pcm16)))
            item = self._items.setdefault(item_id, _Item(time.monotonic()))
            item.audio_bytes += len(pcm16)

    def end_item(self, item_id: str) -> None:
        with self._lock:
            if item_id in self._items:
                self._items[item_id].ended = True

    def halt(self, item_ids: Iterable[str] | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            chosen = list(self._items) if item_ids is None else [i for i in item_ids if i in self._items]
            self.halts.append(None if item_ids is None else list(item_ids))
            heard = {i: min(self._items[i].seconds(), now - self._items[i].started_at) * 1000 for i in chosen}
            for item_id in chosen:
                del self._items[item_id]
            self._pending.append(HaltRecord(now, now, now + 0.005, heard))

    def resume(self) -> None:
        self.resumes += 1

    def set_listening(self, listening: bool) -> None:
        self.listening = listening

    def set_frame_waker(self, wake: Callable[[], None] | None) -> None:
        pass  # the engine's pump polls often enough for silent frames

    def frames_waiting(self) -> bool:
        return False

    def pace(self, busy: bool, now: float) -> None:
        self.paces += 1

    def devices(self) -> Iterable[tuple[str, DeviceStream]]:
        return ()

    def drain(self) -> list[AudioReport]:
        now = time.monotonic()
        with self._lock:
            reports, self._pending = self._pending, []
            while self._mic_at + FRAME_S <= now:
                reports.append(MicFrame(bytes(FRAME_BYTES), self._mic_at, "clear"))
                self._mic_at += FRAME_S
            for item_id, item in list(self._items.items()):
                if not item.reported_first:
                    item.reported_first = True
                    reports.append(FirstAudible(item_id, item.started_at))
                if item.ended and now >= item.started_at + item.seconds():
                    del self._items[item_id]
                    reports.append(PlayedOut(item_id))
        return reports

    @property
    def busy(self) -> bool:
        return bool(self._items)

    @property
    def idle(self) -> bool:
        return False

    @property
    def playing(self) -> bool:
        return bool(self._items)

    @property
    def underruns(self) -> int:
        return 0

    @property
    def input_level_dbfs(self) -> float:
        return -60.0

    # --- what a test makes happen ----------------------------------------------------------
    def user_speaks(self, kind: EventKind, at: float | None = None) -> None:
        """The local detector hears the user start (``speech_start``, ``barge_in``) or stop."""
        when = time.monotonic() if at is None else at
        with self._lock:
            self._pending.append(SpeechEvent(kind, when, when, -20.0, when))

    def items_playing(self) -> list[str]:
        with self._lock:
            return list(self._items)
