"""Light stand-ins for the embedded server's models, to test its protocol handling alone.

The real models run in tests/test_localmodel_e2e.py; these keep the protocol tests fast and exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from app.localmodel.components import BrainReply, Components, SpokenChunk, ToolRequest


class FakeUtterance:
    def __init__(self, text: str, context: str = "") -> None:
        self.text = text
        self.context = context  # what the server said the user heard last
        self.audio = bytearray()

    def add(self, pcm24k: bytes) -> None:
        self.audio += pcm24k

    def partial(self, *, whole: bool = False, again: bool = False) -> str:
        return self.finish()

    def finish(self) -> str:
        return self.text if len(self.audio) > 4800 else ""

    def audio_16k(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        samples = np.frombuffer(bytes(self.audio[: len(self.audio) // 2 * 2]), "<i2")
        picked = samples[(np.arange(len(samples) * 2 // 3) * 1.5).astype(int)]  # 24 -> 16 kHz, crudely
        result: np.ndarray[Any, np.dtype[np.float32]] = (picked / 32768.0).astype(np.float32)
        return result


class FakeRecognizer:
    def __init__(self, text: str = "I forgot my password") -> None:
        self.text = text
        self.utterances: list[FakeUtterance] = []

    def utterance(self, context: str = "") -> FakeUtterance:
        self.utterances.append(FakeUtterance(self.text, context))
        return self.utterances[-1]


class FakeBrain:
    def __init__(self, tool_names: frozenset[str]) -> None:
        self.can_create_tickets = "create_ticket" in tool_names
        self.heard: list[str] = []
        self.calls = 0

    def reply(self, user_text: str) -> BrainReply:
        self.heard.append(user_text)
        if "ticket" in user_text and self.can_create_tickets:
            self.calls += 1
            request = ToolRequest(f"call_{self.calls}", "create_ticket", {"summary": user_text})
            return BrainReply("Okay, I'll create a ticket.", request)
        return BrainReply(f"You said {user_text}. Let's fix that. Step one, restart the app.")

    def preview(self, user_text: str) -> BrainReply:
        heard, calls = list(self.heard), self.calls
        try:
            return self.reply(user_text)
        finally:
            self.heard, self.calls = heard, calls

    def tool_result(self, call_id: str, output: dict[str, Any]) -> BrainReply:
        return BrainReply(f"Done. Your ticket is {output.get('ticket_id', 'unknown')}.")


class FakeSpeech:
    """100 ms chunks of a tone per clause, a little slower than real synthesis would be."""

    def __init__(self, text: str, chunk_delay_s: float) -> None:
        self.clauses = [c.strip() for c in text.replace(",", ".").split(".") if c.strip()]
        self.delay = chunk_delay_s
        self.cancelled = False
        self.started = False

    async def _chunks(self) -> AsyncIterator[SpokenChunk]:
        t = np.arange(2400) / 24000
        pcm = (0.2 * 32767 * np.sin(2 * np.pi * 200 * t)).astype("<i2").tobytes()
        for clause in self.clauses:
            for i in range(3):
                if self.cancelled:
                    return
                await asyncio.sleep(self.delay)
                if self.cancelled:
                    return
                yield SpokenChunk(pcm, clause, i == 0)

    def __aiter__(self) -> AsyncIterator[SpokenChunk]:
        return self._chunks()

    def start(self) -> None:
        self.started = True

    def cancel(self) -> None:
        self.cancelled = True


def fake_components(
    text: str = "I forgot my password",
    chunk_delay_s: float = 0.02,
    turn_end: Callable[[np.ndarray[Any, np.dtype[np.float32]]], float] | None = None,
) -> Components:
    recognizer = FakeRecognizer(text)
    return Components(
        recognizer=recognizer,
        new_brain=FakeBrain,
        speak=lambda reply: FakeSpeech(reply, chunk_delay_s),
        description="fake",
        turn_end=turn_end,
    )
