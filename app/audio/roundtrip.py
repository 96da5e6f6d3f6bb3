"""Audio check: play a short chirp, record it, report input level and output-to-input latency.

A chirp, not a steady tone, so that cross-correlation has one sharp peak and the delay is
unambiguous. Timing uses the same monotonic clock on both sides: when the chirp's first sample
was handed to the output device, and when the matching sample came out of the input device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from app.audio.devices import AudioDevice
from app.audio.probe import SignalPlayer, TimedRecorder
from app.audio.resample import FloatArray
from app.audio.streams import open_stream

CHIRP_MS = 150
CHIRP_LEVEL = 0.5
LEAD_IN_S = 0.3  # silence before the chirp, to measure the noise floor
MIN_SNR_DB = 10.0
MIN_CORRELATION = 0.3


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
    heard: bool
    level_dbfs: float
    noise_dbfs: float
    roundtrip_ms: float | None
    message: str

    def report(self) -> str:
        lines = [
            f"output: {self.output_device}",
            f"input:  {self.input_device}",
            f"input level of the test sound: {self.level_dbfs:.1f} dBFS (noise {self.noise_dbfs:.1f} dBFS)",
        ]
        if self.roundtrip_ms is not None:
            lines.append(f"output-to-input round trip: {self.roundtrip_ms:.1f} ms")
        lines.append(("OK: " if self.heard else "FAILED: ") + self.message)
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
    if not recorder.blocks or handed_at is None:
        return AudioCheckResult(
            input_name, output_name, False, -100.0, -100.0, None, "no audio came from the devices"
        )
    recording = recorder.recording()
    match = find_chirp(recording, chirp(recorder.rate))
    if match is None:
        return AudioCheckResult(input_name, output_name, False, -100.0, -100.0, None, "recording too short")
    snr = match.level_dbfs - match.noise_dbfs
    heard = match.correlation >= MIN_CORRELATION and snr >= MIN_SNR_DB
    captured_at = recorder.time_of(match.index)
    roundtrip = (captured_at - handed_at) * 1000.0 if heard and captured_at is not None else None
    if heard:
        message = "the input device hears the output device"
    elif match.level_dbfs < -60.0:
        message = "the input device heard nothing: check that the microphone is on and not muted"
    else:
        message = (
            f"the test sound was not recognised (match {match.correlation:.2f}, "
            f"{snr:.1f} dB above the noise): turn the volume up or move the microphone closer"
        )
    return AudioCheckResult(
        input_name, output_name, heard, match.level_dbfs, match.noise_dbfs, roundtrip, message
    )
