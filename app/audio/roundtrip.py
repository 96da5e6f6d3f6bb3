"""Audio check: play a short chirp, record it, report the echo path and which echo mode applies.

A chirp, not a steady tone, so that cross-correlation has one sharp peak and the delay is
unambiguous. Timing uses the same monotonic clock on both sides: when the chirp's first sample
was handed to the output device, and when the matching sample came out of the input device.

The chirp heard in the input is the echo path the echo canceller faces: its delay and its level
relative to what was played. Heard at a level that matters, the setup is in speaker mode (laptop
speakers: echo cancellation needed); not heard, it is in headset mode, which is normal and not a
failure as long as both devices delivered audio.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from app.audio.devices import AudioDevice
from app.audio.echo import MonitorSettings
from app.audio.probe import SignalPlayer, TimedRecorder
from app.audio.resample import FloatArray
from app.audio.streams import open_stream

CHIRP_MS = 150
CHIRP_LEVEL = 0.5
LEAD_IN_S = 0.3  # silence before the chirp, to measure the noise floor
MIN_SNR_DB = 10.0
MIN_CORRELATION = 0.3
# An echo quieter than this relative to the output does not matter: the app's echo monitor uses
# the same threshold to choose headset mode at run time.
HEADSET_BELOW_DB = MonitorSettings().headset_below_db
SILENT_INPUT_DBFS = -90.0  # quieter than any working microphone's own noise: digital silence


def chirp(rate: float, duration_ms: float = CHIRP_MS, f0: float = 400.0, f1: float = 3200.0) -> FloatArray:
    """A linear sweep with 5 ms fades, so it starts and ends without clicks."""
    n = int(rate * duration_ms / 1000.0)
    t = np.arange(n) / rate
    duration = n / rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * duration))
    signal = np.sin(phase).astype(np.float32) * CHIRP_LEVEL
    fade = min(n // 2, int(rate * 0.005))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        signal[:fade] *= ramp
        signal[n - fade :] *= ramp[::-1]
    return signal


def level_dbfs(samples: FloatArray) -> float:
    if len(samples) == 0:
        return -100.0
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20.0 * float(np.log10(max(rms, 1e-5)))


@dataclass(frozen=True)
class ChirpMatch:
    index: int  # sample where the chirp starts in the recording
    correlation: float  # normalised peak, 0..1
    level_dbfs: float  # level of the recorded chirp
    noise_dbfs: float  # level of the recording outside it


def find_chirp(recording: FloatArray, template: FloatArray) -> ChirpMatch | None:
    """Locate ``template`` in ``recording`` by FFT cross-correlation."""
    n, m = len(recording), len(template)
    if n < m or m == 0:
        return None
    size = 1 << int(np.ceil(np.log2(n + m)))
    spectrum = np.fft.rfft(recording, size) * np.conj(np.fft.rfft(template, size))
    corr = np.fft.irfft(spectrum, size)[: n - m + 1]
    index = int(np.argmax(np.abs(corr)))
    segment = recording[index : index + m]
    energy = float(np.sqrt(np.sum(np.square(segment, dtype=np.float64)) * np.sum(np.square(template))))
    correlation = abs(float(corr[index])) / energy if energy > 0 else 0.0
    outside = np.concatenate((recording[:index], recording[index + m :]))
    return ChirpMatch(index, correlation, level_dbfs(segment), level_dbfs(outside))


@dataclass(frozen=True)
class AudioCheckResult:
    input_device: str
    output_device: str
    ok: bool  # the check passed: both devices delivered audio and what was heard makes sense
    echo_found: bool  # the chirp was recognised in the input
    level_dbfs: float  # input level of the chirp (or of the input while it played)
    noise_dbfs: float
    roundtrip_ms: float | None  # echo delay: the chirp handed to the output to its echo captured
    echo_level_db: float | None  # the echo's level relative to what was played
    mode: str | None  # "speaker" or "headset" (None when the check failed)
    message: str
    note: str | None = None

    @property
    def heard(self) -> bool:
        """Whether the check passed (the CLI's exit code reads this name)."""
        return self.ok

    def report(self) -> str:
        lines = [
            f"output: {self.output_device}",
            f"input:  {self.input_device}",
            f"input level of the test sound: {self.level_dbfs:.1f} dBFS (noise {self.noise_dbfs:.1f} dBFS)",
        ]
        if self.roundtrip_ms is not None:
            lines.append(f"output-to-input round trip: {self.roundtrip_ms:.1f} ms")
        if self.echo_level_db is not None and self.roundtrip_ms is not None:
            lines.append(
                f"echo path: delay {self.roundtrip_ms:.1f} ms, "
                f"level {self.echo_level_db:.1f} dB relative to the output"
            )
        elif self.ok:
            lines.append("echo path: none measured (the input does not hear the output)")
        if self.mode == "speaker":
            lines.append("speaker mode: the input hears the output; echo cancellation is needed")
        elif self.mode == "headset":
            lines.append("headset mode: no echo to cancel; barge-in is not held back")
        if self.note:
            lines.append(f"note: {self.note}")
        lines.append(("OK: " if self.ok else "FAILED: ") + self.message)
        return "\n".join(lines)


def run_audio_check(
    input_device: AudioDevice, output_device: AudioDevice, tail_s: float = 0.8
) -> AudioCheckResult:
    out_rate = float(output_device.default_samplerate)
    recorder = TimedRecorder(input_device.default_samplerate)
    lead_in = int(out_rate * LEAD_IN_S)
    signal = np.concatenate((np.zeros(lead_in, np.float32), chirp(out_rate)))
    player = SignalPlayer(signal, out_rate)
    with open_stream("input", input_device, recorder.callback):
        time.sleep(0.1)
        with open_stream("output", output_device, player.callback):
            player.finished.wait(LEAD_IN_S + CHIRP_MS / 1000.0 + 5.0)
            time.sleep(tail_s)
    return analyse_check(input_device.name, output_device.name, recorder, player.handed_at(lead_in))


def analyse_check(
    input_name: str, output_name: str, recorder: TimedRecorder, handed_at: float | None
) -> AudioCheckResult:
    def failed(message: str, level: float = -100.0, noise: float = -100.0) -> AudioCheckResult:
        return AudioCheckResult(
            input_name, output_name, False, False, level, noise, None, None, None, message
        )

    if not recorder.blocks or handed_at is None:
        return failed("no audio came from the devices")
    recording = recorder.recording()
    template = chirp(recorder.rate)
    match = find_chirp(recording, template)
    if match is None:
        return failed("recording too short")
    snr = match.level_dbfs - match.noise_dbfs
    found = match.correlation >= MIN_CORRELATION and snr >= MIN_SNR_DB
    if not found and snr >= MIN_SNR_DB:
        # Something loud came in while the chirp played, but not the chirp: a distorted path or
        # a noisy room; neither mode can be vouched for.
        return failed(
            f"the test sound was not recognised (match {match.correlation:.2f}, "
            f"{snr:.1f} dB above the noise): turn the volume up or move the microphone closer",
            match.level_dbfs,
            match.noise_dbfs,
        )
    note = None
    if max(match.level_dbfs, match.noise_dbfs) < SILENT_INPUT_DBFS:
        note = (
            "the input was digitally silent: if this is not a headset, "
            "check that the microphone is on and not muted"
        )
    if not found:
        return AudioCheckResult(
            input_name,
            output_name,
            True,
            False,
            match.level_dbfs,
            match.noise_dbfs,
            None,
            None,
            "headset",
            "both devices work; the input does not hear the output",
            note,
        )
    captured_at = recorder.time_of(match.index)
    roundtrip = (captured_at - handed_at) * 1000.0 if captured_at is not None else None
    echo_level = match.level_dbfs - level_dbfs(template)
    mode = "speaker" if echo_level > HEADSET_BELOW_DB else "headset"
    return AudioCheckResult(
        input_name,
        output_name,
        True,
        True,
        match.level_dbfs,
        match.noise_dbfs,
        roundtrip,
        echo_level,
        mode,
        "the input device hears the output device",
        note,
    )
