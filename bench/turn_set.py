"""The turn-taking test set (``bench/data/turn_set.toml``) rendered to audio, the same every time.

Each request is spoken by espeak-ng (a voice, a variant and a speed) or by Piper (the app's own
voice at a length scale). A pause inside a sentence, written ``|MS|`` in the text, becomes an SSML
``<break>`` that espeak-ng renders as silence without ending the sentence's intonation.

    python -m bench.turn_set [--out DIR]    # writes the set as WAV files, to listen to
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
import wave
from dataclasses import dataclass
from pathlib import Path

from app.audio.resample import FloatArray, float_to_pcm16
from app.testkit.speech import speak

SET_FILE = Path(__file__).parent / "data" / "turn_set.toml"
_PAUSE = re.compile(r"\s*\|(\d+)\|\s*")


@dataclass(frozen=True)
class TurnRequest:
    text: str  # without the pause marks
    voice: str
    speed: float
    pauses_ms: tuple[int, ...]  # the pauses inside the sentence, in order

    @property
    def paused(self) -> bool:
        return bool(self.pauses_ms)

    @property
    def voice_kind(self) -> str:
        return "piper" if self.voice == "piper" else "espeak"


def load_set(path: Path = SET_FILE) -> list[tuple[TurnRequest, str]]:
    """The requests, each with its text as written (pause marks and all)."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    requests = []
    for entry in data["request"]:
        written = str(entry["text"])
        pauses = tuple(int(ms) for ms in _PAUSE.findall(written))
        if any(not 300 <= ms <= 900 for ms in pauses):
            raise ValueError(f"{written!r}: pauses inside a sentence are 300 to 900 ms here")
        voice = str(entry["voice"])
        if pauses and not voice.startswith("espeak:"):
            raise ValueError(f"{written!r}: only espeak-ng renders a pause inside a sentence")
        plain = _PAUSE.sub(" ", written).strip()
        requests.append((TurnRequest(plain, voice, float(entry["speed"]), pauses), written))
    return requests


def render(request: TurnRequest, written: str) -> tuple[FloatArray, int]:
    """The request as mono float32 and its sample rate, as the driver speaks it."""
    return speak(written, request.voice, request.speed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/turn_set"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for number, (request, written) in enumerate(load_set(), 1):
        samples, rate = render(request, written)
        with wave.open(str(args.out / f"{number:02d}.wav"), "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(rate)
            handle.writeframes(float_to_pcm16(samples))
        print(f"{number:02d}.wav  {len(samples) / rate:4.1f} s  {request.voice:<22} {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
