"""A scripted realtime server on 127.0.0.1 for end-to-end tests of the client.

It speaks GA events: an energy-based server VAD on the audio the client appends, a canned user
transcript, and a canned spoken answer streamed faster than real time. It honours response.cancel,
conversation.item.truncate, response.create and typed user text, interrupts its own answer when the
user speaks (interrupt_response), and records every client event it receives. With ``close_after_s``
it ends every session at that age, as a service's cap on a session's length does (OpenAI's 60 minutes,
Azure's 30): a normal close with a reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve

from tests import server_events as s

FRAME_MS = 20
SPEECH_RMS = 0.01
START_FRAMES = 3
STOP_FRAMES = 25  # 500 ms of silence ends the user's turn


class ServerThread:
    """A WebSocket server on its own event loop in a daemon thread, for the app to connect to."""

    def __init__(self, make: Callable[[], Awaitable[Server]]) -> None:
        self._make = make
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, what: str) -> int:
        """Starts the server; returns its port."""
        ready = threading.Event()
        port = 0

        def main() -> None:
            nonlocal port
            loop = asyncio.new_event_loop()
            self.loop = loop

            async def run() -> None:
                nonlocal port
                self._server = await self._make()
                port = self._server.sockets[0].getsockname()[1]
                ready.set()
                await self._server.wait_closed()

            loop.run_until_complete(run())
            loop.close()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError(f"{what} did not start")
        return port

    def stop(self) -> None:
        if self.loop is not None and self._server is not None:
            self.loop.call_soon_threadsafe(self._server.close)
        if self._thread is not None:
            self._thread.join(5)


@dataclass
class Answer:
    text: str
    audio: bytes  # 24 kHz PCM16


@dataclass
class _Session:
    ws: ServerConnection
    pending: bytes = b""
    in_speech: bool = False
    loud: int = 0
    quiet: int = 0
    user_turns: int = 0
    responding: asyncio.Task[None] | None = None
    response_id: str | None = None


@dataclass
class ScriptedPeer:
    answers: list[Answer]
    user_lines: list[str] = field(default_factory=lambda: ["(the user's request)"])
    realtime_factor: float = 3.0  # how much faster than real time the answer audio is sent
    answer_delay_s: float = 0.05
    received: list[dict[str, Any]] = field(default_factory=list)
    # Tool calls (name, JSON arguments) the next response makes instead of speaking.
    tool_calls: list[tuple[str, str]] = field(default_factory=list)
    connections: int = 0
    connected_at: list[float] = field(default_factory=list)
    # Events sent right after session.created on every connection (a refusal, a server's error).
    after_connect: list[dict[str, Any]] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)  # how each connection ended
    # The next N user turns kill the connection the moment the speech ends (committed, never
    # transcribed or answered), as a server that dies mid-turn does.
    die_when_speech_ends: int = 0
    turns_heard: dict[int, int] = field(default_factory=dict)  # connection number -> user turns
    # Every session is closed by the peer this long after it opened (1001 and a reason), like a
    # service's cap on a session's length; None: sessions last as long as the client keeps them.
    close_after_s: float | None = None
    closed_at: list[float] = field(default_factory=list)  # when each connection ended
    closed_by_peer: list[bool] = field(default_factory=list)  # whether the cap ended it
    _running: ServerThread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _answer_index: int = 0
    _current: _Session | None = None
    url: str = ""

    def __enter__(self) -> ScriptedPeer:
        self._running = ServerThread(lambda: serve(self._handle, "127.0.0.1", 0, max_size=2**24))
        port = self._running.start("scripted peer")
        self._loop = self._running.loop
        self.url = f"ws://127.0.0.1:{port}/v1/realtime?model=scripted"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._running is not None:
            self._running.stop()

    def types(self) -> list[str]:
        return [e.get("type", "?") for e in list(self.received)]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in list(self.received) if e.get("type") == kind]

    def drop_connection(self) -> None:
        """Cut the TCP connection without a close frame, as a network failure would."""
        session, loop = self._current, self._loop
        if session is not None and loop is not None:
            loop.call_soon_threadsafe(session.ws.transport.abort)

    # -- server side -------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        self.connected_at.append(time.monotonic())
        session = _Session(ws)
        self._current = session
        await self._send(session, s.session_created(f"sess_{self.connections}"))
        for event in self.after_connect:
            await self._send(session, event)
        capped = False

        async def cap() -> None:
            nonlocal capped
            assert self.close_after_s is not None
            await asyncio.sleep(self.close_after_s)
            capped = True
            await ws.close(1001, f"Your session hit the maximum duration of {self.close_after_s:g} seconds.")

        capping = asyncio.get_running_loop().create_task(cap()) if self.close_after_s is not None else None
        with contextlib.suppress(Exception):
            async for message in ws:
                event = json.loads(message)
                if event.get("type") != "input_audio_buffer.append":
                    self.received.append(event)
                else:
                    # The audio is not kept, only how much came in the message.
                    audio_bytes = len(base64.b64decode(event.get("audio", "")))
                    self.received.append({"type": "input_audio_buffer.append", "audio_bytes": audio_bytes})
                await self._on_event(session, event)
        if session.responding is not None:
            session.responding.cancel()
        if capping is not None:
            capping.cancel()
        self.closed_at.append(time.monotonic())
        self.closed_by_peer.append(capped)
        self.close_codes.append(ws.close_code)  # 1006 when the client vanished without closing

    async def _send(self, session: _Session, event: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            await session.ws.send(json.dumps(event))

    async def _on_event(self, session: _Session, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "session.update":
            await self._send(
                session, {"type": "session.updated", "event_id": "ev_su", "session": event["session"]}
            )
        elif kind == "input_audio_buffer.append":
            await self._on_audio(session, base64.b64decode(event["audio"]))
        elif kind == "response.cancel":
            if session.responding is not None and not session.responding.done():
                await self._cancel(session)
            else:
                await self._send(
                    session, s.error("response_cancel_not_active", "There is no active response.")
                )
        elif kind == "conversation.item.truncate":
            await self._send(
                session,
                {
                    "type": "conversation.item.truncated",
                    "event_id": "ev_tr",
                    "item_id": event["item_id"],
                    "content_index": event["content_index"],
                    "audio_end_ms": event["audio_end_ms"],
                },
            )
        elif kind == "response.create":
            self._start_answer(session)

    async def _on_audio(self, session: _Session, pcm: bytes) -> None:
        session.pending += pcm
        frame_bytes = 24 * FRAME_MS * 2
        while len(session.pending) >= frame_bytes:
            frame, session.pending = session.pending[:frame_bytes], session.pending[frame_bytes:]
            samples = np.frombuffer(frame, "<i2").astype(np.float32) / 32768
            loud = float(np.sqrt(np.mean(samples**2))) > SPEECH_RMS
            if loud:
                session.loud += 1
                session.quiet = 0
            else:
                session.loud = 0
                session.quiet += 1
            item = f"item_user_{self.connections}_{session.user_turns}"
            if not session.in_speech and session.loud >= START_FRAMES:
                session.in_speech = True
                if session.responding is not None and not session.responding.done():
                    await self._cancel(session)  # interrupt_response
                await self._send(session, s.speech_started(item))
            elif session.in_speech and session.quiet >= STOP_FRAMES:
                session.in_speech = False
                session.user_turns += 1
                self.turns_heard[self.connections] = session.user_turns
                if self.die_when_speech_ends > 0:
                    self.die_when_speech_ends -= 1
                    await self._send(session, s.speech_stopped(item))
                    await self._send(session, s.committed(item))
                    session.ws.transport.abort()
                    return
                line = self.user_lines[(session.user_turns - 1) % len(self.user_lines)]
                for event in (s.speech_stopped(item), s.committed(item), s.user_transcript(item, line)):
                    await self._send(session, event)
                self._start_answer(session)

    def _start_answer(self, session: _Session) -> None:
        if session.responding is not None and not session.responding.done():
            return
        if self.tool_calls:
            calls, self.tool_calls = self.tool_calls, []
            session.responding = asyncio.get_running_loop().create_task(self._call_tools(session, calls))
            return
        answer = self.answers[self._answer_index % len(self.answers)]
        self._answer_index += 1
        session.responding = asyncio.get_running_loop().create_task(self._stream(session, answer))

    async def _stream(self, session: _Session, answer: Answer) -> None:
        number = self._answer_index
        response_id, item_id = f"resp_{self.connections}_{number}", f"item_answer_{self.connections}_{number}"
        session.response_id = response_id
        await asyncio.sleep(self.answer_delay_s)
        await self._send(session, s.response_created(response_id))
        await self._send(session, s.item_added(response_id, item_id))
        chunk = 24 * 100 * 2  # 100 ms
        words = answer.text.split(" ")
        pieces = max(1, len(answer.audio) // chunk)
        for i in range(pieces):
            audio = answer.audio[i * chunk : (i + 1) * chunk if i < pieces - 1 else len(answer.audio)]
            part = " ".join(words[i * len(words) // pieces : (i + 1) * len(words) // pieces])
            if part:
                await self._send(session, s.transcript_delta(response_id, item_id, part + " "))
            await self._send(session, s.audio_delta(response_id, item_id, audio))
            await asyncio.sleep(0.1 / self.realtime_factor)
        for event in (
            s.audio_done(response_id, item_id),
            s.transcript_done(response_id, item_id, answer.text),
            s.response_done(response_id),
        ):
            await self._send(session, event)
        session.response_id = None

    async def _call_tools(self, session: _Session, calls: list[tuple[str, str]]) -> None:
        response_id = f"resp_{self.connections}_{len(self.received)}_tools"
        await asyncio.sleep(self.answer_delay_s)
        await self._send(session, s.response_created(response_id))
        for index, (name, arguments) in enumerate(calls):
            call_id = f"call_{len(self.received)}_{index}"
            await self._send(
                session, s.arguments_done(response_id, f"item_{call_id}", call_id, name, arguments)
            )
        await self._send(session, s.response_done(response_id))

    async def _cancel(self, session: _Session) -> None:
        task, response_id = session.responding, session.response_id
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session.responding = None
        if response_id is not None:
            session.response_id = None
            await self._send(session, s.response_done(response_id, "cancelled", "turn_detected"))


@contextlib.contextmanager
def running_peer(answers: list[Answer], **options: Any) -> Iterator[ScriptedPeer]:
    with ScriptedPeer(answers, **options) as peer:
        yield peer
