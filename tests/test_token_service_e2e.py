"""A laptop with no API key connects through the reference token service, end to end on loopback.

Three real servers, each on 127.0.0.1: a stand-in for the upstream (an ASGI app answering
``POST /v1/realtime/client_secrets`` with an ephemeral key, for the company's API key only, and a
websockets server that accepts the realtime WebSocket only with an ephemeral key it minted and that
has not expired), the reference token service (app/token_service/) in front of it under uvicorn,
and the app's own connection code: the launch plan from settings that name no API key anywhere,
and RealtimeTransport with the plan's endpoint.

Not exercised here: a real OpenAI or Azure upstream. Company sign-in: tests/test_integrated_auth.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidStatus
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse

from app.config import load_settings
from app.core.protocol import ServerEvent
from app.launch import plan_from_settings
from app.realtime import API_KEY_ENV, BackoffPolicy, ConnectionProblem, Endpoint, RealtimeTransport
from app.realtime.client_secret import TOKEN_CREDENTIAL_ENV, ClientSecretSource
from app.token_service.service import ServiceConfig, create_app, hash_credential
from tests.test_transport import running, sample_event

COMPANY_KEY = "sk-company-0123456789SECRET"
LAPTOP = "laptop-credential-one-0123456789"
NOISY_LAPTOP = "laptop-credential-two-0123456789"
STRANGER = "not-a-registered-credential-0123"
FAST = BackoffPolicy(
    initial=0.05, factor=2.0, maximum=0.3, jitter=0.1, rate_limit_minimum=0.1, reset_after=0.5
)


@pytest.fixture(autouse=True)
def no_machine_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's own site policy (it may lock the backend) is not what these tests are about."""
    monkeypatch.setattr("app.config.system_policy_path", lambda: tmp_path / "no-machine-policy.toml")


@dataclass
class Upstream:
    """The stand-in for OpenAI: mints ephemeral keys and admits only live ones to the WebSocket."""

    ttl: float = 600.0
    minted: dict[str, float] = field(default_factory=dict)  # key -> expires_at (Unix seconds)
    requests: list[dict[str, object]] = field(default_factory=list)
    admitted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    connections: list[ServerConnection] = field(default_factory=list)
    _serial: itertools.count[int] = field(default_factory=itertools.count)

    def http_app(self) -> Starlette:
        async def client_secrets(request: Request) -> Response:
            if request.headers.get("authorization") != f"Bearer {COMPANY_KEY}":
                return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
            self.requests.append(json.loads(await request.body()))
            value = f"ek_standin_{next(self._serial)}"
            self.minted[value] = time.time() + self.ttl
            session = {"type": "realtime", "model": "gpt-realtime"}
            return JSONResponse({"value": value, "expires_at": self.minted[value], "session": session})

        return Starlette(routes=[Route("/v1/realtime/client_secrets", client_secrets, methods=["POST"])])

    def check(self, connection: ServerConnection, request: WsRequest) -> WsResponse | None:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        expires_at = self.minted.get(given)
        if expires_at is None or time.time() >= expires_at:
            self.refused.append(given)
            return connection.respond(HTTPStatus.UNAUTHORIZED, "unknown or expired ephemeral key\n")
        self.admitted.append(given)
        return None

    async def realtime(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        await ws.send(sample_event("session.created"))
        with contextlib.suppress(Exception):
            await ws.wait_closed()


@contextlib.asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[int]:
    """``app`` under uvicorn on a loopback port of its own; yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@dataclass
class Stack:
    upstream: Upstream
    realtime_url: str
    token_url: str


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    upstream = Upstream()
    config = ServiceConfig(
        upstream_url="",  # set below, once the upstream's port is known
        api_key=COMPANY_KEY,
        devices={
            hash_credential(LAPTOP).removeprefix("sha256:"): "laptop-1",
            hash_credential(NOISY_LAPTOP).removeprefix("sha256:"): "laptop-2",
        },
        model="gpt-realtime",
        voice="marin",
        ttl_seconds=600,
        rate_per_minute=3,
    )
    async with (
        serving(upstream.http_app()) as upstream_port,
        serve(upstream.realtime, "127.0.0.1", 0, process_request=upstream.check) as realtime,
    ):
        service = create_app(
            replace(config, upstream_url=f"http://127.0.0.1:{upstream_port}/v1/realtime/client_secrets")
        )
        async with serving(service) as service_port:
            realtime_port = next(iter(realtime.sockets)).getsockname()[1]
            yield Stack(
                upstream,
                f"ws://127.0.0.1:{realtime_port}/v1/realtime",
                f"http://127.0.0.1:{service_port}/v1/realtime/client_secrets",
            )


class Recorder:
    """A TransportHandler that remembers what the transport told it."""

    def __init__(self) -> None:
        self.connected: list[bool] = []
        self.events: list[ServerEvent] = []
        self.problems: list[tuple[ConnectionProblem, float | None]] = []

    async def on_connected(self, reconnected: bool) -> None:
        self.connected.append(reconnected)

    async def on_event(self, event: ServerEvent) -> None:
        self.events.append(event)

    async def on_disconnected(self, problem: ConnectionProblem, retry_in: float | None) -> None:
        self.problems.append((problem, retry_in))


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def app_endpoint(stack: Stack, env: dict[str, str], credential: str) -> Endpoint:
    """The endpoint the app's launch plan makes from settings that hold no API key at all."""
    environ = {
        **env,
        "HELPDESK_VOICE_BACKEND": "custom",
        "HELPDESK_VOICE_ENDPOINT_URL": stack.realtime_url,
        "HELPDESK_VOICE_ENDPOINT_TOKEN_URL": stack.token_url,
        TOKEN_CREDENTIAL_ENV: credential,
    }
    assert API_KEY_ENV not in environ
    plan = plan_from_settings(load_settings(None, environ), environ)
    assert plan.endpoint is not None and plan.endpoint.headers == {}
    assert plan.endpoint.credentials is not None
    return plan.endpoint


async def test_a_laptop_without_an_api_key_connects_with_a_secret_from_the_token_service(
    stack: Stack, env: dict[str, str], file_keyring: object
) -> None:
    recorder = Recorder()
    transport = RealtimeTransport(app_endpoint(stack, env, LAPTOP), recorder, backoff=FAST)
    async with running(transport, stop_within_s=5.0):
        await wait_until(lambda: transport.connected and bool(recorder.events), what="the session")
    assert recorder.connected == [False]
    assert stack.upstream.admitted == ["ek_standin_0"]
    # The token service asked upstream with its own session defaults, whatever the laptop sent.
    assert stack.upstream.requests == [
        {
            "expires_after": {"anchor": "created_at", "seconds": 600},
            "session": {"type": "realtime", "model": "gpt-realtime", "audio": {"output": {"voice": "marin"}}},
        }
    ]
    assert recorder.problems == []


async def test_an_expired_secret_is_not_reused_a_reconnect_fetches_a_new_one(
    stack: Stack, env: dict[str, str], file_keyring: object
) -> None:
    stack.upstream.ttl = 1.0
    endpoint = app_endpoint(stack, env, LAPTOP)
    # The launch plan's 60 s margin would refuse a 1 s secret: the same source, with a margin that
    # fits this test's short lifetime.
    endpoint = replace(endpoint, credentials=ClientSecretSource(stack.token_url, LAPTOP, margin=0.2))
    recorder = Recorder()
    transport = RealtimeTransport(endpoint, recorder, backoff=FAST)
    async with running(transport, stop_within_s=5.0):
        await wait_until(lambda: transport.connected, what="the first connection")
        first = stack.upstream.admitted[0]
        await asyncio.sleep(max(0.0, stack.upstream.minted[first] - time.time()) + 0.05)
        # The first secret is dead now: the realtime side refuses it.
        with pytest.raises(InvalidStatus) as refused:
            await connect(stack.realtime_url, additional_headers={"Authorization": f"Bearer {first}"})
        assert refused.value.response.status_code == 401
        await stack.upstream.connections[0].close(1011, "server restarting")
        await wait_until(lambda: len(recorder.connected) == 2 and transport.connected, what="the reconnect")
    second = stack.upstream.admitted[1]
    assert recorder.connected == [False, True]
    assert second != first and stack.upstream.refused == [first]  # only the probe above was refused
    assert [p.retryable for p, _ in recorder.problems] == [True]


async def test_a_rollover_fetches_a_fresh_secret(
    stack: Stack, env: dict[str, str], file_keyring: object
) -> None:
    recorder = Recorder()
    transport = RealtimeTransport(app_endpoint(stack, env, LAPTOP), recorder, backoff=FAST)
    async with running(transport, stop_within_s=5.0):
        await wait_until(lambda: transport.connected, what="the first connection")
        assert await transport.rollover()
        await wait_until(lambda: len(recorder.connected) == 2 and transport.connected, what="the rollover")
    assert stack.upstream.admitted == ["ek_standin_0", "ek_standin_1"]
    assert recorder.problems == []


async def test_a_refused_device_credential_is_a_clear_notice_and_no_retry(
    stack: Stack, env: dict[str, str], file_keyring: object
) -> None:
    recorder = Recorder()
    transport = RealtimeTransport(app_endpoint(stack, env, STRANGER), recorder, backoff=FAST)
    problem = await asyncio.wait_for(transport.run(), 5)
    assert problem is not None and problem.kind == "unauthorized" and not problem.retryable
    assert "device credential" in problem.message and "register this computer" in problem.message
    assert recorder.problems == [(problem, None)] and recorder.connected == []
    assert stack.upstream.minted == {} and stack.upstream.admitted == []
    assert STRANGER not in problem.message


async def test_the_rate_limit_answers_429_and_the_app_waits_as_told(
    stack: Stack, env: dict[str, str], file_keyring: object
) -> None:
    async with httpx.AsyncClient() as client:
        answers = [
            await client.post(
                stack.token_url, headers={"Authorization": f"Bearer {NOISY_LAPTOP}"}, content=b"{}"
            )
            for _ in range(4)
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert 1 <= int(answers[3].headers["retry-after"]) <= 60
    assert "too many requests" in answers[3].json()["error"]["message"]
    # Another device has its own allowance.
    recorder = Recorder()
    transport = RealtimeTransport(app_endpoint(stack, env, LAPTOP), recorder, backoff=FAST)
    async with running(transport, stop_within_s=5.0):
        await wait_until(lambda: transport.connected, what="the other laptop's connection")
    # The noisy laptop's app hears the refusal as a notice and waits at least the Retry-After.
    recorder = Recorder()
    transport = RealtimeTransport(app_endpoint(stack, env, NOISY_LAPTOP), recorder, backoff=FAST)
    async with running(transport, stop_within_s=5.0):
        await wait_until(lambda: bool(recorder.problems), what="the rate-limit notice")
    problem, retry_in = recorder.problems[0]
    assert problem.kind == "rate_limited" and problem.retryable
    assert "wait before asking for a new secret" in problem.message
    assert retry_in is not None and retry_in >= int(answers[3].headers["retry-after"]) * 0.9


async def test_a_token_service_that_is_down_is_retried_with_backoff_and_close_ends_it(
    env: dict[str, str], file_keyring: object
) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    dead = int(sock.getsockname()[1])
    sock.close()  # nothing listens here now
    stack = Stack(
        Upstream(), "ws://127.0.0.1:9/v1/realtime", f"http://127.0.0.1:{dead}/v1/realtime/client_secrets"
    )
    recorder = Recorder()
    transport = RealtimeTransport(app_endpoint(stack, env, LAPTOP), recorder, backoff=FAST)
    async with running(transport, stop_within_s=5.0):
        await wait_until(lambda: len(recorder.problems) >= 3, what="three retries")
    kinds = {p.kind for p, _ in recorder.problems}
    assert kinds == {"refused"}
    assert all(retry_in is not None for _, retry_in in recorder.problems)
    assert "token service" in recorder.problems[0][0].message
