"""The embedded server against bad, greedy and forgotten clients: bounds, limits and TLS.

A real server on loopback and real WebSocket clients (``websockets``, the ``openai`` SDK); light
stand-ins for the models (tests/fake_components.py), since every fault here is about the protocol
or the limits. The memory checks with the real models are in tests/faults/test_server_memory.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from app.localmodel import session as protocol
from app.localmodel.components import Components
from app.localmodel.serve import tls_context
from app.localmodel.server import EmbeddedServer, ServerLimits, ServerSetupError, new_token
from tests.fake_components import fake_components
from tests.test_embedded_server import Client, silence, speechlike

ROOT = Path(__file__).resolve().parents[2]
SECOND = 24000 * 2  # bytes of 24 kHz PCM16


class Peer(Client):
    """A client that checks every event against the ``openai`` types, with a few round trips."""

    async def update(self, **session: Any) -> dict[str, Any]:
        await self.send({"type": "session.update", "session": {"type": "realtime", **session}})
        return (await self.next("session.updated"))["session"]  # type: ignore[no-any-return]

    async def answer(self, text: str) -> dict[str, Any]:
        await self.ask(text)
        return (await self.next("response.done"))["response"]  # type: ignore[no-any-return]

    async def still_works(self) -> None:
        """The session answers after the fault: its settings apply and it replies."""
        assert (await self.update(instructions="still here"))["instructions"] == "still here"
        assert (await self.answer("hello"))["status"] == "completed"


async def _start(components: Components | None = None, **limits: Any) -> EmbeddedServer:
    server = EmbeddedServer(
        components or fake_components(chunk_delay_s=0.0), new_token(), limits=ServerLimits(**limits)
    )
    await server.start()
    return server


def _headers(server: EmbeddedServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


@pytest.fixture
async def server() -> AsyncIterator[EmbeddedServer]:
    running = await _start()
    yield running
    await running.close()


@pytest.fixture
async def peer(server: EmbeddedServer) -> AsyncIterator[Peer]:
    async with connect(server.url, additional_headers=_headers(server), max_size=None) as ws:
        p = Peer(ws)
        await p.next("session.created")
        yield p


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def _update(**session: Any) -> dict[str, Any]:
    return {"type": "session.update", "session": {"type": "realtime", **session}}


def _detection(**fields: Any) -> dict[str, Any]:
    return _update(audio={"input": {"turn_detection": {"type": "server_vad", **fields}}})


MANY_TOOLS = [
    {"type": "function", "name": f"tool_{i}", "parameters": {"type": "object"}} for i in range(10_000)
]

# A frame, the error code it must get, and the param that error must name.
MALFORMED: list[tuple[str, Any, str, str | None]] = [
    ("session is a string", _update() | {"session": "realtime"}, "invalid_type", "session"),
    ("session missing", {"type": "session.update"}, "missing_required_parameter", "session"),
    ("audio is a string", _update(audio="loud"), "invalid_type", "session.audio"),
    ("audio.input is a list", _update(audio={"input": []}), "invalid_type", "session.audio.input"),
    (
        "turn_detection is a string",
        _update(audio={"input": {"turn_detection": "server_vad"}}),
        "invalid_type",
        "session.audio.input.turn_detection",
    ),
    (
        "transcription is a number",
        _update(audio={"input": {"transcription": 5}}),
        "invalid_type",
        "session.audio.input.transcription",
    ),
    (
        "format is a string",
        _update(audio={"input": {"format": "pcm16"}}),
        "invalid_type",
        "session.audio.input.format",
    ),
    (
        "voice is a number",
        _update(audio={"output": {"voice": 7}}),
        "invalid_type",
        "session.audio.output.voice",
    ),
    ("instructions is a list", _update(instructions=["be brief"]), "invalid_type", "session.instructions"),
    ("tools is a string", _update(tools="create_ticket"), "invalid_type", "session.tools"),
    ("a tool is a string", _update(tools=["create_ticket"]), "invalid_type", "session.tools[0]"),
    (
        "a tool name with spaces",
        _update(tools=[{"type": "function", "name": "make ticket"}]),
        "invalid_value",
        "session.tools[0].name",
    ),
    ("10,000 tools", _update(tools=MANY_TOOLS), "invalid_value", "session.tools"),
    (
        "instructions of 100,001 characters",
        _update(instructions="x" * 100_001),
        "invalid_value",
        "session.instructions",
    ),
    (
        "silence of 1e12 ms",
        _detection(silence_duration_ms=1e12),
        "invalid_value",
        "session.audio.input.turn_detection.silence_duration_ms",
    ),
    (
        "a number too big for a float",
        '{"type":"session.update","session":{"type":"realtime","audio":{"input":{"turn_detection":'
        '{"type":"server_vad","prefix_padding_ms":1e400}}}}}',
        "invalid_value",
        "session.audio.input.turn_detection.prefix_padding_ms",
    ),
    (
        "threshold 1.5",
        _detection(threshold=1.5),
        "invalid_value",
        "session.audio.input.turn_detection.threshold",
    ),
    (
        "negative padding",
        _detection(prefix_padding_ms=-1),
        "invalid_value",
        "session.audio.input.turn_detection.prefix_padding_ms",
    ),
    (
        "padding of 300.5 ms",
        _detection(prefix_padding_ms=300.5),
        "invalid_value",
        "session.audio.input.turn_detection.prefix_padding_ms",
    ),
    (
        "create_response 'yes'",
        _detection(create_response="yes"),
        "invalid_type",
        "session.audio.input.turn_detection.create_response",
    ),
    (
        "an unknown eagerness",
        _update(audio={"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "extreme"}}}),
        "invalid_value",
        "session.audio.input.turn_detection.eagerness",
    ),
    ("speed 100", _update(audio={"output": {"speed": 100}}), "invalid_value", "session.audio.output.speed"),
    ("max_output_tokens 0", _update(max_output_tokens=0), "invalid_value", "session.max_output_tokens"),
    (
        "Infinity",
        '{"type":"session.update","session":{"type":"realtime","audio":{"input":{"turn_detection":'
        '{"type":"server_vad","silence_duration_ms":Infinity}}}}}',
        "invalid_json",
        None,
    ),
    (
        "NaN",
        '{"type":"session.update","session":{"type":"realtime","audio":{"input":{"turn_detection":'
        '{"type":"server_vad","threshold":NaN}}}}}',
        "invalid_json",
        None,
    ),
    ("not JSON at all", "hello server", "invalid_json", None),
    ("an array instead of an event", "[1, 2]", "invalid_event", None),
    ("an unknown event type", {"type": "session.explode"}, "unsupported_event", "type"),
    ("JSON nested 100,000 deep", "[" * 100_000 + "]" * 100_000, "invalid_json", None),
    (
        "a tool schema nested 80 deep",
        _update(tools=[{"name": "deep", "parameters": _nested(80)}]),
        "invalid_json",
        None,
    ),
    ("item is a string", {"type": "conversation.item.create", "item": "hello"}, "invalid_type", "item"),
    (
        "message content is a string",
        {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": "hi"}},
        "invalid_type",
        "item.content",
    ),
    (
        "a message of 300,000 characters",
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "x" * 300_000}],
            },
        },
        "invalid_value",
        "item.content[0].text",
    ),
    ("audio is a number", {"type": "input_audio_buffer.append", "audio": 12}, "invalid_type", "audio"),
    (
        "truncate with a dict for item_id",
        {"type": "conversation.item.truncate", "item_id": {}, "content_index": 0, "audio_end_ms": 0},
        "invalid_type",
        "item_id",
    ),
]


@pytest.mark.fault("E5", "E6", "E7")
@pytest.mark.parametrize(
    ("frame", "code", "param"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
async def test_bad_input_gets_an_error_naming_the_field_and_the_session_carries_on(
    peer: Peer, frame: Any, code: str, param: str | None
) -> None:
    await peer.send(frame)
    error = (await peer.next("error"))["error"]
    assert error["type"] == "invalid_request_error"
    assert (error["code"], error["param"]) == (code, param), error
    assert 10 < len(error["message"]) < 300, error["message"]  # says what is wrong, without echoing the frame
    await peer.still_works()


@pytest.mark.fault("E6")
async def test_a_refused_update_changes_nothing(peer: Peer) -> None:
    await peer.send(
        _update(
            instructions="changed",
            audio={"input": {"turn_detection": {"type": "server_vad", "threshold": 9}}},
        )
    )
    assert (await peer.next("error"))["error"]["param"] == "session.audio.input.turn_detection.threshold"
    session = await peer.update()
    assert session["instructions"] == ""
    assert session["audio"]["input"]["turn_detection"]["threshold"] == 0.5


async def test_what_real_clients_send_is_accepted(peer: Peer) -> None:
    """Every field of a GA session.update as SDKs fill it in, at the edges of the bounds."""
    session = await peer.update(
        model="gpt-realtime",
        instructions="You are a helpdesk assistant.",
        output_modalities=["audio"],
        max_output_tokens="inf",
        tool_choice="auto",
        tracing=None,
        truncation="auto",
        audio={
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en", "prompt": "passwords"},
                "noise_reduction": {"type": "near_field"},
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 1.0,
                    "prefix_padding_ms": 2000,
                    "silence_duration_ms": 200,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": False,
                },
            },
            "output": {"format": {"type": "audio/pcm"}, "voice": {"id": "voice_1234"}, "speed": 1.5},
        },
        tools=[{"type": "function", "name": "create_ticket", "description": "x", "parameters": _nested(12)}],
    )
    assert session["audio"]["input"]["turn_detection"]["prefix_padding_ms"] == 2000
    assert session["audio"]["output"]["voice"] == "voice_1234"
    assert [t["name"] for t in session["tools"]] == ["create_ticket"]


@pytest.mark.fault("E1")
@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer ", "Bearer wrong", "Basic c2VjcmV0", "bearer {token}x", "Bearer {short}"],
    ids=["none", "empty", "bearer-empty", "wrong", "basic", "one-extra-character", "a-prefix-of-it"],
)
async def test_a_client_without_the_token_is_refused_before_any_session(
    server: EmbeddedServer, authorization: str | None
) -> None:
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization.format(token=server.token, short=server.token[:-1])
    with pytest.raises(InvalidStatus) as refused:
        async with connect(server.url, additional_headers=headers):
            pass
    assert refused.value.response.status_code == 401
    assert server.token.encode() not in refused.value.response.body
    async with connect(server.url, additional_headers=_headers(server)) as ws:  # the right one still works
        assert json.loads(await ws.recv())["type"] == "session.created"


@pytest.mark.fault("E5")
async def test_a_binary_frame_gets_an_error_and_the_session_carries_on(peer: Peer) -> None:
    await peer.ws.send(b"\x00\x01binary")
    assert (await peer.next("error"))["error"]["message"]
    await peer.still_works()


@pytest.mark.fault("E8")
async def test_a_frame_beyond_the_limit_closes_with_1009(server: EmbeddedServer) -> None:
    async with connect(server.url, additional_headers=_headers(server), max_size=None) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        audio = "A" * (4 * 2**20 + 16)
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    async with connect(server.url, additional_headers=_headers(server)) as ws:  # the server lives on
        assert json.loads(await ws.recv())["type"] == "session.created"


@pytest.mark.fault("E2")
async def test_non_ascii_bytes_in_the_authorization_header_get_401(
    server: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    for value in (b"Bearer \xc3\xa9\xff\xfe", b"Bearer " + server.token.encode() + b"\xe9", b"\xff\xfe"):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"GET /v1/realtime HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Authorization: " + value + b"\r\n\r\n"
        )
        status = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        assert status.split()[1] == b"401", (value, status)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


@pytest.mark.fault("E9")
async def test_sessions_beyond_the_limit_get_503_with_retry_after() -> None:
    server = await _start(max_sessions=3)
    try:
        async with connect(server.url, additional_headers=_headers(server)) as first:
            async with (
                connect(server.url, additional_headers=_headers(server)),
                connect(server.url, additional_headers=_headers(server)),
            ):
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(server.url, additional_headers=_headers(server)):
                        pass
                assert refused.value.response.status_code == 503
                assert refused.value.response.headers["Retry-After"] == "5"
                assert b"limit of 3 sessions" in refused.value.response.body
            # Two closed: there is room again.
            async with connect(server.url, additional_headers=_headers(server)) as again:
                assert '"session.created"' in str(await again.recv())
            assert '"session.created"' in str(await first.recv())
    finally:
        await server.close()


@pytest.mark.fault("E9")
async def test_a_burst_of_sessions_gets_the_limit_and_clear_refusals() -> None:
    server = await _start(max_sessions=4)

    async def attempt() -> int:
        try:
            async with connect(server.url, additional_headers=_headers(server)) as ws:
                await ws.recv()
                await asyncio.sleep(0.5)  # all of them at once
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    try:
        codes = await asyncio.gather(*(attempt() for _ in range(20)))
    finally:
        await server.close()
    assert sorted(codes) == [101] * 4 + [503] * 16


@pytest.mark.fault("E10")
async def test_an_idle_session_is_closed_with_1001_and_a_reason() -> None:
    server = await _start(idle_timeout_s=0.6)
    try:
        async with connect(server.url, additional_headers=_headers(server)) as ws:
            p = Peer(ws)
            await p.next("session.created")
            started = time.monotonic()
            for _ in range(8):  # a client that talks is not idle, however long it takes
                await p.append(silence(0.02))
                await asyncio.sleep(0.2)
            assert time.monotonic() - started > 1.5
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            assert "no client event for 0.6 s" in closed.value.rcvd.reason
        deadline = time.monotonic() + 2
        while server.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert not server.sessions
    finally:
        await server.close()


def _broken_recognizer() -> Components:
    components = fake_components(chunk_delay_s=0.0)

    class Broken:
        def utterance(self, context: str = "") -> Any:
            raise RuntimeError("the recognizer fell over")

    components.recognizer = Broken()
    return components


@pytest.mark.fault("E12")
async def test_a_fault_in_the_server_costs_one_event_not_the_session() -> None:
    server = await _start(_broken_recognizer())
    try:
        async with connect(server.url, additional_headers=_headers(server)) as ws:
            p = Peer(ws)
            await p.next("session.created")
            await p.update(audio={"input": {"turn_detection": None}})
            await p.append(speechlike(0.5), chunk_ms=500)
            await p.send({"type": "input_audio_buffer.commit"})
            error = (await p.next("error"))["error"]
            assert (error["type"], error["code"]) == ("server_error", "server_error")
            await p.still_works()
    finally:
        await server.close()


@pytest.mark.fault("E11")
async def test_a_long_call_keeps_working_with_the_oldest_items_forgotten(
    server: EmbeddedServer, peer: Peer
) -> None:
    extra = 200
    for i in range(protocol.MAX_ITEMS + extra):
        text = f"note {i}"
        await peer.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": text}],
                },
            }
        )
    last = await peer.until("conversation.item.done", timeout=30)
    while last[-1]["item"]["content"][0]["text"] != f"note {protocol.MAX_ITEMS + extra - 1}":
        last = await peer.until("conversation.item.done", timeout=30)
    (session,) = server.sessions
    assert session.item_count == protocol.MAX_ITEMS
    assert session.forgotten_items == extra
    # The conversation goes on: a typed turn, a truncate of its answer, a spoken turn.
    done = await peer.answer("my printer is offline")
    assert done["status"] == "completed"
    item_id = done["output"][0]["id"]
    await peer.send(
        {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 100}
    )
    assert (await peer.next("conversation.item.truncated"))["audio_end_ms"] == 100
    await peer.append(silence(0.5))
    await peer.append(speechlike(1.0))
    await peer.append(silence(0.8))
    assert (await peer.next("response.done", timeout=10))["response"]["status"] == "completed"
    assert session.item_count == protocol.MAX_ITEMS


@pytest.mark.fault("E11")
async def test_the_text_a_conversation_keeps_is_bounded(server: EmbeddedServer, peer: Peer) -> None:
    big = "y" * protocol.MAX_ITEM_CHARS
    count = protocol.MAX_CONVERSATION_CHARS // protocol.MAX_ITEM_CHARS + 4
    for i in range(count):
        await peer.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": f"call_{i}", "output": big},
            }
        )
        await peer.next("conversation.item.done")
    (session,) = server.sessions
    assert session.item_count < count
    assert session.kept_chars <= protocol.MAX_CONVERSATION_CHARS
    assert (await peer.answer("thanks"))["status"] == "completed"


@pytest.mark.fault("E11")
async def test_audio_a_session_holds_is_bounded(server: EmbeddedServer, peer: Peer) -> None:
    # Turn detection on: silence is not kept beyond what prefix padding needs.
    await peer.append(silence(30), chunk_ms=1000)
    await peer.update()  # a round trip: every append is handled
    (session,) = server.sessions
    assert session.held_audio_bytes <= 5.1 * SECOND  # 2 s buffer, 2 s window, one 1 s chunk
    # Turn detection off: the buffer keeps the newest MAX_TURN_S, and a commit takes only those.
    await peer.update(audio={"input": {"turn_detection": None}})
    await peer.append(speechlike(protocol.MAX_TURN_S + 10), chunk_ms=1000)
    await peer.update()
    assert session.held_audio_bytes <= (protocol.MAX_TURN_S + 3.1) * SECOND
    recognizer: Any = server.components.recognizer
    await peer.send({"type": "input_audio_buffer.commit"})
    await peer.next("conversation.item.done")
    await peer.update()
    assert len(recognizer.utterances[-1].audio) == protocol.MAX_TURN_S * SECOND


async def test_a_spoken_turn_is_ended_at_the_limit_and_speech_that_goes_on_starts_the_next(
    peer: Peer,
) -> None:
    await peer.append(silence(0.5), chunk_ms=500)
    await peer.append(speechlike(protocol.MAX_TURN_S + 3), chunk_ms=1000)
    await peer.send(_update())
    events = await peer.until("session.updated", timeout=30)
    kinds = [e["type"] for e in events]
    # The turn was cut (and answered) at the limit, and the speech after it opened a new turn.
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    assert abs(stopped["audio_end_ms"] - (500 + protocol.MAX_TURN_S * 1000)) < 1500, stopped
    assert "input_audio_buffer.speech_started" in kinds[kinds.index("input_audio_buffer.speech_stopped") :]


async def test_changing_turn_detection_mid_turn_ends_the_turn(server: EmbeddedServer, peer: Peer) -> None:
    await peer.append(silence(0.5))
    await peer.append(speechlike(1.0))
    await peer.send(_detection(silence_duration_ms=300))
    events = await peer.until("session.updated")
    kinds = [e["type"] for e in events]
    assert kinds.index("input_audio_buffer.speech_stopped") < kinds.index("session.updated")
    assert "input_audio_buffer.committed" in kinds
    await asyncio.sleep(0.1)
    (connection,) = server._connections
    assert not connection.partial_tasks, "the old turn's partial transcripts go on"


async def test_the_openai_sdk_async_and_sync_clients_work_within_the_limits(server: EmbeddedServer) -> None:
    from openai import AsyncOpenAI, OpenAI

    base_url = f"http://127.0.0.1:{server.port}/v1"
    session: Any = {
        "type": "realtime",
        "instructions": "You are a helpdesk assistant.",
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "gpt-4o-mini-transcribe"},
                "turn_detection": {"type": "semantic_vad", "eagerness": "medium"},
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
        },
        "tools": [{"type": "function", "name": "create_ticket", "parameters": {"type": "object"}}],
        "tool_choice": "auto",
    }
    item: Any = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "my vpn is down"}],
    }

    async with AsyncOpenAI(api_key=server.token, base_url=base_url).realtime.connect(
        model="gpt-realtime"
    ) as rt:
        await rt.session.update(session=session)
        await rt.conversation.item.create(item=item)
        await rt.response.create()
        seen = []
        async for event in rt:
            seen.append(event.type)
            if event.type == "response.done":
                assert event.response.status == "completed"
                break
        assert "error" not in seen and "session.updated" in seen

    def sync_client() -> list[str]:
        with OpenAI(api_key=server.token, base_url=base_url).realtime.connect(model="gpt-realtime") as conn:
            conn.session.update(session=session)
            conn.conversation.item.create(item=item)
            conn.response.create()
            kinds: list[str] = []
            for event in conn:
                kinds.append(event.type)
                if event.type == "response.done":
                    return kinds
        return kinds

    kinds = await asyncio.to_thread(sync_client)
    assert kinds[-1] == "response.done" and "error" not in kinds


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
            ),
            *("-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.fault("E4")
async def test_tls_serves_wss(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server = EmbeddedServer(fake_components(), new_token(), tls=tls_context(str(cert), str(key)))
    await server.start()
    try:
        assert server.url.startswith("wss://127.0.0.1:")
        trust = ssl.create_default_context(cafile=str(cert))
        async with connect(server.url, ssl=trust, additional_headers=_headers(server)) as ws:
            assert '"session.created"' in str(await ws.recv())
    finally:
        await server.close()


@pytest.mark.fault("E16")
async def test_the_browser_style_token_is_refused_beyond_loopback(certificate: tuple[Path, Path]) -> None:
    """A key in a subprotocol is visible to whatever sits in between: loopback only."""
    cert, key = certificate
    token = new_token()
    server = EmbeddedServer(fake_components(), token, host="0.0.0.0", tls=tls_context(str(cert), str(key)))
    await server.start()
    try:
        url = f"wss://127.0.0.1:{server.port}/v1/realtime"
        trust = ssl.create_default_context(cafile=str(cert))
        offered = [Subprotocol("realtime"), Subprotocol(f"openai-insecure-api-key.{token}")]
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, ssl=trust, subprotocols=offered):
                pass
        assert refused.value.response.status_code == 401
        async with connect(url, ssl=trust, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            assert '"session.created"' in str(await ws.recv())
    finally:
        await server.close()


@pytest.mark.fault("E3")
def test_plain_ws_beyond_loopback_is_refused() -> None:
    for host in ("0.0.0.0", "192.168.1.10", "::"):
        with pytest.raises(ServerSetupError, match="without TLS"):
            EmbeddedServer(fake_components(), new_token(), host=host)


# -- the `serve` command ----------------------------------------------------------------------

# `helpdesk-voice serve` itself, with the light models in place of the real ones.
FAKE_SERVE = (
    "import sys; import app.localmodel.serve as serve; from tests.fake_components import fake_components; "
    "serve.load_components = lambda progress: fake_components(); from app.cli import main; "
    "sys.exit(main(sys.argv[1:]))"
)


def _serve(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if k != "HELPDESK_VOICE_SERVER_TOKEN"}
    process = subprocess.Popen(
        [sys.executable, "-c", FAKE_SERVE, "serve", "--port", "0", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**environment, **(env or {})},
    )
    assert process.stdin is not None
    if stdin is not None:
        process.stdin.write(stdin)
        process.stdin.flush()
    return process


def _ready(process: subprocess.Popen[str]) -> dict[str, str]:
    assert process.stdout is not None
    lines: dict[str, str] = {}
    while True:
        line = process.stdout.readline()
        assert line, f"serve ended early: {lines}; {process.stderr.read() if process.stderr else ''}"
        if line.strip() == "ready":
            return lines
        name, _, value = line.strip().partition(": ")
        lines[name] = value


def _session_created(url: str, token: str) -> str:
    async def probe() -> str:
        async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            return str(await ws.recv())

    return asyncio.run(probe())


def _stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.fault("E14")
@pytest.mark.parametrize(
    ("how", "check"),
    [
        ("env", lambda lines: lines["token"] == "from HELPDESK_VOICE_SERVER_TOKEN"),
        ("stdin", lambda lines: lines["token"] == "from standard input"),
        ("none", lambda lines: len(lines["token"]) >= 24),
    ],
)
def test_serve_takes_its_token_from_the_environment_or_stdin_and_prints_one_it_made(
    how: str, check: Callable[[dict[str, str]], bool]
) -> None:
    given = "s3cret-token-for-the-test"
    if how == "env":
        process = _serve(env={"HELPDESK_VOICE_SERVER_TOKEN": given})
    elif how == "stdin":
        process = _serve("--token-stdin", stdin=given + "\n")
    else:
        process = _serve()
    try:
        lines = _ready(process)
        assert check(lines), lines
        assert given not in json.dumps(lines)  # a token given to it is not printed again
        token = lines["token"] if how == "none" else given
        assert '"session.created"' in _session_created(lines["url"], token)
        assert _stop(process) == 0
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.fault("E3", "E14")
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--token", "abc123"), ("HELPDESK_VOICE_SERVER_TOKEN", "--token-stdin", "ps")),
        (("--host", "0.0.0.0"), ("without TLS", "--tls", "loopback")),
        (("--host", "0.0.0.0", "--tls-cert", "cert.pem"), ("--tls-cert and --tls-key go together",)),
        (("--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"), ("cannot use",)),
    ],
)
def test_serve_refuses_an_unsafe_command_line_in_one_line_before_loading_models(
    args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result
    assert "loading" not in result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("helpdesk-voice: ")
    for word in words:
        assert word in line, line
    assert "abc123" not in line


def test_serve_with_tls_prints_a_wss_url(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    process = _serve("--tls-cert", str(cert), "--tls-key", str(key))
    try:
        lines = _ready(process)
        assert lines["url"].startswith("wss://127.0.0.1:")
        assert _stop(process) == 0
    finally:
        if process.poll() is None:
            process.kill()
