"""The embedded server's protocol over a real WebSocket, with light stand-ins for its models."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from app.audio.resample import FloatArray, float_to_pcm16
from app.localmodel.server import EmbeddedServer, new_token
from tests.fake_components import fake_components

openai_types = pytest.importorskip("openai.types.realtime")
from pydantic import TypeAdapter  # noqa: E402

SERVER_EVENT = TypeAdapter(openai_types.RealtimeServerEvent)


class Client:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any] | str) -> None:
        await self.ws.send(event if isinstance(event, str) else json.dumps(event))

    async def next(self, kind: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.monotonic()))
            event = json.loads(raw)
            SERVER_EVENT.validate_python(event)  # every event the server sends is a valid GA event
            self.seen.append(event)
            if kind is None or event["type"] == kind:
                return event

    async def until(self, kind: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """All events up to and including the first of ``kind``."""
        start = len(self.seen)
        await self.next(kind, timeout)
        return self.seen[start:]

    async def ask(self, text: str) -> None:
        """A typed user message and a request for the answer."""
        await self.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": text}],
                },
            }
        )
        await self.send({"type": "response.create"})

    async def append(self, samples: FloatArray, chunk_ms: int = 20) -> None:
        pcm = float_to_pcm16(samples)
        step = 24 * chunk_ms * 2
        for i in range(0, len(pcm), step):
            await self.send(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm[i : i + step]).decode()}
            )


@pytest.fixture
async def server() -> AsyncIterator[EmbeddedServer]:
    running = EmbeddedServer(fake_components(), new_token())
    await running.start()
    yield running
    await running.close()


@pytest.fixture
async def client(server: EmbeddedServer) -> AsyncIterator[Client]:
    async with connect(server.url, additional_headers={"Authorization": f"Bearer {server.token}"}) as ws:
        c = Client(ws)
        created = await c.next("session.created")
        assert created["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        yield c


def speechlike(seconds: float) -> FloatArray:
    """A voiced, syllable-modulated tone that a voice detector takes for speech."""
    t = np.arange(int(24000 * seconds)) / 24000
    carrier = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 420, 560, 700, 840), 1))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    return (0.15 * carrier * envelope).astype(np.float32)


def silence(seconds: float) -> FloatArray:
    return np.zeros(int(24000 * seconds), np.float32)


async def test_connections_without_the_right_token_are_refused(server: EmbeddedServer) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.url, additional_headers=headers):
                pass
        assert refused.value.response.status_code == 401


async def test_session_update_is_acknowledged_with_the_effective_session(client: Client) -> None:
    await client.send(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "instructions": "Be brief.",
                "audio": {
                    "input": {
                        "transcription": {"model": "whisper-1"},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 300},
                    },
                    "output": {"voice": "marin"},
                },
                "tools": [{"type": "function", "name": "create_ticket", "parameters": {"type": "object"}}],
            },
        }
    )
    updated = (await client.next("session.updated"))["session"]
    assert updated["instructions"] == "Be brief."
    assert updated["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 300
    assert updated["audio"]["output"]["voice"] == "marin"
    assert [t["name"] for t in updated["tools"]] == ["create_ticket"]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        ('["a list"]', "invalid_event"),
        ({"type": "response.teleport"}, "unsupported_event"),
        ({"type": "input_audio_buffer.append", "audio": "%%% not base64 %%%"}, "invalid_audio"),
        (
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x00\x01\x02").decode()},
            "invalid_audio_length",
        ),
        ({"type": "input_audio_buffer.commit"}, "input_audio_buffer_commit_empty"),
        ({"type": "response.cancel"}, "response_cancel_not_active"),
        (
            {"type": "conversation.item.truncate", "item_id": "nope", "content_index": 0, "audio_end_ms": 5},
            "item_truncate_invalid_item_id",
        ),
        (
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}},
            },
            "unsupported_format",
        ),
    ],
)
async def test_bad_input_gets_an_error_and_the_session_continues(
    client: Client, frame: Any, code: str
) -> None:
    await client.send(frame)
    error = await client.next("error")
    assert error["error"]["code"] == code and error["error"]["message"]
    await client.send(
        {"type": "session.update", "session": {"type": "realtime", "instructions": "still here"}}
    )
    assert (await client.next("session.updated"))["session"]["instructions"] == "still here"


async def test_spoken_turn_with_server_vad_gets_a_streamed_spoken_answer(client: Client) -> None:
    await client.send(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"transcription": {"model": "local"}}}},
        }
    )
    await client.next("session.updated")
    await client.append(silence(0.5))
    await client.append(speechlike(1.2))
    await client.append(silence(0.8))
    events = await client.until("response.done", timeout=10)
    kinds = [e["type"] for e in events]
    for expected in (
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ):
        assert expected in kinds, f"{expected} missing from {kinds}"
    assert kinds.index("input_audio_buffer.speech_stopped") < kinds.index("response.created")
    started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    assert 400 <= started["audio_start_ms"] <= 650  # speech began 500 ms into the stream
    assert 1600 <= stopped["audio_end_ms"] <= 1900  # and ended at 1700 ms
    transcript = next(
        e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"
    )
    assert transcript["transcript"] == "I forgot my password"
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"][0]["transcript"].startswith("You said I forgot my password")
    audio = b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )
    assert len(audio) == 4 * 3 * 4800  # four clauses of three 100 ms chunks


async def test_cancel_stops_the_answer_at_once(client: Client) -> None:
    await client.ask("hello there")
    await client.next("response.output_audio.delta")
    sent = time.monotonic()
    await client.send({"type": "response.cancel"})
    events = await client.until("response.done")
    took = time.monotonic() - sent
    assert events[-1]["response"]["status"] == "cancelled"
    assert events[-1]["response"]["status_details"]["reason"] == "client_cancelled"
    assert took < 0.2, f"cancel took {took * 1000:.0f} ms"
    # Nothing more of that response after its response.done.
    await client.send({"type": "session.update", "session": {"type": "realtime"}})
    later = await client.until("session.updated")
    assert not [e for e in later if e["type"].startswith("response.output_audio")]


async def test_truncate_checks_the_item_and_its_length(client: Client) -> None:
    await client.ask("hi")
    done = (await client.next("response.done"))["response"]
    item_id = done["output"][0]["id"]
    await client.send(
        {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 250}
    )
    truncated = await client.next("conversation.item.truncated")
    assert truncated["audio_end_ms"] == 250
    await client.send(
        {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 99999}
    )
    assert (await client.next("error"))["error"]["param"] == "audio_end_ms"


async def test_tool_call_round_trip(client: Client) -> None:
    await client.send(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "tools": [{"type": "function", "name": "create_ticket", "parameters": {"type": "object"}}],
            },
        }
    )
    await client.next("session.updated")
    await client.ask("make a ticket please")
    events = await client.until("response.done")
    call = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert (
        call["name"] == "create_ticket" and json.loads(call["arguments"])["summary"] == "make a ticket please"
    )
    await client.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "function_call_output",
                "call_id": call["call_id"],
                "output": '{"ticket_id": "HD-1042"}',
            },
        }
    )
    await client.send({"type": "response.create"})
    done = (await client.next("response.done"))["response"]
    assert "HD-1042" in done["output"][0]["content"][0]["transcript"]


async def test_user_speech_interrupts_the_answer(client: Client) -> None:
    await client.ask("hello")
    await client.next("response.output_audio.delta")
    await client.append(silence(0.4))
    await client.append(speechlike(0.5))
    events = await client.until("response.done")
    assert "input_audio_buffer.speech_started" in [e["type"] for e in events]
    assert events[-1]["response"]["status_details"]["reason"] == "turn_detected"


async def test_manual_commit_then_response_answers_the_transcript(client: Client) -> None:
    await client.send(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
        }
    )
    updated = await client.next("session.updated")
    assert updated["session"]["audio"]["input"]["turn_detection"] is None
    await client.append(speechlike(1.0))
    await client.send({"type": "input_audio_buffer.commit"})
    await client.send({"type": "response.create"})
    events = await client.until("response.done")
    assert "input_audio_buffer.speech_started" not in [e["type"] for e in events]
    assert events[-1]["response"]["output"][0]["content"][0]["transcript"].startswith("You said I forgot")


async def test_two_clients_have_separate_sessions(server: EmbeddedServer, client: Client) -> None:
    headers = {"Authorization": f"Bearer {server.token}"}
    async with connect(server.url, additional_headers=headers) as other_ws:
        other = Client(other_ws)
        first = await other.next("session.created")
        assert first["session"]["id"] != client.seen[0]["session"]["id"]


def test_the_oracle_rejects_an_incomplete_event() -> None:
    # The events above were validated as they arrived; this only guards the oracle itself.
    with pytest.raises(Exception):  # noqa: B017 - any validation error will do
        SERVER_EVENT.validate_python({"type": "response.done", "event_id": "e"})


class CountingSpeech:
    """Wraps fake_components' speak() to see which speech objects the server made and used."""

    def __init__(self) -> None:
        self.components = fake_components()
        self.made: list[Any] = []
        inner = self.components.speak

        def speak(text: str) -> Any:
            self.made.append(inner(text))
            return self.made[-1]

        self.components.speak = speak


async def _connect(server: EmbeddedServer) -> Any:
    return connect(server.url, additional_headers={"Authorization": f"Bearer {server.token}"})


async def test_a_pause_prepares_the_answer_and_the_end_of_turn_uses_it() -> None:
    counting = CountingSpeech()
    running = EmbeddedServer(counting.components, new_token())
    await running.start()
    try:
        async with await _connect(running) as ws:
            c = Client(ws)
            await c.next("session.created")
            await c.append(silence(0.5))
            await c.append(speechlike(1.0))
            await c.append(silence(0.35))  # a pause: the server prepares its answer
            await asyncio.sleep(0.2)
            assert len(counting.made) == 1 and counting.made[0].started
            await c.append(silence(0.5))  # the turn really ends
            events = await c.until("response.done", timeout=10)
    finally:
        await running.close()
    assert len(counting.made) == 1, "the prepared answer was not used"
    assert not counting.made[0].cancelled
    assert events[-1]["response"]["status"] == "completed"


async def test_speech_after_a_pause_discards_the_prepared_answer() -> None:
    counting = CountingSpeech()
    running = EmbeddedServer(counting.components, new_token())
    await running.start()
    try:
        async with await _connect(running) as ws:
            c = Client(ws)
            await c.next("session.created")
            await c.append(silence(0.5))
            await c.append(speechlike(0.8))
            await c.append(silence(0.35))
            await asyncio.sleep(0.2)
            await c.append(speechlike(0.8))  # the user goes on
            await c.append(silence(0.8))
            events = await c.until("response.done", timeout=10)
    finally:
        await running.close()
    assert counting.made[0].cancelled
    assert len(counting.made) == 2 and not counting.made[1].cancelled
    assert [e["type"] for e in events].count("response.created") == 1
