"""What the audio path heard in a microphone frame, as far as the conversation needs to know.

The echo stage (or, without echo cancellation, the capture callback) labels every frame for the
model, because the model's own turn detection cannot tell the assistant's echo from the user:

- ``clear``: no assistant audio can be in the frame; it goes to the model as it is.
- ``echo``: the assistant's voice (or its echo tail) may be in the frame and the local detector
  does not hear the user over it. The model gets silence instead: on laptop speakers a server's
  voice detector fires on the residue the echo canceller leaves (measured: 3 of 4 answers cut
  short at -18 dB echo), and turns made of echo get transcribed and answered.
- ``user``: the local detector hears the user (over the assistant, or not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Hearing = Literal["clear", "echo", "user"]

_RANK: dict[Hearing, int] = {"clear": 0, "echo": 1, "user": 2}


def louder(a: Hearing, b: Hearing) -> Hearing:
    """The label of a frame made of two parts: the user over echo over nothing."""
    return a if _RANK[a] >= _RANK[b] else b


@dataclass(frozen=True)
class MicFrame:
    pcm16: bytes  # 24 kHz mono little-endian PCM16
    captured_at: float  # monotonic time of the first sample
    hearing: Hearing = "clear"
