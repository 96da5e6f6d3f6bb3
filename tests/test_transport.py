"""The realtime transport against scripted WebSocket peers on 127.0.0.1.

Every peer is a real server started by the test: a websockets server for well-behaved and
misbehaving peers, a raw asyncio TCP server where a peer must do what websockets never would (stop
answering pings, never finish the handshake).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import logging
import random
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from app.core.protocol import (
    ConversationItemCreate,
    ErrorEvent,
    InputAudioBufferClear,
    InputAudioBufferCleared,
    MalformedEvent,
    ResponseCreate,
    ResponseCreated,
    ServerEvent,
    Session,
    SessionUpdate,
    SessionUpdated,
    UnknownEvent,
)
from app.realtime import (
    USER_AGENT,
    BackoffPolicy,
    ConnectionProblem,
    Endpoint,
    RealtimeTransport,
    azure_endpoint,
    custom_endpoint,
    openai_endpoint,
)

KEY = "sk-test-SECRET-0123456789"
DATA = Path(__file__).parent / "data" / "server_events.jsonl"
FAST_BACKOFF = BackoffPolicy(initial=0.02, factor=2.0, maximum=0.2, jitter=0.2, rate_limit_minimum=0.3)
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def sample_event(event_type: str) -> str:
    for line in DATA.read_text("utf-8").splitlines():
        if line.strip() and json.loads(line)["type"] == event_type:
            return line
    raise LookupError(event_type)


async def wait_until(predicate: Callable[[], bool], timeout: float = 3.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


@dataclass
class Recorder:
    """A TransportHandler that records everything, in one ordered log, with optional hooks."""

    transport: RealtimeTransport | None = None
    log: list[tuple[str, Any]] = field(default_factory=list)
    events: list[ServerEvent] = field(default_factory=list)
    connects: list[tuple[bool, float]] = field(default_factory=list)
    problems: list[tuple[ConnectionProblem, float | None, float]] = field(default_factory=list)
    connected_hook: Callable[[bool], Awaitable[None]] | None = None
    event_hook: Callable[[ServerEvent], Awaitable[None]] | None = None

    async def on_connected(self, reconnected: bool) -> None:
        self.connects.append((reconnected, time.monotonic()))
        self.log.append(("connected", reconnected))
        if self.connected_hook is not None:
            await self.connected_hook(reconnected)

    async def on_event(self, event: ServerEvent) -> None:
        self.events.append(event)
        self.log.append(("event", type(event).__name__))
        if self.event_hook is not None:
            await self.event_hook(event)

    async def on_disconnected(self, problem: ConnectionProblem, retry_in: float | None) -> None:
        self.problems.append((problem, retry_in, time.monotonic()))
        self.log.append(("disconnected", problem.kind))


def make_transport(endpoint: Endpoint, handler: Recorder, **kwargs: Any) -> RealtimeTransport:
    options: dict[str, Any] = {
        "ping_interval": 5.0,
        "ping_timeout": 5.0,
        "open_timeout": 2.0,
        "close_timeout": 0.5,
        "backoff": FAST_BACKOFF,
        "rng": random.Random(1),
    }
    options.update(kwargs)
    transport = RealtimeTransport(endpoint, handler, **options)
    handler.transport = transport
    return transport


@contextlib.asynccontextmanager
async def running(
    transport: RealtimeTransport, stop_within_s: float = 3.0
) -> AsyncIterator[asyncio.Task[ConnectionProblem | None]]:
    """``transport.run()`` as a task, closed on leaving and awaited for at most ``stop_within_s``."""
    task = asyncio.create_task(transport.run())
    try:
        yield task
    finally:
        await transport.close()
        await asyncio.wait_for(task, stop_within_s)


@contextlib.asynccontextmanager
async def ws_server(
    handler: Callable[[ServerConnection], Awaitable[None]], **kwargs: Any
) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, **kwargs) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/realtime"


@dataclass
class ScriptedPeer:
    """Keeps what each connection received, one inbox per connection."""

    received: list[list[dict[str, Any]]] = field(default_factory=list)

    def inbox(self) -> list[dict[str, Any]]:
        inbox: list[dict[str, Any]] = []
        self.received.append(inbox)
        return inbox


async def read_into(ws: ServerConnection, inbox: list[dict[str, Any]]) -> None:
    async for message in ws:
        inbox.append(json.loads(message))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def free_url() -> str:
    # Nothing listens on a port that was just released, so connecting is refused.
    return f"ws://127.0.0.1:{free_port()}/v1/realtime"


@contextlib.asynccontextmanager
async def raw_server(mode: str) -> AsyncIterator[tuple[str, list[float]]]:
    """A hand-made WebSocket peer: 'silent' completes the handshake and then never reads or answers;
    'mute' accepts TCP and never answers the handshake."""
    accepted: list[float] = []
    tasks: set[asyncio.Task[Any]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        writers.append(writer)
        request = await reader.readuntil(b"\r\n\r\n")
        if mode == "silent":
            match = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", request)
            assert match is not None
            accept = base64.b64encode(hashlib.sha1(match.group(1) + WS_GUID).digest())
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            await writer.drain()
        accepted.append(time.monotonic())
        await asyncio.sleep(60)  # silent from here: no reads, so no pong and no closing handshake

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}/v1/realtime", accepted
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def http_error_peer(
    status: int, body: str = "", headers: dict[str, str] | None = None
) -> tuple[list[Request], Callable[[ServerConnection, Request], Response]]:
    seen: list[Request] = []

    def process_request(connection: ServerConnection, request: Request) -> Response:
        seen.append(request)
        response = connection.respond(HTTPStatus(status), body)
        for name, value in (headers or {}).items():
            response.headers[name] = value
        return response

    return seen, process_request


async def never_called(ws: ServerConnection) -> None:
    raise AssertionError("the handshake should have been refused")


# ---------------------------------------------------------------------------------------------------
# Handshake and events
# ---------------------------------------------------------------------------------------------------


async def test_server_receives_url_and_headers() -> None:
    seen: list[Request] = []

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    def process_request(connection: ServerConnection, request: Request) -> None:
        seen.append(request)

    async with ws_server(handler, process_request=process_request) as url:
        recorder = Recorder()
        transport = make_transport(openai_endpoint("gpt-realtime", KEY, base_url=url), recorder)
        async with running(transport):
            await wait_until(lambda: transport.connected, what="connection")
        # The Azure header form, against the same local peer.
        azure = replace(azure_endpoint("contoso", "my-realtime", KEY), url=url + "?model=my-realtime")
        recorder2 = Recorder()
        transport2 = make_transport(azure, recorder2)
        async with running(transport2):
            await wait_until(lambda: transport2.connected, what="azure connection")

    openai_request, azure_request = seen
    assert openai_request.path == "/v1/realtime?model=gpt-realtime"
    assert openai_request.headers["Authorization"] == f"Bearer {KEY}"
    assert "api-key" not in openai_request.headers
    user_agent = openai_request.headers["User-Agent"]
    assert user_agent == USER_AGENT
    assert user_agent.startswith("helpdesk-voice/")
    assert azure_request.headers["api-key"] == KEY
    assert "Authorization" not in azure_request.headers


async def test_custom_endpoint_without_key_sends_no_authorization() -> None:
    seen: list[Headers] = []

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    def process_request(connection: ServerConnection, request: Request) -> None:
        seen.append(request.headers)

    async with ws_server(handler, process_request=process_request) as url:
        transport = make_transport(custom_endpoint(url, None), Recorder())
        async with running(transport):
            await wait_until(lambda: transport.connected, what="connection")
    assert "Authorization" not in seen[0]


async def test_events_in_both_directions() -> None:
    inbox: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        first = json.loads(await ws.recv())
        inbox.append(first)
        await ws.send(sample_event("session.updated"))
        await ws.send(sample_event("response.created"))
        await read_into(ws, inbox)

    recorder = Recorder()

    async def configure(reconnected: bool) -> None:
        assert recorder.transport is not None
        assert await recorder.transport.send(SessionUpdate(Session(instructions="Be brief.")))

    recorder.connected_hook = configure
    async with ws_server(handler) as url:
        transport = make_transport(custom_endpoint(url, KEY), recorder)
        assert await transport.send(ResponseCreate()) is False  # not connected yet: refused, not raised
        async with running(transport):
            await wait_until(lambda: len(recorder.events) == 2, what="two events")
            assert transport.connected
            assert transport.connected_at is not None
            assert await transport.send(ResponseCreate(event_id="client_1"))
            await wait_until(lambda: len(inbox) == 2, what="response.create at the server")
        assert not transport.connected
        assert transport.connected_at is None
        assert await transport.send(ResponseCreate()) is False

    assert inbox[0]["type"] == "session.update"
    assert inbox[0]["session"]["instructions"] == "Be brief."
    assert inbox[1] == {"type": "response.create", "event_id": "client_1"}
    assert isinstance(recorder.events[0], SessionUpdated)
    assert isinstance(recorder.events[1], ResponseCreated)
    assert recorder.log[0] == ("connected", False)
    assert recorder.problems == []  # close() is not a problem


async def test_malformed_and_unknown_events_reach_handler_and_connection_stays_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="app.realtime")
    inbox: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        await ws.send("not json{")
        await ws.send('{"type":"brand.new.event","x":1}')
        await ws.send('{"type":"brand.new.event","x":2}')
        await ws.send("[1, 2]")
        await ws.send('{"type":"response.created","event_id":"e","response":{}}')  # no id: malformed
        await ws.send('{"type":"input_audio_buffer.cleared","event_id":"e1"}')
        await read_into(ws, inbox)

    recorder = Recorder()
    async with ws_server(handler) as url:
        transport = make_transport(custom_endpoint(url, None), recorder)
        async with running(transport):
            await wait_until(lambda: len(recorder.events) == 6, what="six events")
            assert transport.connected
            assert await transport.send(InputAudioBufferClear())
            await wait_until(lambda: len(inbox) == 1, what="the client event at the server")

    kinds = [type(event) for event in recorder.events]
    assert kinds == [
        MalformedEvent,
        UnknownEvent,
        UnknownEvent,
        MalformedEvent,
        MalformedEvent,
        InputAudioBufferCleared,
    ]
    unknown = recorder.events[1]
    assert isinstance(unknown, UnknownEvent)
    assert unknown.type == "brand.new.event"
    assert recorder.problems == []
    mentions = [r for r in caplog.records if r.name == "app.realtime" and "brand.new.event" in r.getMessage()]
    assert len(mentions) == 1  # each unknown type is logged once


async def test_handler_exceptions_do_not_stop_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(ws: ServerConnection) -> None:
        for index in range(3):
            await ws.send(json.dumps({"type": "input_audio_buffer.cleared", "event_id": f"e{index}"}))
        await ws.wait_closed()

    recorder = Recorder()

    async def explode_once(event: ServerEvent) -> None:
        if len(recorder.events) == 1:
            raise RuntimeError("handler bug")

    async def explode_on_connect(reconnected: bool) -> None:
        raise ValueError("setup bug")

    recorder.event_hook = explode_once
    recorder.connected_hook = explode_on_connect
    async with ws_server(handler) as url:
        transport = make_transport(custom_endpoint(url, None), recorder)
        async with running(transport):
            await wait_until(lambda: len(recorder.events) == 3, what="all three events")
            assert transport.connected

    assert transport.handler_errors == 2
    assert transport.last_handler_error is not None
    assert transport.last_handler_error.kind == "handler_error"
    assert "on_event" in transport.last_handler_error.message
    assert recorder.problems == []
    assert any("RuntimeError" in r.getMessage() for r in caplog.records if r.name == "app.realtime")


# ---------------------------------------------------------------------------------------------------
# Reconnecting
# ---------------------------------------------------------------------------------------------------


async def test_reconnects_after_connection_drop_mid_response_and_replays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="app.realtime")
    peer = ScriptedPeer()

    async def handler(ws: ServerConnection) -> None:
        inbox = peer.inbox()
        inbox.append(json.loads(await ws.recv()))
        if len(peer.received) == 1:
            await ws.send(sample_event("response.created"))
            await ws.send(sample_event("response.output_audio.delta"))
            await asyncio.sleep(0.05)
            ws.transport.abort()  # the TCP connection dies mid-response, no closing handshake
            return
        await read_into(ws, inbox)

    recorder = Recorder()

    async def configure(reconnected: bool) -> None:
        assert recorder.transport is not None
        await recorder.transport.send(SessionUpdate(Session(instructions="Help.")))
        if reconnected:
            await recorder.transport.send(ConversationItemCreate.message("user", "My VPN is down."))

    recorder.connected_hook = configure
    async with ws_server(handler) as url:
        transport = make_transport(openai_endpoint("gpt-realtime", KEY, base_url=url), recorder)
        async with running(transport):
            await wait_until(lambda: len(peer.received) == 2 and len(peer.received[1]) == 2, what="replay")
            assert transport.connected
            assert transport.reconnects == 1

    assert [reconnected for reconnected, _ in recorder.connects] == [False, True]
    problem, retry_in, _ = recorder.problems[0]
    assert len(recorder.problems) == 1
    assert problem.kind == "dropped"
    assert problem.close_code == 1006
    assert problem.retryable
    assert "lost unexpectedly" in problem.message
    assert retry_in is not None
    assert 0.02 * 0.8 <= retry_in <= 0.02 * 1.2
    # Everything the first connection delivered came before the disconnect, then the reconnect.
    assert recorder.log[:5] == [
        ("connected", False),
        ("event", "ResponseCreated"),
        ("event", "ResponseOutputAudioDelta"),
        ("disconnected", "dropped"),
        ("connected", True),
    ]
    second = peer.received[1]
    assert [message["type"] for message in second] == ["session.update", "conversation.item.create"]
    assert second[1]["item"]["content"][0]["text"] == "My VPN is down."
    assert KEY not in caplog.text
    assert any("retrying" in r.getMessage() for r in caplog.records if r.name == "app.realtime")


@pytest.mark.parametrize(
    ("code", "kind", "fragment"),
    [(1000, "server_closed", "ended the session"), (1011, "dropped", "close code 1011: overloaded")],
)
async def test_server_close_is_reported_and_reconnected(code: int, kind: str, fragment: str) -> None:
    connections: list[ServerConnection] = []

    async def handler(ws: ServerConnection) -> None:
        connections.append(ws)
        if len(connections) == 1:
            await ws.close(code, "overloaded" if code != 1000 else "")
            return
        await ws.wait_closed()

    recorder = Recorder()
    async with ws_server(handler) as url:
        transport = make_transport(custom_endpoint(url, None), recorder)
        async with running(transport):
            await wait_until(lambda: len(recorder.connects) == 2, what="the reconnect")

    problem, retry_in, _ = recorder.problems[0]
    assert problem.kind == kind
    assert problem.close_code == code
    assert fragment in problem.message
    assert retry_in is not None


def test_backoff_delays_grow_with_jitter() -> None:
    policy = BackoffPolicy(initial=0.25, factor=2.0, maximum=10.0, jitter=0.2)
    rng = random.Random(7)
    delays = [policy.delay(attempt, rng) for attempt in range(9)]
    bases = [min(10.0, 0.25 * 2**attempt) for attempt in range(9)]
    for delay, base in zip(delays, bases, strict=True):
        assert base * 0.8 <= delay <= base * 1.2
    assert all(later > earlier for earlier, later in itertools.pairwise(delays[:7]))
    assert max(delays) <= 12.0
    assert delays != bases  # jitter is applied
    other = [policy.delay(attempt, random.Random(8)) for attempt in range(9)]
    assert other != delays  # and it depends on the injected rng
    assert [policy.delay(attempt, random.Random(7)) for attempt in range(9)] != other
    exact = BackoffPolicy(initial=0.25, factor=2.0, maximum=10.0, jitter=0.0)
    assert [exact.delay(attempt, rng) for attempt in range(9)] == bases
    assert policy.delay(0, rng, rate_limited=True) >= 5.0 * 0.8
    assert policy.delay(100_000, rng) <= 12.0  # no overflow for very long outages


@pytest.mark.parametrize(
    "kwargs",
    [{"factor": 0.5}, {"jitter": 1.0}, {"initial": -1.0}, {"maximum": 0.1, "initial": 1.0}],
)
def test_backoff_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**kwargs)


async def test_connection_refused_retries_with_growing_delays_then_gives_up() -> None:
    recorder = Recorder()
    backoff = BackoffPolicy(initial=0.01, factor=2.0, maximum=1.0, jitter=0.2)
    transport = make_transport(custom_endpoint(free_url(), None), recorder, backoff=backoff, max_attempts=5)
    result = await asyncio.wait_for(transport.run(), 3.0)

    assert result is not None
    assert result.kind == "refused"
    assert "refused the connection" in result.message
    assert "127.0.0.1" in result.message
    delays = [retry_in for _, retry_in, _ in recorder.problems]
    assert len(delays) == 5
    assert delays[-1] is None  # the fifth failure gives up
    waits = [delay for delay in delays[:-1] if delay is not None]
    for attempt, delay in enumerate(waits):
        assert 0.01 * 2**attempt * 0.8 <= delay <= 0.01 * 2**attempt * 1.2
    assert waits == sorted(waits)
    assert recorder.connects == []


async def test_dns_failure_message() -> None:
    recorder = Recorder()
    transport = make_transport(custom_endpoint("ws://nonexistent.invalid/rt", None), recorder, max_attempts=1)
    result = await asyncio.wait_for(transport.run(), 3.0)
    assert result is not None
    assert result.kind == "dns"
    assert "nonexistent.invalid" in result.message
    assert "could not be found" in result.message
    assert result.retryable  # a laptop that is offline now may be online in a minute
    assert recorder.problems[0][1] is None


async def test_tls_certificate_failure_message(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    async with ws_server(never_called, ssl=context) as url:
        recorder = Recorder()
        endpoint = custom_endpoint(url.replace("ws://", "wss://"), KEY)
        transport = make_transport(endpoint, recorder, max_attempts=1)
        result = await asyncio.wait_for(transport.run(), 3.0)
    assert result is not None
    assert result.kind == "tls"
    assert "certificate could not be verified" in result.message


# ---------------------------------------------------------------------------------------------------
# HTTP rejections
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "fragment"),
    [(401, "unauthorized", "API key"), (403, "forbidden", "permission"), (404, "not_found", "not found")],
)
async def test_auth_and_not_found_are_not_retried(
    status: int, kind: str, fragment: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="app.realtime")
    # The server echoes the key in its error body; it must not come back out of the transport.
    body = json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}."}})
    seen, process_request = http_error_peer(status, body)
    recorder = Recorder()
    async with ws_server(never_called, process_request=process_request) as url:
        transport = make_transport(openai_endpoint("gpt-realtime", KEY, base_url=url), recorder)
        started = time.monotonic()
        result = await asyncio.wait_for(transport.run(), 3.0)
        elapsed = time.monotonic() - started

    assert result is not None
    assert elapsed < 1.0
    assert len(seen) == 1  # no retry
    assert result.kind == kind
    assert result.status == status
    assert not result.retryable
    assert fragment in result.message
    assert f"HTTP {status}" in result.message
    assert recorder.problems == [(result, None, recorder.problems[0][2])]
    assert result.detail is not None
    assert "Incorrect API key provided" in result.detail
    for text in (result.message, result.detail, repr(result), caplog.text):
        assert KEY not in text


async def test_rate_limited_waits_longer_and_honours_retry_after() -> None:
    seen, process_request = http_error_peer(429, "slow down", {"Retry-After": "0.4"})
    recorder = Recorder()
    async with ws_server(never_called, process_request=process_request) as url:
        transport = make_transport(custom_endpoint(url, KEY), recorder, max_attempts=2)
        started = time.monotonic()
        result = await asyncio.wait_for(transport.run(), 3.0)
        elapsed = time.monotonic() - started

    assert result is not None
    assert result.kind == "rate_limited"
    assert result.retryable
    assert result.retry_after == 0.4
    assert "rate limiting" in result.message
    assert "quota" in result.message
    first_wait = recorder.problems[0][1]
    assert first_wait is not None
    assert first_wait >= 0.4  # Retry-After, well above the 0.02 s a plain failure would wait
    assert elapsed >= 0.4
    assert len(seen) == 2


async def test_rate_limit_minimum_applies_without_retry_after() -> None:
    _, process_request = http_error_peer(429, "")
    recorder = Recorder()
    async with ws_server(never_called, process_request=process_request) as url:
        transport = make_transport(custom_endpoint(url, KEY), recorder, max_attempts=2)
        await asyncio.wait_for(transport.run(), 3.0)
    first_wait = recorder.problems[0][1]
    assert first_wait is not None
    assert first_wait >= 0.3 * 0.8  # FAST_BACKOFF.rate_limit_minimum, with jitter


async def test_server_error_is_retried() -> None:
    seen, process_request = http_error_peer(503, "maintenance")
    recorder = Recorder()
    async with ws_server(never_called, process_request=process_request) as url:
        transport = make_transport(custom_endpoint(url, KEY), recorder, max_attempts=3)
        result = await asyncio.wait_for(transport.run(), 3.0)
    assert result is not None
    assert result.kind == "server_error"
    assert "HTTP 503" in result.message
    assert len(seen) == 3
    assert [retry_in is not None for _, retry_in, _ in recorder.problems] == [True, True, False]


async def test_redirect_is_not_followed() -> None:
    seen, process_request = http_error_peer(302, "", {"Location": "ws://127.0.0.2:1/steal"})
    async with ws_server(never_called, process_request=process_request) as url:
        transport = make_transport(azure_endpoint("contoso", "rt", KEY), Recorder())
        transport = make_transport(replace(transport.endpoint, url=url), Recorder())
        result = await asyncio.wait_for(transport.run(), 3.0)
    assert result is not None
    assert result.kind == "redirect"
    assert not result.retryable
    assert len(seen) == 1


# ---------------------------------------------------------------------------------------------------
# Limits, silence and shutdown
# ---------------------------------------------------------------------------------------------------


async def test_too_big_frame_closes_with_message_then_reconnects() -> None:
    connections: list[ServerConnection] = []

    async def handler(ws: ServerConnection) -> None:
        connections.append(ws)
        if len(connections) == 1:
            payload = "A" * (16 * 2**20)
            with contextlib.suppress(Exception):
                await ws.send(f'{{"type":"response.output_audio.delta","delta":"{payload}"}}')
            await ws.wait_closed()
            return
        await ws.send('{"type":"input_audio_buffer.cleared","event_id":"after"}')
        await ws.wait_closed()

    recorder = Recorder()
    async with ws_server(handler, compression=None) as url:
        transport = make_transport(custom_endpoint(url, None), recorder)
        async with running(transport):
            await wait_until(lambda: len(recorder.events) == 1, what="an event on the new connection")

    problem, retry_in, _ = recorder.problems[0]
    assert problem.kind == "too_big"
    assert problem.close_code == 1009
    assert "8 MiB limit" in problem.message
    assert "16.0 MiB" in problem.message or "16 MiB" in problem.message
    assert retry_in is not None
    assert [reconnected for reconnected, _ in recorder.connects] == [False, True]
    assert isinstance(recorder.events[0], InputAudioBufferCleared)


async def test_silent_peer_is_detected_and_reconnected() -> None:
    ping_interval, ping_timeout, close_timeout = 0.2, 0.2, 0.2
    recorder = Recorder()
    async with raw_server("silent") as (url, accepted):
        transport = make_transport(
            custom_endpoint(url, None),
            recorder,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
        )
        async with running(transport):
            await wait_until(lambda: len(recorder.connects) == 2, what="the reconnect")

    problem, retry_in, noticed = recorder.problems[0]
    assert problem.kind == "peer_silent"
    assert "stopped responding" in problem.message
    assert retry_in is not None
    detected_after = noticed - recorder.connects[0][1]
    # websockets waits close_timeout for the silent peer's closing handshake before giving up on it.
    assert detected_after <= ping_interval + ping_timeout + close_timeout + 0.3
    assert detected_after >= ping_interval + ping_timeout - 0.05
    assert recorder.connects[1][0] is True
    assert len(accepted) >= 2


async def test_close_during_backoff_returns_quickly() -> None:
    recorder = Recorder()
    slow = BackoffPolicy(initial=30.0, maximum=30.0)
    transport = make_transport(custom_endpoint(free_url(), None), recorder, backoff=slow)
    task = asyncio.create_task(transport.run())
    await wait_until(lambda: len(recorder.problems) == 1, what="the first failure")
    assert recorder.problems[0][1] is not None and recorder.problems[0][1] >= 24.0
    started = time.monotonic()
    await transport.close()
    assert time.monotonic() - started < 1.0
    assert await asyncio.wait_for(task, 1.0) is None
    assert len(recorder.problems) == 1  # close() is not reported as a problem


async def test_close_returns_quickly_when_peer_is_unresponsive() -> None:
    recorder = Recorder()
    async with raw_server("silent") as (url, _):
        transport = make_transport(custom_endpoint(url, None), recorder, close_timeout=5.0)
        task = asyncio.create_task(transport.run())
        await wait_until(lambda: transport.connected, what="connection")
        started = time.monotonic()
        await transport.close()
        assert time.monotonic() - started < 1.0
        assert await asyncio.wait_for(task, 1.0) is None


async def test_close_during_handshake_returns_quickly() -> None:
    async with raw_server("mute") as (url, accepted):
        transport = make_transport(custom_endpoint(url, None), Recorder(), open_timeout=10.0)
        task = asyncio.create_task(transport.run())
        await wait_until(lambda: len(accepted) == 1, what="the TCP connection")
        started = time.monotonic()
        await transport.close()
        assert time.monotonic() - started < 1.0
        assert await asyncio.wait_for(task, 1.0) is None


async def test_slow_handler_does_not_block_send_or_keepalive() -> None:
    inbox: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        for index in range(100):  # far more than websockets' default receive queue of 16
            await ws.send(json.dumps({"type": "input_audio_buffer.cleared", "event_id": f"e{index}"}))
        await read_into(ws, inbox)

    release = asyncio.Event()
    recorder = Recorder()
    entered = asyncio.Event()

    async def slow(event: ServerEvent) -> None:
        entered.set()
        await release.wait()

    recorder.event_hook = slow
    async with ws_server(handler) as url:
        transport = make_transport(custom_endpoint(url, None), recorder, ping_interval=0.1, ping_timeout=0.1)
        async with running(transport):
            await asyncio.wait_for(entered.wait(), 2.0)
            started = time.monotonic()
            assert await asyncio.wait_for(transport.send(ResponseCreate(event_id="while_busy")), 0.5)
            await wait_until(lambda: len(inbox) == 1, timeout=1.0, what="the send while the handler is busy")
            assert time.monotonic() - started < 0.5
            # Several keepalive rounds pass while the handler is stuck; the connection must survive.
            await asyncio.sleep(0.6)
            assert len(recorder.events) == 1
            release.set()
            await wait_until(lambda: len(recorder.events) == 100, what="the remaining events")
            assert transport.connected

    assert inbox[0]["event_id"] == "while_busy"
    assert recorder.problems == []


async def test_sends_wait_for_on_connected_setup() -> None:
    inbox: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        await read_into(ws, inbox)

    recorder = Recorder()
    in_setup = asyncio.Event()
    finish_setup = asyncio.Event()

    async def configure(reconnected: bool) -> None:
        assert recorder.transport is not None
        in_setup.set()
        await finish_setup.wait()
        assert await recorder.transport.send(SessionUpdate(Session(instructions="Setup first.")))

    recorder.connected_hook = configure
    async with ws_server(handler) as url:
        transport = make_transport(custom_endpoint(url, None), recorder)
        async with running(transport):
            await asyncio.wait_for(in_setup.wait(), 2.0)
            # Audio from another task must not overtake session.update and the replay.
            assert await transport.send(InputAudioBufferClear()) is False
            assert not transport.connected
            finish_setup.set()
            await wait_until(lambda: transport.connected, what="setup to finish")
            assert await transport.send(InputAudioBufferClear())
            await wait_until(lambda: len(inbox) == 2, what="both client events")

    assert [message["type"] for message in inbox] == ["session.update", "input_audio_buffer.clear"]


async def test_rollover_closes_normally_and_reconnects() -> None:
    close_codes: list[int | None] = []
    inboxes: list[list[dict[str, Any]]] = []

    async def handler(ws: ServerConnection) -> None:
        inbox: list[dict[str, Any]] = []
        inboxes.append(inbox)
        with contextlib.suppress(Exception):
            await read_into(ws, inbox)
        close_codes.append(ws.close_code)

    recorder = Recorder()
    async with ws_server(handler) as url:
        transport = make_transport(custom_endpoint(url, None), recorder)
        assert await transport.rollover() is False  # nothing to roll over yet
        async with running(transport):
            await wait_until(lambda: transport.connected, what="connection")
            assert await transport.rollover()
            await wait_until(lambda: len(recorder.connects) == 2 and transport.connected, what="the new one")
            assert await transport.send(ResponseCreate(event_id="after_rollover"))
            await wait_until(lambda: len(inboxes) == 2 and len(inboxes[1]) == 1, what="send on the new one")
            assert close_codes == [1000]

    assert [reconnected for reconnected, _ in recorder.connects] == [False, True]
    assert transport.reconnects == 1
    assert recorder.problems == []  # a planned reconnect is not a problem
    assert inboxes[1][0]["event_id"] == "after_rollover"


async def test_key_and_audio_never_reach_any_log_even_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, websockets' own included
    audio_marker = "QUJDREVGR0hJSktMTU5PUA"

    async def handler(ws: ServerConnection) -> None:
        delta = json.loads(sample_event("response.output_audio.delta"))
        delta["delta"] = audio_marker * 4
        await ws.send(json.dumps(delta))
        await ws.wait_closed()

    recorder = Recorder()
    async with ws_server(handler) as url:
        transport = make_transport(openai_endpoint("gpt-realtime", KEY, base_url=url), recorder)
        async with running(transport):
            await wait_until(lambda: len(recorder.events) == 1, what="the audio event")
            await transport.send({"type": "input_audio_buffer.append", "audio": audio_marker})
    # The scripted peer's own websockets logger shows what it received; only the client side counts.
    client_side = [r for r in caplog.records if not r.name.startswith("websockets.server")]
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in client_side)
    assert any(r.name == "app.realtime" for r in client_side)  # logging was on
    assert KEY not in text
    assert audio_marker not in text


async def test_cancelling_run_leaves_no_socket_open() -> None:
    closed = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()
        closed.set()

    async with ws_server(handler) as url:
        transport = make_transport(custom_endpoint(url, None), Recorder())
        task = asyncio.create_task(transport.run())
        await wait_until(lambda: transport.connected, what="connection")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(closed.wait(), 1.0)
        assert not transport.connected


async def test_open_timeout_message() -> None:
    async with raw_server("mute") as (url, _):
        recorder = Recorder()
        transport = make_transport(custom_endpoint(url, None), recorder, open_timeout=0.3, max_attempts=1)
        started = time.monotonic()
        result = await asyncio.wait_for(transport.run(), 3.0)
    assert result is not None
    assert result.kind == "timeout"
    assert "did not answer within 0.3 s" in result.message
    assert 0.25 <= time.monotonic() - started < 1.5


async def test_a_refused_key_inside_the_protocol_ends_the_session_without_a_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``invalid_api_key`` after the handshake is as final as HTTP 401: one clear problem, no loop."""
    caplog.set_level(logging.DEBUG, logger="app.realtime")
    connections: list[ServerConnection] = []

    async def handler(ws: ServerConnection) -> None:
        connections.append(ws)
        await ws.send(sample_event("session.created"))
        error = {
            "type": "error",
            "event_id": "ev_1",
            "error": {
                "type": "invalid_request_error",
                "code": "invalid_api_key",
                "message": f"Incorrect API key provided: {KEY}.\x1b[2J\x1b]0;pwned\x07",
            },
        }
        await ws.send(json.dumps(error))
        await ws.wait_closed()

    recorder = Recorder()
    async with ws_server(handler) as url:
        transport = make_transport(custom_endpoint(url, KEY), recorder)
        result = await asyncio.wait_for(transport.run(), 3.0)

    assert len(connections) == 1  # no reconnect
    assert result is not None and not result.retryable
    assert result.kind == "unauthorized"
    assert "API key" in result.message
    assert recorder.problems == [(result, None, recorder.problems[0][2])]
    # The handler heard the end of the session, not also the error as an ordinary event.
    assert [type(event).__name__ for event in recorder.events] == ["SessionCreated"]
    assert result.detail is not None and "Incorrect API key provided" in result.detail
    for text in (result.message, result.detail, caplog.text):
        assert KEY not in text
        assert "\x1b" not in text and "\x07" not in text


async def test_close_code_1008_is_final() -> None:
    connections: list[ServerConnection] = []

    async def handler(ws: ServerConnection) -> None:
        connections.append(ws)
        await ws.close(1008, "invalid token \x1b[31mred")

    recorder = Recorder()
    async with ws_server(handler) as url:
        transport = make_transport(custom_endpoint(url, None), recorder)
        result = await asyncio.wait_for(transport.run(), 3.0)

    assert len(connections) == 1
    assert result is not None and not result.retryable
    assert result.close_code == 1008
    assert "invalid token" in result.message and "\x1b" not in result.message


async def test_server_text_reaches_the_handler_without_the_key_or_control_characters() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(sample_event("session.created"))
        error = {
            "type": "error",
            "event_id": "ev_1",
            "error": {"type": "invalid_request_error", "code": "bad", "message": f"echo {KEY}\x1b[2J\u202e!"},
        }
        await ws.send(json.dumps(error))
        await ws.send(json.dumps(error).encode())  # a binary frame is scrubbed too
        await ws.wait_closed()

    recorder = Recorder()
    async with ws_server(handler) as url:
        transport = make_transport(custom_endpoint(url, KEY), recorder)
        async with running(transport):
            await wait_until(lambda: len(recorder.events) == 3, what="both errors")

    messages = [event.message for event in recorder.events[1:] if isinstance(event, ErrorEvent)]
    assert messages == ["echo ***[2J!", "echo ***[2J!"]  # the escape and the override are gone
