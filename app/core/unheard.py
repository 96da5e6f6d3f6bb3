"""The user's speech a lost connection may have taken with it, kept to be said again.

A server that dies or a connection that drops takes with it whatever audio it had not yet made into
a conversation item it kept: the words of a user who was talking at that moment, or who spoke while
the app was reconnecting, would be gone, and the user would wait for an answer that never comes.
The app keeps the microphone audio the server has not confirmed and, after a reconnect, sends it to
the new session ahead of the live microphone, so the server's turn detection hears the request.

The server confirms audio in two steps: ``input_audio_buffer.committed`` makes what it heard so far
an item (:meth:`UnheardSpeech.committed`), which is safe once its transcript arrives or its answer is
done (:meth:`UnheardSpeech.confirmed`). Until then the committed audio is kept too, since the item
dies with the session. Only audio in which the local detector heard the user is worth resending;
silence alone is dropped. Pure code: frames in, frames out, a bound on how much is kept.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

BYTES_PER_SECOND = 24000 * 2  # 24 kHz PCM16 mono, what goes to the server


@dataclass(frozen=True)
class _Frame:
    pcm16: bytes
    speech: bool


class UnheardSpeech:
    """Microphone audio since the last audio the server confirmed, newest ``limit_s`` seconds."""

    def __init__(self, limit_s: float = 15.0) -> None:
        self._limit = int(limit_s * BYTES_PER_SECOND)
        self._committed: deque[_Frame] = deque()
        self._pending: deque[_Frame] = deque()
        self._bytes = 0

    def add(self, pcm16: bytes, speech: bool) -> None:
        """Audio as the server should hear it (silence where it heard silence), and whether the user spoke."""
        self._pending.append(_Frame(pcm16, speech))
        self._bytes += len(pcm16)
        while self._bytes > self._limit:
            oldest = self._committed if self._committed else self._pending
            self._bytes -= len(oldest.popleft().pcm16)

    def committed(self) -> None:
        """The server made everything so far into an item; it is kept until :meth:`confirmed`."""
        self._committed.extend(self._pending)
        self._pending.clear()

    def confirmed(self) -> None:
        """The committed item's transcript came, or its answer is done: the server has the request."""
        self._bytes -= sum(len(f.pcm16) for f in self._committed)
        self._committed.clear()

    @property
    def holds_speech(self) -> bool:
        return any(f.speech for f in self._committed) or any(f.speech for f in self._pending)

    def take(self) -> list[bytes]:
        """The audio to say again, oldest first, when it holds the user's speech; empties the store."""
        frames = [f.pcm16 for f in self._committed] + [f.pcm16 for f in self._pending]
        speech = self.holds_speech
        self._committed.clear()
        self._pending.clear()
        self._bytes = 0
        return frames if speech else []

    def seconds(self) -> float:
        return self._bytes / BYTES_PER_SECOND
