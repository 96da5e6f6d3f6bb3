"""What the embedded server needs from its models, as interfaces, and the loader of the real ones.

The server speaks the protocol; these do the listening, the thinking and the talking. Keeping them
behind small interfaces lets the protocol be tested with light stand-ins, while the suite also runs
the real models end to end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt


class Utterance(Protocol):
    """Speech recognition of one user turn, fed while the user speaks."""

    def add(self, pcm24k: bytes) -> None: ...
    def partial(self, *, whole: bool = False, again: bool = False) -> str:
        """The words so far. ``whole``: of all the audio so far, for judging a pause (a recent
        decode is reused only when no sound came after it); ``again``: decoded anew even so (the
        pause has grown, and the recogniser hears a sentence's end better with silence after it)."""
        ...

    def finish(self) -> str: ...
    def audio_16k(self) -> npt.NDArray[np.float32]:
        """The turn's audio so far, at 16 kHz (for the end-of-turn model)."""
        ...


class Recognizer(Protocol):
    def utterance(self, context: str = "") -> Utterance:
        """A new turn; ``context`` is the assistant's last words as the user heard them."""
        ...


@dataclass(frozen=True)
class ToolRequest:
    call_id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class BrainReply:
    text: str
    tool_call: ToolRequest | None = None


class Brain(Protocol):
    """One session's dialog: what to say to the user's words and to tool results."""

    def reply(self, user_text: str) -> BrainReply: ...
    def preview(self, user_text: str) -> BrainReply:
        """What :meth:`reply` would say now, without moving the dialog on (for speculation)."""
        ...

    def tool_result(self, call_id: str, output: dict[str, Any]) -> BrainReply: ...


@dataclass(frozen=True)
class SpokenChunk:
    pcm16: bytes = field(repr=False)  # 24 kHz mono
    clause_text: str
    first_of_clause: bool


class Speech(Protocol):
    """A reply being spoken: chunks as they are synthesised, clause by clause."""

    def __aiter__(self) -> AsyncIterator[SpokenChunk]: ...
    def start(self) -> None:
        """Begin synthesising now, before anyone iterates (needs a running loop)."""
        ...

    def cancel(self) -> None: ...


@dataclass
class Components:
    recognizer: Recognizer
    new_brain: Callable[[frozenset[str]], Brain]  # argument: the names of the tools the client offers
    speak: Callable[[str], Speech]
    description: str = ""
    # How likely a turn is complete, from its 16 kHz audio (0 to 1); None: semantic_vad is a
    # silence window. Blocks for a model run: called in a worker thread.
    turn_end: Callable[[npt.NDArray[np.float32]], float] | None = None
