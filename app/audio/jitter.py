"""The playback jitter buffer: item-tagged assistant audio in, device-rate blocks out.

Pure logic with no device: ``push``/``end_item``/``halt``/``pause``/``resume`` come from any thread,
``render`` from the output callback. The lock is held only for list and counter updates and one
block's copy, so the callback never waits long.

A pause silences as fast as a halt (the same fade within one block) but keeps the items' audio,
and audio that arrives meanwhile is buffered: a barge-in that turns out to be a cough, not the
user's turn, resumes from the next unplayed sample with a fade-in. A real turn then halts, which
drops the kept audio; its record says the listener has been silent since the pause's fade ended.
While paused the buffer counts as inactive, so the barge-in detector does not hear the silent
assistant as playing, and the starved output counts no underruns.

Accounting per item is what ``conversation.item.truncate`` needs: how much of the item the device
was handed and, with the stream's output latency, how much a listener has heard by now, never more
than the item holds.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from app.audio.resample import PLAYBACK_QUALITY, FloatArray, StreamResampler, pcm16_to_float

SOURCE_RATE = 24000
AUDIBLE_THRESHOLD = 1e-3  # about -60 dBFS: quieter samples do not count as "first audio"
_KEPT_ITEMS = 64


@dataclass
class ItemAccount:
    """What the buffer knows about one assistant audio item."""

    item_id: str
    received_samples: int = 0  # at SOURCE_RATE
    queued_frames: int = 0  # at the device rate, still in the buffer
    handed_frames: int = 0  # at the device rate, given to the device
    ended: bool = False
    halted: bool = False
    halt_pending: bool = False
    first_audible_at: float | None = None  # monotonic time of the block with the first audible sample
    last_block_end: float = 0.0  # when the last handed frame reaches the listener

    @property
    def received_ms(self) -> float:
        return self.received_samples * 1000.0 / SOURCE_RATE

    @property
    def done(self) -> bool:
        return self.halted or (self.ended and self.queued_frames == 0)


@dataclass(frozen=True)
class HaltRecord:
    """What a halt (or pause) stopped: the items it cut and how much of each the listener heard."""

    requested_at: float
    processed_at: float
    silent_at: float  # when the fade has ended at the listener's ear
    played_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class _Segment:
    item_id: str
    samples: FloatArray
    offset: int = 0

    @property
    def remaining(self) -> int:
        return len(self.samples) - self.offset


class JitterBuffer:
    def __init__(
        self,
        device_rate: float,
        target_ms: float = 60.0,
        fade_ms: float = 5.0,
        max_ms: float = 120_000.0,
    ) -> None:
        if target_ms < 0 or fade_ms < 0 or max_ms <= 0:
            raise ValueError("target_ms and fade_ms must be >= 0 and max_ms > 0")
        self.device_rate = float(device_rate)
        self.target_frames = round(target_ms * self.device_rate / 1000.0)
        self.fade_frames = max(1, round(fade_ms * self.device_rate / 1000.0))
        self.max_frames = int(max_ms * self.device_rate / 1000.0)
        self.output_latency = 0.0  # seconds from the callback to the listener; set by the stream adapter
        self.underruns = 0
        self.overflows = 0
        self.halts: deque[HaltRecord] = deque(maxlen=32)
        self.pauses: deque[HaltRecord] = deque(maxlen=32)
        self._lock = threading.Lock()
        self._segments: deque[_Segment] = deque()
        self._queued = 0
        self._accounts: OrderedDict[str, ItemAccount] = OrderedDict()
        self._resamplers: dict[str, StreamResampler] = {}
        self._playing = False
        self._fade_in_next = False
        self._pending_halt: tuple[float, set[str]] | None = None
        self._pending_pause: float | None = None  # requested_at of a pause no render has seen yet
        self._pause: HaltRecord | None = None  # the pause in force, processed by a render

    # -- producer side -------------------------------------------------------------------------
    def push(self, item_id: str, pcm16: bytes) -> bool:
        """Queue 24 kHz PCM16 audio for ``item_id``; False when it was dropped (halted or full)."""
        samples = pcm16_to_float(pcm16)
        with self._lock:
            account = self._account(item_id)
            if account.halted or account.halt_pending or account.ended:
                return False
            resampler = self._resamplers.get(item_id)
            if resampler is None:
                resampler = StreamResampler(SOURCE_RATE, self.device_rate, PLAYBACK_QUALITY)
                self._resamplers[item_id] = resampler
        converted = resampler.process(samples)
        with self._lock:
            if account.halted or account.halt_pending:
                return False
            if self._queued + len(converted) > self.max_frames:
                self.overflows += 1
                return False
            account.received_samples += len(samples)
            self._append(account, converted)
        return True

    def end_item(self, item_id: str) -> None:
        """No more audio comes for ``item_id``: flush the resampler so its tail plays too."""
        with self._lock:
            account = self._account(item_id)
            resampler = self._resamplers.pop(item_id, None)
            if account.halted or account.ended:
                return
        tail = resampler.process(np.zeros(0, np.float32), last=True) if resampler else None
        with self._lock:
            if account.halted:
                return
            if tail is not None and len(tail):
                self._append(account, tail)
            account.ended = True

    def halt(self, item_ids: Iterable[str] | None = None) -> None:
        """Silence from the next block on, with a short fade; safe from any thread.

        It cuts ``item_ids`` (default: every item playing or expected now); items that start later
        play normally.
        """
        now = time.monotonic()
        wanted = None if item_ids is None else set(item_ids)
        with self._lock:
            targets = {
                a.item_id
                for a in self._accounts.values()
                if not a.done and (wanted is None or a.item_id in wanted)
            }
            if self._pending_halt is None:
                self._pending_halt = (now, targets)
            else:
                self._pending_halt[1].update(targets)
            for item_id in targets:
                self._accounts[item_id].halt_pending = True

    def pause(self) -> None:
        """Silence from the next block on, with the halt's fade, keeping all audio; any thread.

        Every item, playing, expected or pushed later, waits until ``resume``. Nothing happens when
        no item is playing or expected.
        """
        now = time.monotonic()
        with self._lock:
            if self._pending_pause is not None or self._pause is not None:
                return
            if all(a.done for a in self._accounts.values()):
                return
            self._pending_pause = now

    def resume(self) -> None:
        """Play on from the next unplayed sample, with a fade-in; safe from any thread."""
        with self._lock:
            # Before a render saw it the listener heard no change: forget it, no record, no fade.
            self._pending_pause = None
            # The fade-in is already asked by the pause's render; playback restarts through the
            # usual priming, so a thin queue of an unfinished item waits for the target depth.
            self._pause = None

    def clear(self) -> None:
        """Drop everything without a halt record (stop of the conversation)."""
        with self._lock:
            self._segments.clear()
            self._queued = 0
            for account in self._accounts.values():
                account.queued_frames = 0
                if not account.done:
                    account.halted = True
            self._resamplers.clear()
            self._playing = False
            self._pending_pause = None
            self._pause = None
            # Nothing is left mid-stream, so the next item must start unfaded.
            self._fade_in_next = False

    # -- queries -------------------------------------------------------------------------------
    @property
    def queued_ms(self) -> float:
        return self._queued * 1000.0 / self.device_rate

    @property
    def paused(self) -> bool:
        """True from ``pause`` until ``resume`` or a processed halt ends it."""
        with self._lock:
            return self._pending_pause is not None or self._pause is not None

    def is_active(self) -> bool:
        """True while an item is playing or still expected to play (barge-in matters now).

        False while paused: the listener hears silence, so a barge-in has nothing to interrupt.
        """
        with self._lock:
            if self._pending_pause is not None or self._pause is not None:
                return False
            return any(not a.done for a in self._accounts.values())

    def account(self, item_id: str) -> ItemAccount | None:
        with self._lock:
            account = self._accounts.get(item_id)
            return None if account is None else ItemAccount(**account.__dict__)

    def played_ms(self, item_id: str, now: float) -> float:
        """Milliseconds of ``item_id`` the listener has heard by ``now``, clamped to the item."""
        with self._lock:
            account = self._accounts.get(item_id)
            if account is None:
                return 0.0
            unplayed = max(0.0, (account.last_block_end - now) * self.device_rate)
            heard = max(0.0, account.handed_frames - unplayed)
            return min(heard * 1000.0 / self.device_rate, account.received_ms)

    # -- output callback side ------------------------------------------------------------------
    def render(self, frames: int, now: float) -> FloatArray:
        """One block of mono samples for the device; ``now`` is the callback's monotonic time."""
        out = np.zeros(frames, np.float32)
        with self._lock:
            pending = self._pending_halt
            if pending is not None:
                self._pending_halt = None
                # The halt wins over a pause: it drops what the pause kept, and the items it did
                # not target play on.
                pause = self._pause
                fade_in = self._fade_in_next
                self._pending_pause = None
                self._pause = None
                # After a processed pause the output is already silent: no second fade, and the
                # listener has heard nothing since the pause's fade ended.
                silent_at = None if pause is None else pause.silent_at
                self._process_halt(out, pending[0], pending[1], now, silent_at)
                if pause is not None:
                    # An untargeted item cut mid-stream by the pause comes back in, not with a step.
                    self._fade_in_next = fade_in and bool(self._segments)
                return out
            if self._pending_pause is not None:
                requested_at = self._pending_pause
                self._pending_pause = None
                self._process_pause(out, requested_at, now)
                return out
            if self._pause is not None:
                # A deliberate silence, not a starved stream: no underrun.
                return out
            if not self._playing:
                if self._queued == 0 or not self._ready_to_start():
                    return out
                self._playing = True
            written = self._take(out, 0, frames, now)
            if self._fade_in_next and written:
                ramp = min(self.fade_frames, written)
                out[:ramp] *= np.linspace(0.0, 1.0, ramp, endpoint=False, dtype=np.float32)
                self._fade_in_next = False
            if written < frames:
                self._playing = False
                if self._starved():
                    self.underruns += 1
                    self._fade_out(out, written)
                    self._fade_in_next = True
        return out

    # -- internals (lock held) -----------------------------------------------------------------
    def _account(self, item_id: str) -> ItemAccount:
        account = self._accounts.get(item_id)
        if account is None:
            account = ItemAccount(item_id)
            self._accounts[item_id] = account
            while len(self._accounts) > _KEPT_ITEMS:
                old_id, old = next(iter(self._accounts.items()))
                if not old.done:
                    break
                del self._accounts[old_id]
        return account

    def _append(self, account: ItemAccount, samples: FloatArray) -> None:
        if len(samples) == 0:
            return
        self._segments.append(_Segment(account.item_id, samples))
        self._queued += len(samples)
        account.queued_frames += len(samples)

    def _ready_to_start(self) -> bool:
        if self._queued >= self.target_frames:
            return True
        # A short item that has fully arrived plays at once instead of waiting for the target.
        head = self._accounts.get(self._segments[0].item_id)
        return head is not None and head.ended

    def _starved(self) -> bool:
        """Did playback run dry while an item still expected audio (an underrun, not an end)?"""
        return any(not a.ended and not a.halted for a in self._accounts.values())

    def _take(
        self, out: FloatArray, start: int, frames: int, now: float, only: set[str] | None = None
    ) -> int:
        written = 0
        block_end = now + self.output_latency + len(out) / self.device_rate
        while written < frames and self._segments:
            segment = self._segments[0]
            if only is not None and segment.item_id not in only:
                break
            count = min(frames - written, segment.remaining)
            chunk = segment.samples[segment.offset : segment.offset + count]
            out[start + written : start + written + count] = chunk
            segment.offset += count
            written += count
            self._queued -= count
            account = self._accounts[segment.item_id]
            account.queued_frames -= count
            account.handed_frames += count
            account.last_block_end = block_end
            if account.first_audible_at is None and np.any(np.abs(chunk) > AUDIBLE_THRESHOLD):
                account.first_audible_at = now
            if segment.remaining == 0:
                self._segments.popleft()
        return written

    def _fade_out(self, out: FloatArray, end: int) -> None:
        ramp = min(self.fade_frames, end)
        if ramp:
            out[end - ramp : end] *= np.linspace(1.0, 0.0, ramp, dtype=np.float32)

    def _process_pause(self, out: FloatArray, requested_at: float, now: float) -> None:
        faded = 0
        if self._playing:
            # The same fade as a halt, over whatever comes next; those samples are handed and
            # counted, so resuming continues right after them.
            faded = self._take(out, 0, min(self.fade_frames, len(out)), now)
            self._fade_out(out, faded)
            # The pause cut audio mid-stream, so resuming must ramp back in. When priming, nothing
            # was heard yet (or an underrun already asked for the fade-in).
            self._fade_in_next = True
        self._playing = False
        played: dict[str, float] = {}
        for account in self._accounts.values():
            if account.done:
                continue
            heard_ms = account.handed_frames * 1000.0 / self.device_rate
            played[account.item_id] = min(heard_ms, account.received_ms)
        self._pause = HaltRecord(
            requested_at=requested_at,
            processed_at=now,
            silent_at=now + self.output_latency + faded / self.device_rate,
            played_ms=played,
        )
        self.pauses.append(self._pause)

    def _process_halt(
        self,
        out: FloatArray,
        requested_at: float,
        targets: set[str],
        now: float,
        silent_at: float | None = None,
    ) -> None:
        faded = 0
        if self._playing and self._segments and self._segments[0].item_id in targets:
            faded = self._take(out, 0, min(self.fade_frames, len(out)), now, only=targets)
            self._fade_out(out, faded)
        played: dict[str, float] = {}
        for item_id in targets:
            account = self._accounts.get(item_id)
            if account is None:
                continue
            account.halt_pending = False
            if account.done:
                continue
            account.halted = True
            account.queued_frames = 0
            # Everything handed to the device is heard: the device plays out what it holds.
            heard_ms = account.handed_frames * 1000.0 / self.device_rate
            played[item_id] = min(heard_ms, account.received_ms)
            self._resamplers.pop(item_id, None)
        kept = [s for s in self._segments if s.item_id not in targets]
        self._segments = deque(kept)
        self._queued = sum(s.remaining for s in kept)
        self._playing = False
        self._fade_in_next = False
        self.halts.append(
            HaltRecord(
                requested_at=requested_at,
                processed_at=now,
                silent_at=(
                    now + self.output_latency + faded / self.device_rate if silent_at is None else silent_at
                ),
                played_ms=played,
            )
        )
