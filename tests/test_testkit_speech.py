"""What a driven user says: espeak-ng with pauses inside a sentence, the offline voice, WAV files."""

from __future__ import annotations

import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from app.testkit.speech import SpeechUnavailable, read_wav, speak, write_wav

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def longest_silence_s(samples: np.ndarray, rate: int) -> float:
    """Inside the speech: from its first audible sample to its last."""
    audible = np.flatnonzero(np.abs(samples) >= 0.002)
    quiet = np.abs(samples[audible[0] : audible[-1]]) < 0.002
    longest = run = 0
    for value in quiet:
        run = run + 1 if value else 0
        longest = max(longest, run)
    return longest / rate


@needs_espeak
def test_a_pause_mark_becomes_that_much_silence_inside_the_sentence() -> None:
    plain, rate = speak("my laptop will not start", "espeak:en-us")
    paused, paused_rate = speak("my laptop |800| will not start", "espeak:en-us")
    assert rate == paused_rate
    assert longest_silence_s(plain, rate) < 0.3
    assert 0.75 <= longest_silence_s(paused, rate) <= 1.0
    assert len(paused) / rate > len(plain) / rate + 0.6


@needs_espeak
def test_an_unknown_espeak_voice_is_a_clear_error() -> None:
    with pytest.raises(SpeechUnavailable, match="could not speak with voice 'xx-nowhere'"):
        speak("hello", "espeak:xx-nowhere")


def test_the_offline_voice_speaks() -> None:
    samples, rate = speak("Hello there", "piper")
    assert rate > 8000 and len(samples) / rate > 0.4 and float(np.max(np.abs(samples))) > 0.05


def test_a_wav_file_round_trips_and_a_wrong_one_says_why(tmp_path: Path) -> None:
    tone = (0.5 * np.sin(np.arange(1600) / 1600 * 2 * np.pi * 100)).astype(np.float32)
    write_wav(tmp_path / "two.wav", [tone, -tone], 16000)
    mixed, rate = read_wav(tmp_path / "two.wav")
    assert rate == 16000 and np.max(np.abs(mixed)) < 1e-3  # the two channels cancel when mixed down
    write_wav(tmp_path / "one.wav", [tone], 16000)
    mono, _ = read_wav(tmp_path / "one.wav")
    assert np.max(np.abs(mono - tone)) < 1e-4
    with wave.open(str(tmp_path / "eight.wav"), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(1)
        handle.setframerate(8000)
        handle.writeframes(bytes(800))
    with pytest.raises(SpeechUnavailable, match="only 16-bit PCM"):
        read_wav(tmp_path / "eight.wav")
    (tmp_path / "junk.wav").write_bytes(b"not a wav")
    with pytest.raises(SpeechUnavailable, match="not a readable WAV file"):
        read_wav(tmp_path / "junk.wav")
