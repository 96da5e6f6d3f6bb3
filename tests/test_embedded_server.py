"""The embedded server's protocol over a real WebSocket, with light stand-ins for its models."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from app.audio.resample import FloatArray, float_to_pcm16
from app.localmodel.brain import HelpdeskBrain
from app.localmodel.models import _Brain
from app.localmodel.retrieval import ArticleRetriever
from app.localmodel.server import EmbeddedServer, new_token
from app.tools.kb import KeywordIndex, default_kb_dir, load_articles
from tests.fake_components import FakeRecognizer, fake_components

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
            event: dict[str, Any] = json.loads(raw)
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


async def test_a_browser_style_client_sends_its_token_as_a_subprotocol(server: EmbeddedServer) -> None:
    """Browsers cannot set headers on a WebSocket: OpenAI's browser clients offer these subprotocols."""
    offered = ["realtime", f"openai-insecure-api-key.{server.token}", "openai-beta.realtime-v1"]
    async with connect(server.url, subprotocols=[Subprotocol(p) for p in offered]) as ws:
        assert ws.subprotocol == "realtime"  # one of its own chosen, or a browser drops the connection
        assert json.loads(await ws.recv())["type"] == "session.created"
    wrong = [Subprotocol("realtime"), Subprotocol("openai-insecure-api-key.wrong")]
    with pytest.raises(InvalidStatus) as refused:
        async with connect(server.url, subprotocols=wrong):
            pass
    assert refused.value.response.status_code == 401
    async with connect(server.url, additional_headers={"Authorization": f"Bearer {server.token}"}) as ws:
        assert ws.subprotocol is None  # a client that offers none gets none


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
    # Speech began 500 ms into the stream, so soon that the session's first turn takes the audio from
    # its start: a new detector may find an onset late (see the tests of clipped first words below).
    assert started["audio_start_ms"] == 0
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


async def _offer_ticket_tool(client: Client) -> None:
    """The client offers the create_ticket tool, as the app does."""
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


async def test_tool_call_round_trip(client: Client) -> None:
    await _offer_ticket_tool(client)
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


async def test_the_real_brain_hands_off_through_request_human_and_speaks_its_message() -> None:
    articles, _ = load_articles(default_kb_dir())
    retriever = ArticleRetriever(articles, None, KeywordIndex(articles))  # keywords: no model to load
    components = fake_components()
    components.new_brain = lambda tools: _Brain(HelpdeskBrain(retriever, tools=tools))
    running = EmbeddedServer(components, new_token())
    await running.start()
    try:
        async with await _connect(running) as ws:
            client = Client(ws)
            await client.next("session.created")
            tools = [
                {"type": "function", "name": name, "parameters": {"type": "object"}}
                for name in ("create_ticket", "request_human")
            ]
            await client.send({"type": "session.update", "session": {"type": "realtime", "tools": tools}})
            await client.next("session.updated")
            await client.ask("let me talk to someone, the kitchen tv is broken")
            events = await client.until("response.done")
            call = next(e for e in events if e["type"] == "response.function_call_arguments.done")
            assert call["name"] == "request_human"
            assert json.loads(call["arguments"]) == {
                "reason": "Let me talk to someone, the kitchen tv is broken."
            }
            message = (
                "A person from IT will contact you about ticket HD-1042. If it cannot wait, call 555-0100."
            )
            output = {"ticket_id": "HD-1042", "handoff": "requested", "message": message}
            await client.send(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "function_call_output",
                        "call_id": call["call_id"],
                        "output": json.dumps(output),
                    },
                }
            )
            await client.send({"type": "response.create"})
            done = (await client.next("response.done"))["response"]
            # The fake voice says clauses and leaves out their full stops and commas.
            assert message.replace(".", "").replace(",", "") in done["output"][0]["content"][0]["transcript"]
    finally:
        await running.close()


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


@contextlib.asynccontextmanager
async def _counting_session() -> AsyncIterator[tuple[Client, CountingSpeech]]:
    """A session on a server whose voice counts the answers it starts to speak."""
    counting = CountingSpeech()
    running = EmbeddedServer(counting.components, new_token())
    await running.start()
    try:
        async with await _connect(running) as ws:
            c = Client(ws)
            await c.next("session.created")
            yield c, counting
    finally:
        await running.close()


async def test_a_pause_prepares_the_answer_and_the_end_of_turn_uses_it() -> None:
    async with _counting_session() as (c, counting):
        await c.append(silence(0.5))
        await c.append(speechlike(1.0))
        await c.append(silence(0.35))  # a pause: the server prepares its answer
        await asyncio.sleep(0.2)
        assert len(counting.made) == 1 and counting.made[0].started
        await c.append(silence(0.5))  # the turn really ends
        events = await c.until("response.done", timeout=10)
    assert len(counting.made) == 1, "the prepared answer was not used"
    assert not counting.made[0].cancelled
    assert events[-1]["response"]["status"] == "completed"


async def test_speech_after_a_pause_discards_the_prepared_answer() -> None:
    async with _counting_session() as (c, counting):
        await c.append(silence(0.5))
        await c.append(speechlike(0.8))
        await c.append(silence(0.35))
        await asyncio.sleep(0.2)
        await c.append(speechlike(0.8))  # the user goes on
        await c.append(silence(0.8))
        events = await c.until("response.done", timeout=10)
    assert counting.made[0].cancelled
    assert len(counting.made) == 2 and not counting.made[1].cancelled
    assert [e["type"] for e in events].count("response.created") == 1


# -- issue 13: item retrieve/delete, response metadata, usage, text-only answers, item lifecycle --


def _of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


async def _typed(client: Client, text: str, item_id: str | None = None) -> str:
    """A typed user message; returns its id as the server holds it."""
    item: dict[str, Any] = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": text}],
    }
    if item_id is not None:
        item["id"] = item_id
    await client.send({"type": "conversation.item.create", "item": item})
    return str((await client.next("conversation.item.done"))["item"]["id"])


async def test_retrieve_answers_with_the_item_as_the_server_holds_it(client: Client) -> None:
    await client.send(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {"input": {"turn_detection": None, "transcription": {"model": "local"}}},
            },
        }
    )
    await client.next("session.updated")
    typed = await _typed(client, "my printer jams", "item_typed_1")
    assert typed == "item_typed_1"
    await client.send({"type": "conversation.item.retrieve", "item_id": typed, "event_id": "ev_r1"})
    retrieved = (await client.next("conversation.item.retrieved"))["item"]
    assert retrieved["id"] == typed and retrieved["role"] == "user"
    assert retrieved["content"] == [{"type": "input_text", "text": "my printer jams"}]

    await client.send({"type": "response.create"})
    answer = (await client.next("response.done"))["response"]["output"][0]
    await client.send({"type": "conversation.item.retrieve", "item_id": answer["id"]})
    retrieved = (await client.next("conversation.item.retrieved"))["item"]
    assert retrieved == answer  # the assistant's item, its transcript included
    assert retrieved["content"][0]["transcript"].startswith("You said my printer jams")

    # A spoken item: retrieved once transcribed (what the Agents SDK does), with its transcript.
    await client.append(speechlike(0.6))
    await client.send({"type": "input_audio_buffer.commit"})
    spoken = (await client.next("input_audio_buffer.committed"))["item_id"]
    await client.next("conversation.item.input_audio_transcription.completed")
    await client.send({"type": "conversation.item.retrieve", "item_id": spoken})
    retrieved = (await client.next("conversation.item.retrieved"))["item"]
    assert retrieved["id"] == spoken
    assert retrieved["content"] == [{"type": "input_audio", "transcript": "I forgot my password"}]

    await client.send({"type": "conversation.item.retrieve", "item_id": "item_nope", "event_id": "ev_r2"})
    error = (await client.next("error"))["error"]
    assert error["code"] == "item_retrieve_invalid_item_id"
    assert error["param"] == "item_id" and error["event_id"] == "ev_r2"


async def test_delete_removes_the_item_from_what_answers_use(client: Client) -> None:
    first = await _typed(client, "hello there")
    await client.send({"type": "response.create"})
    await client.next("response.done")
    unheard = await _typed(client, "this one is withdrawn", "item_withdrawn")
    await client.send({"type": "conversation.item.delete", "item_id": unheard})
    assert (await client.next("conversation.item.deleted"))["item_id"] == unheard
    await client.send({"type": "conversation.item.retrieve", "item_id": unheard})
    assert (await client.next("error"))["error"]["code"] == "item_retrieve_invalid_item_id"
    await client.send({"type": "conversation.item.delete", "item_id": unheard})
    assert (await client.next("error"))["error"]["code"] == "item_delete_invalid_item_id"
    # The next answer does not answer the deleted message, nor again the one answered before.
    await client.send({"type": "response.create"})
    done = (await client.next("response.done"))["response"]
    assert done["output"][0]["content"][0]["transcript"].startswith("I'm here")  # nothing to answer
    # The new item follows the one before the deleted one.
    later = await _typed(client, "and now this")
    added = next(e for e in reversed(client.seen) if e["type"] == "conversation.item.added")
    assert added["item"]["id"] == later and added["previous_item_id"] == done["output"][0]["id"]
    await client.send({"type": "conversation.item.retrieve", "item_id": first})
    assert (await client.next("conversation.item.retrieved"))["item"]["id"] == first


async def test_a_deleted_tool_output_is_not_answered(client: Client) -> None:
    await client.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "function_call_output",
                "id": "item_out_1",
                "call_id": "c1",
                "output": '{"ticket_id": "HD-7"}',
            },
        }
    )
    await client.next("conversation.item.done")
    await client.send({"type": "conversation.item.delete", "item_id": "item_out_1"})
    await client.next("conversation.item.deleted")
    await client.send({"type": "response.create"})
    done = (await client.next("response.done"))["response"]
    assert "HD-7" not in done["output"][0]["content"][0]["transcript"]


@pytest.mark.parametrize(
    ("frame", "code", "param"),
    [
        (
            {"type": "conversation.item.retrieve", "item_id": "item_unknown"},
            "item_retrieve_invalid_item_id",
            "item_id",
        ),
        ({"type": "conversation.item.retrieve", "item_id": 7}, "invalid_type", "item_id"),
        ({"type": "conversation.item.retrieve"}, "missing_required_parameter", "item_id"),
        (
            {"type": "conversation.item.delete", "item_id": "item_unknown"},
            "item_delete_invalid_item_id",
            "item_id",
        ),
        ({"type": "conversation.item.delete", "item_id": ["a"]}, "invalid_type", "item_id"),
        ({"type": "conversation.item.delete", "item_id": "x" * 65}, "invalid_value", "item_id"),
        ({"type": "response.create", "response": {"metadata": "tag"}}, "invalid_type", "response.metadata"),
        (
            {"type": "response.create", "response": {"metadata": {f"k{i}": "v" for i in range(17)}}},
            "invalid_value",
            "response.metadata",
        ),
        (
            {"type": "response.create", "response": {"metadata": {"k": 1}}},
            "invalid_type",
            "response.metadata.k",
        ),
        (
            {"type": "response.create", "response": {"metadata": {"k": "v" * 513}}},
            "invalid_value",
            "response.metadata.k",
        ),
        ({"type": "response.create", "response": {"metadata": {"k" * 65: "v"}}}, "invalid_value", None),
        (
            {"type": "response.create", "response": {"output_modalities": ["video"]}},
            "invalid_value",
            "response.output_modalities[0]",
        ),
        (
            {"type": "response.create", "response": {"output_modalities": "text"}},
            "invalid_type",
            "response.output_modalities",
        ),
        (
            {"type": "session.update", "session": {"type": "realtime", "output_modalities": []}},
            "invalid_value",
            "session.output_modalities",
        ),
    ],
)
async def test_bad_retrieve_delete_metadata_and_modalities_get_errors_and_the_session_goes_on(
    client: Client, frame: dict[str, Any], code: str, param: str | None
) -> None:
    await client.send(frame)
    error = (await client.next("error"))["error"]
    assert error["code"] == code and error["message"]
    if param is not None:
        assert error["param"] == param
    else:
        assert error["param"].startswith("response.metadata.")
    # Nothing of the refused event applied: no response started, the session still audio.
    await client.ask("hello")
    events = await client.until("response.done")
    assert len(_of(events, "response.created")) == 1
    done = events[-1]["response"]
    assert (
        done["status"] == "completed" and done["metadata"] is None and done["output_modalities"] == ["audio"]
    )


async def test_response_metadata_is_echoed_on_created_and_done(client: Client) -> None:
    metadata = {"reply_id": "lk-42", "topic": "printer"}
    await _typed(client, "hello")
    await client.send({"type": "response.create", "response": {"metadata": metadata}})
    events = await client.until("response.done")
    assert _of(events, "response.created")[0]["response"]["metadata"] == metadata
    assert events[-1]["response"]["metadata"] == metadata
    await client.send({"type": "response.create"})
    assert (await client.next("response.done"))["response"]["metadata"] is None


async def test_usage_counts_text_and_audio_of_each_response(client: Client) -> None:
    await client.ask("hello there")  # 11 characters: 3 text tokens in
    done = (await client.next("response.done"))["response"]
    usage = done["usage"]
    transcript = done["output"][0]["content"][0]["transcript"]
    assert usage["input_token_details"] == {"text_tokens": 3, "audio_tokens": 0, "cached_tokens": 0}
    # Four clauses of 300 ms: 1.2 s at 20 tokens a second; the transcript at 4 characters a token.
    assert usage["output_token_details"] == {"text_tokens": -(-len(transcript) // 4), "audio_tokens": 24}
    assert usage["input_tokens"] == 3 and usage["output_tokens"] == 24 + -(-len(transcript) // 4)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert _of(client.seen, "response.created")[-1]["response"]["usage"] is None  # as OpenAI: only on done

    # A spoken turn counts its audio (10 tokens a second) instead of its words.
    await client.append(silence(0.5))
    await client.append(speechlike(1.2))
    await client.append(silence(0.8))
    spoken = (await client.next("response.done", timeout=10))["response"]["usage"]
    assert spoken["input_token_details"]["text_tokens"] == 0
    assert 12 <= spoken["input_token_details"]["audio_tokens"] <= 25, spoken


async def test_text_only_output_for_the_session_or_one_response(client: Client) -> None:
    await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
    events = await client.until("response.done")
    kinds = [e["type"] for e in events]
    assert not [k for k in kinds if k.startswith("response.output_audio")], kinds
    deltas = _of(events, "response.output_text.delta")
    text = _of(events, "response.output_text.done")[0]["text"]
    assert deltas and "".join(d["delta"] for d in deltas) == text == "I'm here. What can I help you with?"
    assert _of(events, "response.content_part.added")[0]["part"] == {"type": "text", "text": ""}
    assert _of(events, "response.content_part.done")[0]["part"] == {"type": "text", "text": text}
    done = events[-1]["response"]
    assert done["output_modalities"] == ["text"]
    assert done["output"][0]["content"] == [{"type": "output_text", "text": text}]
    assert done["usage"]["output_token_details"]["audio_tokens"] == 0
    assert _of(events, "response.created")[0]["response"]["output_modalities"] == ["text"]

    await client.send({"type": "response.create"})  # the session's default again: audio
    events = await client.until("response.done")
    assert _of(events, "response.output_audio.delta") and not _of(events, "response.output_text.delta")

    await client.send(
        {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}}
    )
    assert (await client.next("session.updated"))["session"]["output_modalities"] == ["text"]
    await client.append(silence(0.5))
    await client.append(speechlike(1.2))
    await client.append(silence(0.8))
    events = await client.until("response.done", timeout=10)  # a spoken turn, answered in text
    assert not [e for e in events if e["type"].startswith("response.output_audio")]
    assert _of(events, "response.output_text.done")[0]["text"].startswith("You said I forgot my password")


async def test_a_text_only_session_prepares_no_speech() -> None:
    async with _counting_session() as (c, counting):
        await c.send(
            {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}}
        )
        await c.next("session.updated")
        await c.append(silence(0.5))
        await c.append(speechlike(1.0))
        await c.append(silence(0.35))
        await asyncio.sleep(0.2)
        await c.append(silence(0.5))
        events = await c.until("response.done", timeout=10)
    assert counting.made == []
    assert events[-1]["response"]["output"][0]["content"][0]["type"] == "output_text"


async def test_assistant_items_get_conversation_item_added_and_done_in_order(client: Client) -> None:
    user = await _typed(client, "hello")
    await client.send({"type": "response.create"})
    events = await client.until("response.done")
    kinds = [e["type"] for e in events]
    item_id = events[-1]["response"]["output"][0]["id"]
    added = next(i for i, e in enumerate(events) if e["type"] == "conversation.item.added")
    done = next(i for i, e in enumerate(events) if e["type"] == "conversation.item.done")
    assert events[added]["item"] == {**events[kinds.index("response.output_item.added")]["item"]}
    assert events[added]["item"]["id"] == item_id and events[added]["item"]["status"] == "in_progress"
    assert events[added]["previous_item_id"] == user
    assert kinds.index("response.output_item.added") < added < kinds.index("response.content_part.added")
    assert kinds.index("response.output_item.done") < done < kinds.index("response.done")
    assert events[done]["item"] == events[-1]["response"]["output"][0]
    assert events[done]["previous_item_id"] == user

    # A cut answer is done as incomplete; a tool call is an item of its own.
    await client.ask("hello again")
    await client.next("response.output_audio.delta")
    await client.send({"type": "response.cancel"})
    events = await client.until("response.done")
    (cut,) = _of(events, "conversation.item.done")
    assert cut["item"]["status"] == "incomplete" and cut["item"] == events[-1]["response"]["output"][0]

    await _offer_ticket_tool(client)
    await client.ask("make a ticket please")
    events = await client.until("response.done")
    items = [e["item"] for e in _of(events, "conversation.item.done")]
    assert [i["type"] for i in items] == [
        "message",
        "message",
        "function_call",
    ]  # the question, the answer, the call
    assert items[2] == events[-1]["response"]["output"][1]
    assert [i["type"] for i in (e["item"] for e in _of(events, "conversation.item.added"))] == [
        "message",
        "message",
        "function_call",
    ]


async def test_the_openai_sdk_retrieves_deletes_and_gets_metadata_usage_and_text(
    server: EmbeddedServer,
) -> None:
    """Items 1-4 of issue 13 through the real ``openai`` SDK client, which parses with its own types."""
    from openai import AsyncOpenAI

    base_url = f"http://127.0.0.1:{server.port}/v1"
    async with AsyncOpenAI(api_key=server.token, base_url=base_url).realtime.connect(
        model="gpt-realtime"
    ) as rt:
        await rt.session.update(session={"type": "realtime", "output_modalities": ["audio"]})
        await rt.conversation.item.create(
            item={
                "id": "item_sdk_user",
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "my vpn is down"}],
            }
        )
        await rt.response.create(response={"metadata": {"turn": "1"}, "output_modalities": ["text"]})
        kinds: list[str] = []
        async for event in rt:
            kinds.append(event.type)
            if event.type == "response.done":
                response = event.response
                break
        assert "error" not in kinds
        assert "response.output_text.done" in kinds and not [k for k in kinds if "output_audio" in k]
        assert response.metadata == {"turn": "1"} and response.output_modalities == ["text"]
        assert response.usage is not None and response.usage.total_tokens
        assert response.usage.input_token_details is not None
        assert response.usage.input_token_details.text_tokens == 4  # "my vpn is down": 14 characters
        assert response.output is not None
        answer_id = response.output[0].id
        assert answer_id is not None
        assert kinds.count("conversation.item.added") == 2 and kinds.count("conversation.item.done") == 2

        await rt.conversation.item.retrieve(item_id=answer_id)
        retrieved = await rt.recv()
        assert retrieved.type == "conversation.item.retrieved" and retrieved.item.id == answer_id
        await rt.conversation.item.delete(item_id="item_sdk_user")
        deleted = await rt.recv()
        assert deleted.type == "conversation.item.deleted" and deleted.item_id == "item_sdk_user"
        await rt.conversation.item.retrieve(item_id="item_sdk_user")
        refused = await rt.recv()
        assert refused.type == "error" and refused.error.code == "item_retrieve_invalid_item_id"


# -- truncation while an answer streams; no clipped first words ----------------------------------


@pytest.fixture
async def slow_server() -> AsyncIterator[EmbeddedServer]:
    """Speech at one 100 ms chunk every 100 ms, as fast as it plays: a truncate lands mid-answer."""
    running = EmbeddedServer(fake_components(chunk_delay_s=0.1), new_token())
    await running.start()
    yield running
    await running.close()


@pytest.fixture
async def slow_client(slow_server: EmbeddedServer) -> AsyncIterator[Client]:
    async with await _connect(slow_server) as ws:
        c = Client(ws)
        await c.next("session.created")
        yield c


async def _audio_deltas(client: Client, count: int) -> str:
    """Waits for ``count`` audio deltas of the answer; returns its item id."""
    for _ in range(count):
        delta = await client.next("response.output_audio.delta")
    return str(delta["item_id"])


async def test_truncate_while_the_answer_streams_stops_it_and_keeps_only_the_heard_words(
    slow_client: Client,
) -> None:
    """What the OpenAI Agents SDK's ``session.interrupt()`` sends while the answer still plays."""
    client = slow_client
    await client.ask("hello there")  # "You said hello there. Let's fix that. Step one, restart the app."
    item_id = await _audio_deltas(client, 4)  # 400 ms sent: the first clause and the second begun
    await client.send(
        {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 150}
    )
    events = await client.until("response.done")
    kinds = [e["type"] for e in events]
    truncated = events[kinds.index("conversation.item.truncated")]
    assert truncated["item_id"] == item_id and truncated["audio_end_ms"] == 150
    after = events[kinds.index("conversation.item.truncated") :]
    assert not _of(after, "response.output_audio.delta"), "audio of the item went on after the truncate"
    done = events[-1]["response"]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "client_cancelled"
    sent = b"".join(base64.b64decode(e["delta"]) for e in _of(client.seen, "response.output_audio.delta"))
    assert len(sent) == 4 * 4800, "the answer went on past the truncate"
    # The server's copy holds what was heard: 150 of the 400 ms sent of "You said hello there Let's
    # fix that" (the words begun so far) is 37%, cut at a word boundary.
    (item_done,) = [e for e in _of(events, "conversation.item.done") if e["item"]["id"] == item_id]
    assert item_done["item"]["content"][0]["transcript"] == "You said..."
    await client.send({"type": "conversation.item.retrieve", "item_id": item_id})
    retrieved = (await client.next("conversation.item.retrieved"))["item"]
    assert retrieved["content"][0]["transcript"] == "You said..."
    # The conversation goes on, and a later answer is whole.
    await client.ask("thanks")
    assert (await client.next("response.done"))["response"]["status"] == "completed"


async def test_truncate_before_any_audio_was_sent_ends_the_answer_unheard(slow_client: Client) -> None:
    """An interrupt in the first moment of an answer truncates it at 0 ms, before its first audio."""
    client = slow_client
    await client.ask("hello there")
    item_id = (await client.next("response.output_item.added"))["item"]["id"]
    assert not _of(client.seen, "response.output_audio.delta"), "the first audio came before the truncate"
    await client.send(
        {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 0}
    )
    events = await client.until("response.done")
    kinds = [e["type"] for e in events]
    assert "error" not in kinds
    truncated = events[kinds.index("conversation.item.truncated")]
    assert (truncated["item_id"], truncated["audio_end_ms"]) == (item_id, 0)
    assert not _of(events[kinds.index("conversation.item.truncated") :], "response.output_audio.delta")
    assert events[-1]["response"]["status"] == "cancelled"
    await client.send({"type": "conversation.item.retrieve", "item_id": item_id})
    retrieved = (await client.next("conversation.item.retrieved"))["item"]
    assert retrieved["content"][0]["transcript"] == ""  # nothing of it was heard


@pytest.mark.parametrize("cancel_first", [True, False], ids=["cancel-then-truncate", "truncate-then-cancel"])
async def test_an_interrupt_with_cancel_and_truncate_ends_the_answer_once(
    slow_client: Client, cancel_first: bool
) -> None:
    """An interrupting client may send response.cancel and the truncate together, in either order."""
    client = slow_client
    await client.ask("hello there")
    item_id = await _audio_deltas(client, 4)
    cancel = {"type": "response.cancel"}
    truncate = {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": 150,
    }
    for event in (cancel, truncate) if cancel_first else (truncate, cancel):
        await client.send(event)
    events = await client.until("response.done")
    await client.send({"type": "conversation.item.retrieve", "item_id": item_id})
    events += await client.until("conversation.item.retrieved")
    assert len(_of(events, "conversation.item.truncated")) == 1
    assert len(_of(events, "response.done")) == 1
    assert events[-1]["item"]["content"][0]["transcript"] == "You said..."
    # Only a cancel that came after the response had already ended may be refused, as OpenAI does.
    assert all(e["error"]["code"] == "response_cancel_not_active" for e in _of(events, "error"))
    assert not _of(
        events[[e["type"] for e in events].index("conversation.item.truncated") :],
        "response.output_audio.delta",
    )


async def test_truncate_after_the_answer_cuts_the_transcript_too(client: Client) -> None:
    await client.ask("hello there")
    done = (await client.next("response.done"))["response"]
    item_id = done["output"][0]["id"]  # 1200 ms of audio
    await client.send(
        {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 600}
    )
    await client.next("conversation.item.truncated")
    await client.send({"type": "conversation.item.retrieve", "item_id": item_id})
    retrieved = (await client.next("conversation.item.retrieved"))["item"]
    full = done["output"][0]["content"][0]["transcript"]
    heard = retrieved["content"][0]["transcript"]
    assert heard.endswith("...") and full.startswith(heard[:-3]) and len(heard) < len(full)


async def test_truncate_past_the_audio_sent_so_far_is_an_error_and_the_answer_goes_on(
    slow_client: Client,
) -> None:
    client = slow_client
    await client.ask("hello there")
    item_id = await _audio_deltas(client, 2)  # 200 ms sent
    await client.send(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 1000,
            "event_id": "ev_t1",
        }
    )
    error = (await client.next("error"))["error"]
    assert error["code"] == "invalid_value" and error["param"] == "audio_end_ms"
    assert error["event_id"] == "ev_t1"
    done = (await client.next("response.done"))["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"][0]["transcript"].startswith("You said hello there")


def _recognizer(server: EmbeddedServer) -> Any:
    return server.components.recognizer


async def test_speech_right_at_the_start_of_the_session_is_heard_whole(server: EmbeddedServer) -> None:
    speech = sustained_then_speech()
    async with await _connect(server) as ws:
        c = Client(ws)
        await c.next("session.created")
        await c.append(speech)
        await c.append(silence(0.8))
        events = await c.until("input_audio_buffer.committed", timeout=10)
    started = _of(events, "input_audio_buffer.speech_started")[0]
    assert started["audio_start_ms"] == 0
    (utterance,) = _recognizer(server).utterances
    sent = float_to_pcm16(speech)
    assert bytes(utterance.audio[: len(sent)]) == sent, "the recognizer did not get the speech from its start"


async def test_speech_that_goes_on_after_a_manual_commit_is_the_next_turn_whole(
    server: EmbeddedServer,
) -> None:
    first, second = speechlike(0.8), sustained_then_speech()
    async with await _connect(server) as ws:
        c = Client(ws)
        await c.next("session.created")
        await c.append(silence(0.5))
        await c.append(first)
        await c.send({"type": "input_audio_buffer.commit"})
        await c.next("input_audio_buffer.committed")
        await c.append(second)  # the user goes on talking
        await c.append(silence(0.8))
        events = await c.until("input_audio_buffer.speech_stopped", timeout=10)
    started = _of(events, "input_audio_buffer.speech_started")[0]
    assert started["audio_start_ms"] == 1300  # right where the commit left off
    utterances = _recognizer(server).utterances
    assert len(utterances) == 2
    sent = float_to_pcm16(second)
    assert bytes(utterances[1].audio[: len(sent)]) == sent


async def test_speech_started_audio_start_ms_includes_the_prefix_padding(server: EmbeddedServer) -> None:
    async with await _connect(server) as ws:
        c = Client(ws)
        await c.next("session.created")
        await c.append(silence(2.5))  # the detector has long settled: an ordinary onset
        await c.append(speechlike(1.0))
        await c.append(silence(0.8))
        events = await c.until("input_audio_buffer.committed", timeout=10)
    started = _of(events, "input_audio_buffer.speech_started")[0]
    # Speech from 2500 ms, 300 ms of prefix padding before it (OpenAI: "includes the prefix_padding_ms").
    assert 2150 <= started["audio_start_ms"] <= 2300, started
    (utterance,) = _recognizer(server).utterances
    # The recognizer got the audio from audio_start_ms on: that much silence, then the speech.
    audio = np.frombuffer(bytes(utterance.audio), "<i2")
    lead = (2500 - started["audio_start_ms"]) * 24
    assert not audio[: lead - 240].any() and audio[lead + 240 : lead + 480].any()


def sustained_then_speech() -> FloatArray:
    """A steady voiced sound (a drawn-out "Heeey") and then syllables: no quiet gap at its start for a
    new detector to learn the noise floor from."""
    t = np.arange(int(24000 * 0.6)) / 24000
    carrier = np.zeros_like(t)
    for k, f in enumerate((140, 280, 420, 560, 700, 840), 1):
        carrier += np.sin(2 * np.pi * f * t) / k
    return np.concatenate([(0.15 * carrier).astype(np.float32), speechlike(0.8)])


async def test_a_cancel_of_an_answer_the_users_speech_cancelled_is_no_error(slow_client: Client) -> None:
    """LiveKit's agent sends response.cancel on speech_started, after the server's own cancel."""
    client = slow_client
    await client.ask("hello there")
    await _audio_deltas(client, 2)
    await client.append(speechlike(1.0))  # the user talks over the answer
    await client.next("input_audio_buffer.speech_started")
    await client.send({"type": "response.cancel"})
    events = await client.until("response.done")
    done = events[-1]["response"]
    assert (done["status"], done["status_details"]["reason"]) == ("cancelled", "turn_detected")
    await client.send({"type": "response.cancel"})  # later still: the same answer, the same silence
    await client.ask("thanks")
    events = await client.until("response.done")
    assert not _of(events, "error") and events[-1]["response"]["status"] == "completed"
    await client.send({"type": "response.cancel"})  # a new answer ended normally: refused again
    assert (await client.next("error"))["error"]["code"] == "response_cancel_not_active"


async def test_a_late_cancel_is_refused_in_openais_words(client: Client) -> None:
    """LiveKit's client cancels on speech_started, after the server's own turn_detected cancel; it drops
    the refusal only by OpenAI's message ("Cancellation failed: ..."), so the server words it the same."""
    await client.ask("hello")
    assert (await client.next("response.done"))["response"]["status"] == "completed"
    await client.send({"type": "response.cancel", "event_id": "cancel_late"})
    error = (await client.next("error"))["error"]
    assert error["code"] == "response_cancel_not_active" and error["event_id"] == "cancel_late"
    assert error["message"].startswith("Cancellation failed")
    await client.ask("thanks")  # and the session goes on
    assert (await client.next("response.done"))["response"]["status"] == "completed"


async def test_each_spoken_turn_is_recognised_with_the_assistants_last_words_as_heard() -> None:
    components = fake_components()
    running = EmbeddedServer(components, new_token())
    await running.start()
    try:
        async with connect(
            running.url, additional_headers={"Authorization": f"Bearer {running.token}"}
        ) as ws:
            client = Client(ws)
            await client.next("session.created")
            await client.append(silence(0.5))
            await client.append(speechlike(1.0))
            await client.append(silence(0.8))
            answer = (await client.next("response.done", timeout=10))["response"]["output"][0]
            # The user heard half of the answer's 1200 ms.
            await client.send(
                {
                    "type": "conversation.item.truncate",
                    "item_id": answer["id"],
                    "content_index": 0,
                    "audio_end_ms": 600,
                }
            )
            await client.next("conversation.item.truncated")
            await client.append(speechlike(1.0))
            await client.append(silence(0.8))
            await client.next("response.done", timeout=10)
    finally:
        await running.close()
    recognizer = components.recognizer
    assert isinstance(recognizer, FakeRecognizer)
    first, second = recognizer.utterances[:2]
    assert first.context == ""  # nothing was said before the first turn
    full = answer["content"][0]["transcript"]
    assert second.context and full.startswith(second.context.removesuffix("...").rstrip())
    assert len(second.context) < len(full)  # only the words the user heard
