"""What the engine's tests share: a listener that records, a slow tool, the scripted peer's answers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from app.core.actions import StateChanged
from app.tools.registry import Tool, ToolRegistry
from tests.scripted_peer import Answer, ScriptedPeer
from tests.server_events import pcm


class Recorder:
    """An EngineListener that keeps everything, with a way to wait for a condition."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._changed = threading.Condition()

    def _add(self, event: Any) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    on_state = on_transcript = on_tool = on_turn = on_notice = _add

    def of(self, cls: type[Any]) -> list[Any]:
        return [e for e in list(self.events) if isinstance(e, cls)]

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}; events: {self.events[-15:]}")
                self._changed.wait(min(left, 0.1))


def wait_ready(listener: Recorder) -> None:
    listener.wait_for(
        lambda: any(e.state.value == "listening" for e in listener.of(StateChanged)), 10, "ready"
    )


async def _slow_lookup(args: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(2.0)
    return {"message": f"Found the article about {args.get('topic', 'that')}"}


def slow_tool_registry() -> ToolRegistry:
    registry = ToolRegistry()
    registry.register(
        Tool(
            name="slow_lookup",
            description="A lookup that takes two seconds.",
            parameters={"type": "object", "properties": {"topic": {"type": "string"}}},
            handler=_slow_lookup,
        )
    )
    return registry


def answering_peer() -> ScriptedPeer:
    """A peer with two spoken answers (1.5 s and 0.8 s), sent twice as fast as real time."""
    answers = [Answer("Here is what I found about your VPN.", pcm(1500)), Answer("Anything else?", pcm(800))]
    return ScriptedPeer(answers, realtime_factor=2.0)
