"""What a driven user says, as audio: text spoken by espeak-ng (pauses inside a sentence written
``|MS|`` become SSML breaks, which espeak-ng renders as silence without ending the sentence's
intonation) or by the app's own offline voice (Piper), or a WAV file."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from app.audio.probe import espeak_speech
from app.audio.resample import FloatArray
from app.testkit.scenario import PAUSE_MARK

ESPEAK_WORDS_PER_MINUTE = 160

_piper: dict[float, object] = {}


class SpeechUnavailable(RuntimeError):
    """The voice a turn asks for is not installed, or its file cannot be read."""


def speak(text: str, voice: str, speed: float = 0.0) -> tuple[FloatArray, int]:
    """``text`` (with ``|MS|`` pause marks) in ``voice`` (``espeak:NAME`` or ``piper``) as mono
    float32 and its rate; ``speed``: espeak-ng words a minute, or Piper's length scale; 0 for the
    voice's usual pace."""
    if voice == "piper":
        return _piper_speech(PAUSE_MARK.sub(" ", text).strip(), speed or 1.0)
    name = voice.removeprefix("espeak:")
    pace = int(speed or ESPEAK_WORDS_PER_MINUTE)
    try:
        if PAUSE_MARK.search(text):
            ssml = (
                "<speak>" + PAUSE_MARK.sub(lambda m: f' <break time="{m.group(1)}ms"/> ', text) + "</speak>"
            )
            return espeak_speech(ssml, name, pace, ssml=True)
        return espeak_speech(text, name, pace)
    except FileNotFoundError as exc:
        raise SpeechUnavailable(str(exc)) from None
    except Exception as exc:  # espeak-ng refused: an unknown voice, most often
        raise SpeechUnavailable(f"espeak-ng could not speak with voice {name!r}: {exc}") from None


def _piper_speech(text: str, length_scale: float) -> tuple[FloatArray, int]:
    try:
        from app.localmodel.tts import PiperVoice
    except ImportError as exc:
        raise SpeechUnavailable(f"the offline voice is not installed here ({exc})") from None
    voice = _piper.get(length_scale)
    if voice is None:
        voice = _piper[length_scale] = PiperVoice(length_scale=length_scale)
    samples = voice.synthesize(text)  # type: ignore[attr-defined]
    return np.asarray(samples, np.float32), int(voice.sample_rate)  # type: ignore[attr-defined]


def read_wav(path: Path) -> tuple[FloatArray, int]:
    """A 16-bit PCM WAV file (any channels, mixed down) as mono float32 and its rate."""
    try:
        with wave.open(str(path), "rb") as handle:
            if handle.getsampwidth() != 2:
                raise SpeechUnavailable(
                    f"{path}: only 16-bit PCM WAV files can be played (convert it with sox)"
                )
            channels, rate = handle.getnchannels(), handle.getframerate()
            frames = handle.readframes(handle.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise SpeechUnavailable(f"{path}: not a readable WAV file ({exc})") from None
    samples = np.frombuffer(frames, "<i2").astype(np.float32) / 32768.0
    return samples.reshape(-1, channels).mean(axis=1).astype(np.float32), rate


def write_wav(path: Path, channels: list[FloatArray], rate: int) -> None:
    """Float channels of one length into a 16-bit WAV file (clipped)."""
    data = np.stack(channels, axis=1) if len(channels) > 1 else channels[0][:, None]
    pcm = (np.clip(data, -1.0, 1.0) * 32767.0).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(len(channels))
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())
