"""Echo handling in the capture path: the assistant's own voice out of the microphone signal.

Everything here works on 16 kHz mono float32 in 10 ms frames (160 samples), the barge-in
detector's rate and frame size, and is plain code fed with data and timestamps:

- :class:`WebRtcEchoCanceller` wraps WebRTC AEC3 (``pywebrtc-audio``). It is not thread-safe, so
  one instance per session lives on one worker thread, off the audio callbacks, and is never reset
  between turns (it keeps its converged filter and delay estimate).
- :class:`ReferenceEchoGate` is the fallback when AEC3 cannot load: no DSP, it learns the echo
  path's delay and gain from playback and microphone frame energies and silences frames whose
  energy the playback explains.
- :func:`load_echo_canceller` picks the first that works and warns in one line otherwise.
- :class:`ReferenceAligner` turns what the player handed to the device (``PlayedBlock``: device
  rate samples and when they became audible) into reference frames aligned with microphone frames
  by their capture times, on one monotonic clock.
- :class:`EchoMonitor` measures the echo path from frame levels alone (no DSP): whether the
  playback reaches the microphone at all (speaker mode) or not (headset mode), how loud, and
  whether the canceller can be trusted yet.
- :class:`EchoPath` ties the aligner, a canceller and the monitor together for the capture
  worker: microphone samples with their capture time in, cleaned frames with their verdict out.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from app.audio.framing import Framer
from app.audio.resample import FloatArray, StreamResampler

log = logging.getLogger(__name__)

ECHO_RATE = 16000
FRAME_MS = 10
FRAME_SAMPLES = ECHO_RATE * FRAME_MS // 1000
_POWER_FLOOR = 1e-10  # -100 dBFS: levels and ratios below this are silence
_SILENT_DB = -100.0
_ESTIMATE_EVERY = 5  # frames between the monitor's median and percentile updates


def power(frame: FloatArray) -> float:
    """Mean square of a float frame (full scale 1.0)."""
    if len(frame) == 0:
        return 0.0
    samples = frame.astype(np.float64)
    return float(np.dot(samples, samples)) / len(samples)  # np.mean costs more than the sum itself


def power_db(value: float) -> float:
    return 10.0 * math.log10(max(value, _POWER_FLOOR))


@dataclass(frozen=True)
class EchoResult:
    cleaned: FloatArray  # the microphone frame with the echo removed (or gated)
    attenuation_db: float  # microphone level minus cleaned level: what the canceller took away
    mic_dbfs: float
    reference_dbfs: float


class EchoCanceller(Protocol):
    """One session's echo canceller; not thread-safe: call it from one thread only."""

    name: str

    def process(self, mic: FloatArray, reference: FloatArray) -> EchoResult:
        """One 10 ms pair: the microphone frame and the reference frame aligned with it."""
        ...


def _result(mic: FloatArray, cleaned: FloatArray, reference: FloatArray) -> EchoResult:
    mic_power = power(mic)
    cleaned_power = power(cleaned)
    attenuation = power_db(mic_power) - power_db(cleaned_power)
    return EchoResult(cleaned, attenuation, power_db(mic_power), power_db(power(reference)))


class WebRtcEchoCanceller:
    """WebRTC AEC3 (with its always-on high-pass filter) on 16 kHz mono 10 ms frames."""

    name = "webrtc-aec3"

    def __init__(self, delay_hint_ms: int = 0, rate: int = ECHO_RATE) -> None:
        from pywebrtc_audio import EchoCanceller as Aec3

        if rate not in (16000, 32000, 48000):
            raise ValueError(f"AEC3 runs at 16, 32 or 48 kHz, not {rate}")
        self.rate = rate
        self.frame_samples = rate * FRAME_MS // 1000
        self._aec = Aec3(sample_rate=rate, num_channels=1, stream_delay_ms=int(delay_hint_ms))

    @property
    def delay_hint_ms(self) -> int:
        return int(self._aec.stream_delay_ms)

    @delay_hint_ms.setter
    def delay_hint_ms(self, value: int) -> None:
        self._aec.stream_delay_ms = int(value)

    def process(self, mic: FloatArray, reference: FloatArray) -> EchoResult:
        if len(mic) != self.frame_samples or len(reference) != self.frame_samples:
            raise ValueError(f"AEC3 takes {self.frame_samples}-sample frames")
        near = np.ascontiguousarray(mic, dtype=np.float32)
        far = np.ascontiguousarray(reference, dtype=np.float32)
        cleaned: FloatArray = np.asarray(self._aec.process(near, far), dtype=np.float32)
        return _result(near, cleaned, far)


@dataclass
class GateSettings:
    max_delay_frames: int = 50  # echo path delays searched: up to 500 ms
    tail_ms: float = 300.0  # reverberation: the reference envelope decays 60 dB over this
    history_frames: int = 400  # 4 s of frame energies for the delay and gain estimate
    update_every: int = 25  # frames between estimates
    min_active_frames: int = 100  # active playback frames before the estimate is trusted
    active_dbfs: float = -55.0  # reference frames above this count as playback
    gain_percentile: float = 50.0  # robust to the user talking during part of the history
    spread_frames: int = 2  # the prediction takes the loudest envelope within this of the delay
    margin_db: float = 6.0  # a frame is the user when it stands this far above the predicted echo
    prior_gain_db: float = 0.0  # echo gain assumed until estimated: as loud as the playback
    suppress_db: float = 40.0  # what a gated frame loses


class ReferenceEchoGate:
    """Fallback without DSP: explains microphone frame energy by the playback, gates what it explains.

    The reference's energy envelope (with an exponential reverberation tail) delayed by the echo
    path delay and scaled by its gain predicts the echo energy in each microphone frame. Delay and
    gain are estimated by cross-correlating log energies over the last seconds. A frame whose energy
    stays within ``margin_db`` of the prediction is echo and loses ``suppress_db``; anything louder
    passes unchanged. Until the estimate is trusted the prediction is the loudest playback of the
    whole delay window at ``prior_gain_db``: strict, so early barge-ins need a loud user.
    """

    name = "reference-gate"

    def __init__(self, settings: GateSettings | None = None, delay_hint_ms: int | None = None) -> None:
        self.settings = s = settings or GateSettings()
        tail_frames = max(1.0, s.tail_ms / FRAME_MS)
        self._decay = 10.0 ** (-6.0 / tail_frames)  # power decay per frame: 60 dB over the tail
        self._envelope = 0.0
        self._env: deque[float] = deque(maxlen=s.history_frames + s.max_delay_frames)
        self._mic: deque[float] = deque(maxlen=s.history_frames)
        self._frames = 0
        self.delay_frames: int | None = None
        if delay_hint_ms is not None:
            self.delay_frames = min(s.max_delay_frames, max(0, round(delay_hint_ms / FRAME_MS)))
        self.gain_db: float | None = None
        self._suppress = 10.0 ** (-s.suppress_db / 20.0)

    @property
    def converged(self) -> bool:
        return self.gain_db is not None

    def process(self, mic: FloatArray, reference: FloatArray) -> EchoResult:
        s = self.settings
        mic_power = power(mic)
        self._envelope = max(power(reference), self._envelope * self._decay)
        self._env.append(self._envelope)
        self._mic.append(mic_power)
        self._frames += 1
        if self._frames % s.update_every == 0:
            self._estimate()
        predicted = self._predicted_echo()
        explained = predicted > 0.0 and power_db(mic_power) <= power_db(predicted) + s.margin_db
        cleaned = (mic * self._suppress).astype(np.float32) if explained else mic.astype(np.float32)
        return _result(mic, cleaned, reference)

    def _predicted_echo(self) -> float:
        s = self.settings
        env = self._env
        active_floor = 10.0 ** (s.active_dbfs / 10.0)
        if self.gain_db is None or self.delay_frames is None:
            window = list(env)[-(s.max_delay_frames + 1) :]
            loudest = max(window) if window else 0.0
            return loudest * 10.0 ** (s.prior_gain_db / 10.0) if loudest >= active_floor else 0.0
        # the loudest envelope within ``spread_frames`` of the estimated delay: timing slack
        newest = len(env) - 1 - self.delay_frames + s.spread_frames
        oldest = newest - 2 * s.spread_frames
        if newest < 0:
            return 0.0
        loudest = max(env[i] for i in range(max(oldest, 0), min(newest, len(env) - 1) + 1))
        if loudest < active_floor * 10.0 ** (-6.0):  # the tail counts down to -60 dB
            return 0.0
        return loudest * float(10.0 ** (self.gain_db / 10.0))

    def _estimate(self) -> None:
        s = self.settings
        mic = np.asarray(self._mic)
        env = np.asarray(self._env)
        n = len(mic)
        if n < s.min_active_frames:
            return
        mic_db = 10.0 * np.log10(np.maximum(mic, _POWER_FLOOR))
        env_db = 10.0 * np.log10(np.maximum(env, _POWER_FLOOR))
        best: tuple[float, int, int] | None = None
        for delay in range(s.max_delay_frames + 1):
            # microphone frame k (of the last n) against the envelope ``delay`` frames earlier
            end = len(env) - delay
            start = end - n
            if start < 0:
                break
            ref = env_db[start:end]
            active = ref >= s.active_dbfs
            count = int(np.count_nonzero(active))
            if count < s.min_active_frames:
                continue
            corr = float(np.corrcoef(ref[active], mic_db[active])[0, 1])
            if not math.isnan(corr) and (best is None or corr > best[0]):
                best = (corr, delay, count)
        if best is None or best[0] < 0.3:
            return
        _, delay, _ = best
        end = len(env) - delay
        ref = env_db[end - n : end]
        active = ref >= s.active_dbfs
        self.delay_frames = delay
        self.gain_db = float(np.percentile(mic_db[active] - ref[active], s.gain_percentile))


def load_echo_canceller(
    delay_hint_ms: int = 0,
    warn: Callable[[str], None] | None = None,
) -> EchoCanceller:
    """WebRTC AEC3 when ``pywebrtc-audio`` loads, else the reference gate with a one-line warning."""
    try:
        return WebRtcEchoCanceller(delay_hint_ms)
    except Exception as exc:  # ImportError, a broken wheel, an unsupported platform
        message = (
            f"echo cancellation unavailable ({type(exc).__name__}: {exc}); using the reference echo gate"
        )
        (warn or log.warning)(message)
        return ReferenceEchoGate(delay_hint_ms=delay_hint_ms or None)


class PlayedBlockLike(Protocol):
    @property
    def audible_at(self) -> float: ...

    @property
    def samples(self) -> FloatArray: ...

    @property
    def underflow(self) -> bool: ...


class StreamTimeline:
    """When each sample of a steady stream happened, from the times its callbacks reported.

    A device moves samples at a steady rate, so sample k of a stream happened at
    ``anchor + k / rate``. Callback times only ever come late, so the anchor is the earliest
    per-block estimate over the last ``anchor_blocks`` blocks; that window also follows the slow
    drift between the device's clock and the monotonic clock (hundreds of ppm: tens of ms within
    minutes, more than AEC3 tolerates). When the device drops time the stream does not hold (an
    output underrun plays silence, an input overflow loses samples), everything after it happened
    later: when even the earliest of the last ``slip_blocks`` estimates is ``slip_s`` later than
    the anchor, the older estimates are dropped (a slip). A device that reports the drop (an
    output underflow) slips at once: for the ``slip_blocks`` the timeline would otherwise wait, the
    echo runs behind its reference, and that alone halted the assistant on its own voice. A block
    that does not fit the stream at all (a restart, a long stall) starts a new stream at sample 0.
    """

    def __init__(
        self,
        rate: float,
        *,
        anchor_blocks: int = 200,
        slip_blocks: int = 10,
        slip_s: float = 0.005,
        restart_s: float = 0.1,
    ) -> None:
        self.rate = float(rate)
        self._anchors: deque[float] = deque(maxlen=anchor_blocks)
        self._slip_blocks = slip_blocks
        self._slip_s = slip_s
        self._restart_s = restart_s
        self.count = 0  # samples of this stream so far
        self.anchor: float | None = None
        self.restarts = 0
        self.slips = 0

    def observe(self, at: float, samples: int, *, dropped: bool = False) -> bool:
        """The next ``samples`` samples, the first at ``at``; True when they start a new stream.

        ``dropped``: the device reports it lost time just before these samples.
        """
        candidate = at - self.count / self.rate
        restarted = self.anchor is not None and abs(candidate - self.anchor) > self._restart_s
        if restarted:
            self.restarts += 1
            self.count = 0
            self._anchors.clear()
            candidate = at
        elif dropped and self.anchor is not None:
            # Later estimates only lower the anchor back towards the truth, so a drop the
            # device reported but that cost no time costs nothing either.
            self.slips += 1
            self._anchors.clear()
        elif self.anchor is not None and len(self._anchors) >= self._slip_blocks:
            recent = list(itertools.islice(reversed(self._anchors), self._slip_blocks - 1))
            if min(candidate, *recent) - self.anchor > self._slip_s:
                self.slips += 1
                self._anchors.clear()
                self._anchors.extend(reversed(recent))
        self._anchors.append(candidate)
        self.anchor = min(self._anchors)
        self.count += samples
        return restarted

    def time_of(self, index: int) -> float:
        """When sample ``index`` of the stream happened (the stream must have been observed)."""
        assert self.anchor is not None
        return self.anchor + index / self.rate


class ReferenceAligner:
    """Playback blocks (device rate, with the time they became audible) to 16 kHz reference frames.

    The played samples form one :class:`StreamTimeline` at the device rate; ``frame_at(t)``
    returns the reference samples heard ``delay_s`` before microphone time ``t`` (zeros where
    nothing was played). Without the timeline's slips the reference ran up to 55 ms ahead of the
    echo after each output underrun, past what was handed yet. ``lead_s`` shifts the reference
    slightly earlier so timestamp errors keep it causal.
    """

    def __init__(
        self,
        device_rate: float,
        *,
        rate: int = ECHO_RATE,
        delay_s: float = 0.0,
        lead_s: float = 0.01,
        history_s: float = 2.0,
    ) -> None:
        self.device_rate = float(device_rate)
        self.rate = rate
        self.delay_s = delay_s
        self.lead_s = lead_s
        self._history = int(history_s * rate)
        self.timeline = StreamTimeline(device_rate)
        # Twice the history, so the newest samples are shifted to the front once per history
        # rather than the whole history copied on every block.
        self._buffer = np.zeros(2 * self._history, np.float32)
        self._reset()

    @property
    def anchor(self) -> float | None:
        return self.timeline.anchor

    @property
    def restarts(self) -> int:
        return self.timeline.restarts

    @property
    def slips(self) -> int:
        return self.timeline.slips

    def _reset(self) -> None:
        self._resampler = StreamResampler(self.device_rate, self.rate)
        self._fill = 0  # valid samples in _buffer
        self._buffer_start = 0  # stream index (at 16 kHz) of _buffer[0]

    def push(self, block: PlayedBlockLike) -> None:
        samples = np.asarray(block.samples, np.float32)
        if self.timeline.observe(block.audible_at, len(samples), dropped=block.underflow):
            self._reset()
        converted = self._resampler.process(samples)
        # soxr withholds its filter delay: output sample k stands for input position k * in/out,
        # so the stream index below is already in the right place on the timeline.
        n = len(converted)
        if n > self._history:  # only the newest history is kept
            self._buffer_start += self._fill + n - self._history
            self._fill = 0
            converted = converted[-self._history :]
            n = self._history
        if self._fill + n > len(self._buffer):
            keep = self._history - n
            drop = self._fill - keep
            self._buffer[:keep] = self._buffer[drop : self._fill]
            self._fill = keep
            self._buffer_start += drop
        self._buffer[self._fill : self._fill + n] = converted
        self._fill += n

    def extend(self, blocks: Iterable[PlayedBlockLike]) -> None:
        for block in blocks:
            self.push(block)

    def frame_at(self, at: float, samples: int = FRAME_SAMPLES) -> FloatArray:
        frame = np.zeros(samples, np.float32)
        if self.anchor is None:
            return frame
        first = round((at - self.delay_s - self.lead_s - self.anchor) * self.rate) - self._buffer_start
        lo = max(first, 0)
        hi = min(first + samples, self._fill)
        if hi > lo:
            frame[lo - first : hi - first] = self._buffer[lo:hi]
        return frame


EchoMode = Literal["unknown", "speaker", "headset"]


@dataclass
class MonitorSettings:
    active_dbfs: float = -50.0  # reference frames above this count as playback
    window_frames: int = 10  # the echo gain bound assumes echo within 100 ms of the aligned reference
    predict_frames: int = 20  # the predicted echo covers delays up to 200 ms
    predict_percentile: float = 90.0  # of the microphone over the loudest recent playback: the echo gain
    spread_percentile: float = 99.0  # echo alone stays under the prediction plus the spread this often
    min_frames: int = 20  # measured frames before a mode is chosen
    history_frames: int = 300  # the mode follows the last 3 s of measured frames
    headset_below_db: float = -30.0  # an echo gain bound under this: no audible echo path
    settle_s: float = 2.0  # speaker mode: seconds of playback the canceller needs to converge
    resume_after_s: float = 0.3  # playback resuming after this much silence ...
    resume_guard_s: float = 0.3  # ... leaves the canceller weak this long (AEC3 re-adapts)
    tail_s: float = 0.5  # echo (delay plus reverberation) can last this long after the playback
    explained_db: float = 3.0  # a microphone frame within this of the predicted echo is explained by it
    trusted_attenuation_db: float = 10.0  # the canceller is trusted while it removes this from such frames
    check_frames: int = 10  # explained frames the trust is judged on
    decay_s: float = 0.3  # the predicted echo decays 60 dB over this (reverberation)
    # Frames wait this long before they count towards the echo estimates, and are forgotten when
    # the user turns out to be speaking in them: the user talking over the playback (every
    # barge-in) must not pass for loud echo, or the prediction grows and hides the next barge-in.
    bound_hold_frames: int = 20
    hold_frames: int = 50
    # The echo's delay behind the aligned reference, in frames (up to ``predict_frames``): the lag
    # at which the microphone over the playback is steadiest (the smallest spread between its
    # 10th and 90th percentile) over the last seconds of echo, once this many frames are there.
    # With it the prediction follows the playback at that lag (give or take ``delay_slack_frames``)
    # and falls with it, instead of holding the loudest playback of the last 200 ms: the user's
    # "Wait" in a pause between the assistant's words was judged echo for up to 200 ms after each
    # loud syllable (measured at 0 dB: interruptions halted 650 ms late, on the next words).
    delay_min_frames: int = 100
    delay_slack_frames: int = 1


@dataclass(frozen=True)
class EchoState:
    """The monitor's verdict on one microphone frame."""

    mode: EchoMode
    echo_possible: bool  # the playback was active recently enough to be in this frame
    settling: bool  # speaker (or unknown) mode and the canceller is not trusted yet
    excess_db: float  # microphone level above the loudest echo the recent playback (and its reverb) predicts
    echo_gain_db: float | None  # echo level relative to the playback (an upper bound), once measured
    # How far echo alone rises above the prediction (its 99th percentile frames), once measured:
    # about 0.5 dB for a steady sound, several dB for speech.
    excess_spread_db: float | None = None


class EchoMonitor:
    """Measures the echo path from microphone and reference frame levels, frame by frame.

    While the reference has stayed active over the whole delay window, the microphone must hold
    at least the echo of the window's quietest reference frame, so ``mic - min(reference)`` bounds
    the echo gain from above; the user talking only raises the bound. The median over the last
    seconds of such frames is the echo gain estimate: at or below ``headset_below_db`` nothing the
    assistant plays comes back (headset mode), above it the output is heard (speaker mode). Until
    enough frames are measured the mode is unknown and treated like speaker mode (strict).

    The predicted echo of a frame is the loudest reference of the last ``predict_frames`` (with a
    reverberation decay) times the prediction gain: the ``predict_percentile`` of the microphone
    over that loudest reference, capped by the bound. Its ``excess_db`` is how far the microphone
    stands above that: far above, the user is talking over the echo; at or below it, the frame is
    echo whatever the canceller did.

    Settling covers what the canceller cannot do (yet): in speaker mode, the first ``settle_s`` of
    playback in the session (it converges once, never reset), ``resume_guard_s`` after the
    playback resumes from a pause (AEC3 lets some echo through while it re-adapts), and any time
    the canceller removes less than ``trusted_attenuation_db`` (median) from the last frames the
    predicted echo explains: after the echo path jumped (an output underrun delays everything
    played after it) AEC3 passes the echo until its filter has found the new delay.
    """

    def __init__(self, settings: MonitorSettings | None = None) -> None:
        self.settings = s = settings or MonitorSettings()
        self._reference: deque[float] = deque(maxlen=s.window_frames + 1)
        self._envelope: deque[float] = deque(maxlen=s.predict_frames + 1)
        self._decay_db = 60.0 * FRAME_MS / 1000.0 / s.decay_s  # per frame
        self._bounds: deque[float] = deque(maxlen=s.history_frames)
        self._ratios: deque[float] = deque(maxlen=s.history_frames)
        self._bound_count = 0
        self._ratio_count = 0
        self.predict_gain_db: float | None = None
        self.excess_spread_db: float | None = None
        self.playback_frames = 0  # active reference frames this session
        self._silent_frames = 1 << 30  # reference frames since the last active one
        self._since_resume = 1 << 30  # frames since the playback resumed after a pause
        self._checks: deque[float] = deque(maxlen=s.check_frames)
        self._held_bounds: deque[float] = deque()
        self._held_ratios: deque[float] = deque()
        # Per frame: the microphone level and the playback envelope at every lag (index d: d
        # frames before), held like the ratios, then kept for the delay estimate.
        self._held_lags: deque[tuple[float, FloatArray]] = deque()
        self._lag_mic: deque[float] = deque(maxlen=s.history_frames)
        self._lag_env: deque[FloatArray] = deque(maxlen=s.history_frames)
        self._lag_count = 0
        self.echo_delay_frames: int | None = None
        self._delay_gain_db = 0.0
        self._delay_spread_db = 0.0
        self._trusted = True  # until check_frames explained frames say otherwise
        self.echo_gain_db: float | None = None
        self.mode: EchoMode = "unknown"

    @property
    def canceller_trusted(self) -> bool:
        """Has the canceller removed enough from the recent frames that were all echo?"""
        return self._trusted

    @property
    def playback_s(self) -> float:
        return self.playback_frames * FRAME_MS / 1000.0

    def disturbed(self) -> None:
        """The echo path jumped (the reference was re-anchored): guard as after a pause."""
        self._since_resume = 0

    def update(self, mic_dbfs: float, reference_dbfs: float, attenuation_db: float = 0.0) -> EchoState:
        """The levels of one pair of aligned 10 ms frames, and what the canceller removed."""
        s = self.settings
        frame_s = FRAME_MS / 1000.0
        active = reference_dbfs >= s.active_dbfs
        if active:
            if self._silent_frames * frame_s >= s.resume_after_s:
                self._since_resume = 0
            self._silent_frames = 0
            self.playback_frames += 1
        else:
            self._silent_frames += 1
        self._since_resume += 1
        self._reference.append(reference_dbfs)
        last = self._envelope[-1] if self._envelope else _SILENT_DB
        self._envelope.append(max(reference_dbfs, last - self._decay_db))
        full = len(self._reference) == self._reference.maxlen
        if full and min(self._reference) >= s.active_dbfs:
            self._held_bounds.append(mic_dbfs - min(self._reference))
            while len(self._held_bounds) > s.bound_hold_frames:
                self._add_bound(self._held_bounds.popleft())
        loudest = max(self._envelope)
        lags: FloatArray | None = None
        if len(self._envelope) == self._envelope.maxlen:
            lags = np.fromiter(reversed(self._envelope), np.float32, len(self._envelope))
        if loudest >= s.active_dbfs:
            self._held_ratios.append(mic_dbfs - loudest)
            while len(self._held_ratios) > s.hold_frames:
                self._add_ratio(self._held_ratios.popleft())
            if lags is not None:
                self._held_lags.append((mic_dbfs, lags))
                while len(self._held_lags) > s.hold_frames:
                    self._add_lags(*self._held_lags.popleft())
        excess = mic_dbfs - self._predicted_db(loudest, lags)
        if active and self.echo_gain_db is not None and excess < s.explained_db:
            # Not held: a canceller that lets the echo through must be caught at once.
            self._checks.append(attenuation_db)
            self._trusted = (
                len(self._checks) < s.check_frames
                or float(np.median(self._checks)) >= s.trusted_attenuation_db
            )
        return self._state(excess)

    def user_speaking(self) -> None:
        """The detector hears the user: the frames still held are (partly) theirs; forget them."""
        self._held_bounds.clear()
        self._held_ratios.clear()
        self._held_lags.clear()

    def _add_lags(self, mic_dbfs: float, lags: FloatArray) -> None:
        s = self.settings
        self._lag_mic.append(mic_dbfs)
        self._lag_env.append(lags)
        self._lag_count += 1
        due = self._lag_count % (5 * _ESTIMATE_EVERY) == 0
        if not due or len(self._lag_mic) < s.delay_min_frames or self.echo_gain_db is None:
            return
        mic = np.fromiter(self._lag_mic, np.float32, len(self._lag_mic))
        env = np.stack(self._lag_env)
        best: tuple[float, int, float, float] | None = None
        for delay in range(env.shape[1]):
            active = env[:, delay] >= s.active_dbfs
            if int(np.count_nonzero(active)) < s.delay_min_frames:
                continue
            ratios = mic[active] - env[active, delay]
            low, predict, top = np.percentile(ratios, (10.0, s.predict_percentile, s.spread_percentile))
            spread = float(predict - low)
            if best is None or spread < best[0]:
                best = (spread, delay, float(predict), float(top))
        if best is not None:
            _, self.echo_delay_frames, predict, top = best
            self._delay_gain_db = min(predict, self.echo_gain_db)
            self._delay_spread_db = top - self._delay_gain_db

    def _add_bound(self, bound: float) -> None:
        s = self.settings
        self._bounds.append(bound)
        # A median over seconds of frames: every few frames is fresh enough, and cheaper.
        self._bound_count += 1
        if len(self._bounds) >= s.min_frames and self._bound_count % _ESTIMATE_EVERY == 0:
            self.echo_gain_db = float(np.median(self._bounds))
            self.mode = "headset" if self.echo_gain_db <= s.headset_below_db else "speaker"

    def _add_ratio(self, ratio: float) -> None:
        s = self.settings
        self._ratios.append(ratio)
        self._ratio_count += 1
        due = self._ratio_count % _ESTIMATE_EVERY == 0 or self.predict_gain_db is None
        if len(self._ratios) >= s.min_frames and self.echo_gain_db is not None and due:
            # The bound overstates the gain for speech (the window's quietest frame is far
            # below the echo's source); a high percentile of the microphone over the loudest
            # recent playback is close to it, and the bound caps it when the user talks a lot.
            predict, top = np.percentile(self._ratios, (s.predict_percentile, s.spread_percentile))
            self.predict_gain_db = min(float(predict), self.echo_gain_db)
            self.excess_spread_db = float(top) - self.predict_gain_db

    @property
    def idle(self) -> bool:
        """Nothing played for longer than the echo lasts: no echo can be in the next frame."""
        return self._silent_frames * FRAME_MS / 1000.0 >= self.settings.tail_s

    def _predicted_db(self, loudest: float, lags: FloatArray | None) -> float:
        delay = self.echo_delay_frames
        if delay is not None and lags is not None:
            slack = self.settings.delay_slack_frames
            near = lags[max(0, delay - slack) : delay + slack + 1]
            return float(np.max(near)) + self._delay_gain_db
        gain = self.predict_gain_db if self.predict_gain_db is not None else self.echo_gain_db
        return loudest + (gain if gain is not None else 0.0)  # unknown: as loud as played

    def _state(self, excess_db: float) -> EchoState:
        s = self.settings
        frame_s = FRAME_MS / 1000.0
        settling = self.mode != "headset" and (
            self.playback_s < s.settle_s
            or self._since_resume * frame_s <= s.resume_guard_s
            or not self.canceller_trusted
        )
        return EchoState(
            mode=self.mode,
            echo_possible=not self.idle,
            settling=settling,
            excess_db=excess_db,
            echo_gain_db=self.echo_gain_db,
            excess_spread_db=self._delay_spread_db
            if self.echo_delay_frames is not None
            else self.excess_spread_db,
        )


@dataclass(frozen=True)
class CleanedFrame:
    samples: FloatArray  # 16 kHz, 10 ms: the canceller's output
    captured_at: float  # monotonic capture time of the first sample
    attenuation_db: float
    mic_dbfs: float
    reference_dbfs: float
    raw: FloatArray  # the microphone frame as captured
    state: EchoState


@dataclass(frozen=True)
class JudgeSettings:
    """How :func:`judge` weighs what the canceller removed against the echo the playback predicts."""

    attenuation_db: float = 10.0  # a frame the canceller took this much from is echo ...
    # ... unless the microphone stands this far above the predicted echo: then the user dominates
    # (AEC3's suppressor takes 100-200 ms to release at the start of double talk and would hide
    # the user meanwhile). 6 dB, not less, for speech: its predicted echo is only good to a few
    # dB frame by frame. When the monitor has measured how far echo alone rises over the
    # prediction (its spread: ~0.15 dB for a steady sound), the threshold is that plus
    # ``double_talk_margin_db``, between ``double_talk_min_db`` and this.
    double_talk_db: float = 6.0
    double_talk_margin_db: float = 2.0
    double_talk_min_db: float = 3.0
    explained_db: float = 2.0  # under this excess the frame is echo whatever the canceller did
    settling_explained_db: float = 3.0  # the same while the canceller is not trusted


@dataclass(frozen=True)
class EchoVerdict:
    """What one microphone frame is, as far as the assistant's voice goes.

    The one place that answers "is this frame the assistant's echo, and does the raw microphone
    go on?": the detector, the model's frames and the echo estimates all follow it.
    """

    signal: FloatArray  # what the detector and the model get: the raw microphone or the canceller's output
    echo: bool  # the frame is (or may be) the assistant's voice: it cannot be the user
    possible: bool  # the assistant can be heard in this frame at all (it played within the echo's tail)
    settling: bool  # the canceller is not trusted yet: an onset must be surer


def double_talk_threshold(spread_db: float | None, settings: JudgeSettings) -> float:
    """How far above the predicted echo the microphone must stand to be the user over it."""
    if spread_db is None:
        return settings.double_talk_db
    measured = spread_db + settings.double_talk_margin_db
    return min(settings.double_talk_db, max(settings.double_talk_min_db, measured))


def judge(frame: CleanedFrame, settings: JudgeSettings | None = None) -> EchoVerdict:
    """The echo verdict on one frame of the echo path.

    - No playback within the echo's tail: the raw microphone, nothing to judge.
    - Headset mode: the raw microphone (AEC3 without an echo path still suppresses near-end
      speech it mistakes for echo, for seconds after a double talk), but "headset" only means
      echo under -30 dB, which a silent room still lets through the detector's absolute floor:
      a frame the predicted echo explains is echo.
    - Speaker mode (or not known yet): echo when the canceller removed ``attenuation_db`` or more,
      unless the user plainly dominates (double talk the suppressor has not released yet: then
      the raw frame goes on, for the model too), and whenever the predicted echo explains the
      frame, whatever the canceller did (its glitches after the echo path jumps).
    """
    s = settings or _DEFAULT_JUDGE
    state = frame.state
    if not state.echo_possible:
        return EchoVerdict(frame.raw, echo=False, possible=False, settling=False)
    if state.mode == "headset":
        return EchoVerdict(frame.raw, echo=state.excess_db < s.explained_db, possible=True, settling=False)
    explained = s.settling_explained_db if state.settling else s.explained_db
    suppressed = frame.attenuation_db >= s.attenuation_db
    double_talk = state.excess_db >= double_talk_threshold(state.excess_spread_db, s)
    return EchoVerdict(
        frame.raw if suppressed and double_talk else frame.samples,
        echo=state.excess_db < explained or (suppressed and not double_talk),
        possible=True,
        settling=state.settling,
    )


_DEFAULT_JUDGE = JudgeSettings()


class EchoPath:
    """The capture worker's echo stage: microphone samples in, cleaned 10 ms frames out.

    Call :meth:`add_reference` with new playback blocks and :meth:`process` with 16 kHz microphone
    samples and the capture time of the first, from one thread (the canceller is not thread-safe).
    The microphone samples form a :class:`StreamTimeline` too: counting samples alone drifts from
    the reference's clock by tens of ms within minutes, and a late reference lets the echo through.
    """

    def __init__(
        self, canceller: EchoCanceller, aligner: ReferenceAligner, monitor: EchoMonitor | None = None
    ) -> None:
        self.canceller = canceller
        self.aligner = aligner
        self.monitor = monitor or EchoMonitor()
        self.timeline = StreamTimeline(ECHO_RATE)
        # Counts samples like the timeline, so a frame's stream index is its index in the timeline.
        self._framer = Framer(FRAME_SAMPLES, np.float32)
        self.skipped = 0  # idle frames that bypassed the canceller

    def add_reference(self, blocks: Iterable[PlayedBlockLike]) -> None:
        jumps = self.aligner.slips + self.aligner.restarts
        self.aligner.extend(blocks)
        if self.aligner.slips + self.aligner.restarts != jumps:
            self.monitor.disturbed()  # AEC3 must find the new delay

    def process(self, samples: FloatArray, captured_at: float) -> list[CleanedFrame]:
        if self.timeline.observe(captured_at, len(samples)):
            # A new stream (the capture restarted): what was pending belongs to the old one.
            self._framer.reset()
        start, mics = self._framer.push(samples)
        frames: list[CleanedFrame] = []
        for i, mic in enumerate(mics):
            at = self.timeline.time_of(start + i * FRAME_SAMPLES)
            reference = self.aligner.frame_at(at)
            if self.monitor.idle and not reference.any():
                # Nothing played for longer than the echo lasts: the canceller would pass the
                # microphone through, so it is skipped (most of the worker's CPU while idle).
                # Its render history ends in the zeros of the echo tail, so it resumes cleanly.
                # The monitor only counts the time: long after the playback nothing is measured.
                mic_dbfs = power_db(power(mic))
                state = self.monitor.update(mic_dbfs, _SILENT_DB)
                frames.append(CleanedFrame(mic, at, 0.0, mic_dbfs, _SILENT_DB, mic, state))
                self.skipped += 1
                continue
            result = self.canceller.process(mic, reference)
            state = self.monitor.update(result.mic_dbfs, result.reference_dbfs, result.attenuation_db)
            frames.append(
                CleanedFrame(
                    result.cleaned,
                    at,
                    result.attenuation_db,
                    result.mic_dbfs,
                    result.reference_dbfs,
                    mic,
                    state,
                )
            )
        return frames
