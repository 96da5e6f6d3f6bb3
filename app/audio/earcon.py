"""The fail-fast earcon: a short, soft two-note chime meaning "heard you, working on it".

The shipped file is ``assets/sounds/earcon.wav``; :func:`synthesize_earcon` is how it was made, and
stands in for it if the file is missing or damaged, so a broken install still gets its cue.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from app.audio.resample import FloatArray, float_to_pcm16, pcm16_to_float
from app.paths import assets_dir

EARCON_RATE = 24000
NOTES_HZ = (659.25, 880.0)  # E5 then A5: a rising fourth reads as "pending", not as an alarm
NOTE_S = 0.11
PEAK_DBFS = -18.0  # soft: well under speech level, so it never startles


def earcon_path() -> Path:
    return assets_dir() / "sounds" / "earcon.wav"


def synthesize_earcon(rate: int = EARCON_RATE) -> FloatArray:
    n = int(rate * NOTE_S)
    t = np.arange(n) / rate
    attack = np.minimum(1.0, t / 0.008)
    envelope = attack * np.exp(-t / 0.045)  # a struck, quickly fading tone, like a soft mallet
    notes = []
    for freq in NOTES_HZ:
        tone = np.sin(2 * np.pi * freq * t) + 0.2 * np.sin(2 * np.pi * 2 * freq * t)
        notes.append(tone * envelope)
    signal = np.concatenate([*notes, np.zeros(int(rate * 0.02))])
    signal *= 10 ** (PEAK_DBFS / 20) / np.max(np.abs(signal))
    return signal.astype(np.float32)


def write_earcon(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(EARCON_RATE)
        wav.writeframes(float_to_pcm16(synthesize_earcon()))


def load_earcon(path: Path | None = None) -> bytes:
    """24 kHz mono PCM16 of the earcon, from the shipped file when it is usable."""
    try:
        with wave.open(str(path or earcon_path()), "rb") as wav:
            if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, EARCON_RATE):
                data = wav.readframes(wav.getnframes())
                if data and len(data) % 2 == 0:
                    return data
    except (OSError, EOFError, wave.Error):
        pass
    return float_to_pcm16(synthesize_earcon())


def earcon_samples(path: Path | None = None) -> FloatArray:
    return pcm16_to_float(load_earcon(path))


if __name__ == "__main__":
    write_earcon(earcon_path())
    print(f"wrote {earcon_path()}")
