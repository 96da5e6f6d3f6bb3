"""Short-lived client secrets (app/realtime/client_secret.py) and the launch plan that uses them.

The parsing and expiry maths are fed plain data; the httpx adapter runs against httpx's
MockTransport; the launch plan is built from real settings files in a temporary folder.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import keyring
import pytest
from websockets.asyncio.server import ServerConnection, serve

from app.config import load_settings
from app.core.protocol import ErrorEvent, ServerEvent
from app.launch import LaunchError, plan_from_settings
from app.realtime.client_secret import (
    TOKEN_CREDENTIAL_ENV,
    TOKEN_KEYRING_USERNAME,
    ClientSecret,
    ClientSecretSource,
    build_request,
    check_token_url,
    lookup_token_credential,
    parse_response,
)
from app.realtime.endpoint import API_KEY_ENV, KEYRING_SERVICE, Endpoint
from app.realtime.errors import ConnectionProblem, CredentialUnavailable, classify
from app.realtime.transport import BackoffPolicy, RealtimeTransport
from app.settings_rules import API_KEY_FIELD, cross_field_problems
from tests.file_keyring import FileKeyring

NOW = 1_900_000_000.0
CREDENTIAL = "device-credential-0123456789SECRET"
SECRET = "ek_0123456789abcdefSECRET"
TOKEN_URL = "https://tokens.example.com/v1/realtime/client_secrets"


@pytest.fixture(autouse=True)
def no_machine_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's own site policy (it may lock the backend) is not what these tests are about."""
    monkeypatch.setattr("app.config.system_policy_path", lambda: tmp_path / "no-machine-policy.toml")


def body(payload: object) -> bytes:
    return json.dumps(payload).encode()


def problem_of(call: Callable[[], object]) -> CredentialUnavailable:
    with pytest.raises(CredentialUnavailable) as caught:
        call()
    return caught.value


# ---------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------


def test_an_openai_shaped_answer_gives_the_secret_and_its_expiry() -> None:
    answer = {"value": SECRET, "expires_at": int(NOW) + 600, "session": {"type": "realtime"}}
    secret = parse_response(200, body(answer), NOW)
    assert secret == ClientSecret(SECRET, NOW + 600)
    assert SECRET not in repr(secret) and SECRET not in str(secret)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"<html>oops</html>", "not JSON"),
        (body([SECRET]), "JSON list, not an object"),
        (body({"expires_at": NOW + 600}), 'no "value"'),
        (body({"value": 12, "expires_at": NOW + 600}), '"value" is a int'),
        (body({"value": "  ", "expires_at": NOW + 600}), '"value" is empty'),
        (body({"value": "ek_a b", "expires_at": NOW + 600}), "cannot be sent in an HTTP header"),
        (body({"value": "ek_é", "expires_at": NOW + 600}), "cannot be sent in an HTTP header"),
        (body({"value": SECRET}), 'no "expires_at"'),
        (body({"value": SECRET, "expires_at": "soon"}), '"expires_at" is a str'),
        (body({"value": SECRET, "expires_at": True}), '"expires_at" is a bool'),
        (body({"value": SECRET, "expires_at": -5}), "is not a time"),
        (b'{"value": "ek_x", "expires_at": Infinity}', "is not a time"),
        (b"{" + b" " * 70_000 + b"}", "bytes long"),
    ],
)
def test_every_malformed_answer_is_a_retryable_problem_that_says_what_is_wrong(
    raw: bytes, words: str
) -> None:
    error = problem_of(lambda: parse_response(200, raw, NOW))
    assert error.problem.retryable
    assert error.problem.message.startswith("The token service's answer is not a client secret")
    assert words in error.problem.message
    assert SECRET not in error.problem.message


def test_a_secret_that_is_expired_or_nearly_so_on_arrival_points_at_the_clock() -> None:
    late = problem_of(lambda: parse_response(200, body({"value": SECRET, "expires_at": NOW - 30}), NOW))
    assert "expired 30 s ago" in late.problem.message and "clock" in late.problem.message
    soon = problem_of(lambda: parse_response(200, body({"value": SECRET, "expires_at": NOW + 59}), NOW))
    assert "expires in 59 s" in soon.problem.message
    # With a smaller margin the same secret is fine.
    assert (
        parse_response(200, body({"value": SECRET, "expires_at": NOW + 59}), NOW, margin=10).value == SECRET
    )


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (401, "unauthorized", False),
        (403, "forbidden", False),
        (404, "not_found", False),
        (429, "rate_limited", True),
        (500, "server_error", True),
        (503, "server_error", True),
        (400, "http_error", True),
    ],
)
def test_refusals_become_problems_the_transport_knows(status: int, kind: str, retryable: bool) -> None:
    error = problem_of(
        lambda: parse_response(status, body({"error": {"message": "nope\nreally"}}), NOW, retry_after="7")
    )
    assert error.problem.kind == kind and error.problem.retryable is retryable
    assert error.problem.status == status
    assert "\n" not in error.problem.message
    if status == 429:
        assert error.problem.retry_after == 7.0
    # classify() hands the fetcher's own problem on unchanged.
    assert classify(error) == error.problem


def test_a_refused_device_credential_says_what_to_do() -> None:
    error = problem_of(lambda: parse_response(401, b"", NOW))
    message = error.problem.message
    assert "device credential" in message and "register this computer" in message
    assert f"{KEYRING_SERVICE} / {TOKEN_KEYRING_USERNAME}" in message


# ---------------------------------------------------------------------------------------------------
# Expiry maths
# ---------------------------------------------------------------------------------------------------


def test_a_secret_is_usable_only_with_more_than_the_margin_left() -> None:
    secret = ClientSecret(SECRET, NOW + 120)
    assert secret.refresh_at(60) == NOW + 60
    assert secret.usable(NOW, 60)
    assert secret.usable(NOW + 59.9, 60)
    assert not secret.usable(NOW + 60, 60)
    assert not secret.usable(NOW + 200, 0)


# ---------------------------------------------------------------------------------------------------
# Request and addresses
# ---------------------------------------------------------------------------------------------------


def test_the_request_carries_the_device_credential_as_a_bearer_token_and_no_session_choice() -> None:
    request = build_request(TOKEN_URL, f"  {CREDENTIAL}\n")
    assert request.headers["Authorization"] == f"Bearer {CREDENTIAL}"
    assert json.loads(request.body) == {}
    assert CREDENTIAL not in repr(request)


@pytest.mark.parametrize("credential", ["", "  ", "two words", "caf\u00e9"])
def test_a_credential_that_cannot_be_a_header_is_refused(credential: str) -> None:
    with pytest.raises(ValueError, match="device credential"):
        build_request(TOKEN_URL, credential)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("", "empty"),
        ("ftp://tokens.example.com/x", "https://"),
        ("http://tokens.example.com/x", "must use https://"),
        ("https://user:pw@tokens.example.com/x", "user name or password"),
    ],
)
def test_token_urls_that_would_leak_the_credential_are_refused(url: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        check_token_url(url)


def test_http_is_allowed_to_this_computer_only() -> None:
    assert check_token_url(" http://127.0.0.1:8787/v1/realtime/client_secrets ").startswith("http://127")
    assert check_token_url("http://localhost:1/x") == "http://localhost:1/x"


def test_the_credential_comes_from_the_environment_or_the_keyring(file_keyring: FileKeyring) -> None:
    assert lookup_token_credential({TOKEN_CREDENTIAL_ENV: f" {CREDENTIAL} "}).credential == CREDENTIAL
    missing = lookup_token_credential({})
    assert missing.credential is None and missing.reason is not None
    assert TOKEN_CREDENTIAL_ENV in missing.reason
    keyring.set_password(KEYRING_SERVICE, TOKEN_KEYRING_USERNAME, CREDENTIAL)
    found = lookup_token_credential({})
    assert (found.credential, found.source) == (CREDENTIAL, "keyring")
    assert CREDENTIAL not in repr(found)


# ---------------------------------------------------------------------------------------------------
# The httpx adapter
# ---------------------------------------------------------------------------------------------------


def source_with(handler: Callable[[httpx.Request], httpx.Response], **kwargs: float) -> ClientSecretSource:
    return ClientSecretSource(
        TOKEN_URL, CREDENTIAL, clock=lambda: NOW, transport=httpx.MockTransport(handler), **kwargs
    )


async def test_each_connection_gets_a_new_secret_and_nothing_secret_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"value": f"{SECRET}{len(seen)}", "expires_at": NOW + 600})

    source = source_with(answer)
    with caplog.at_level(logging.DEBUG):
        first = await source.headers()
        second = await source.headers()
    assert first == {"Authorization": f"Bearer {SECRET}1"}
    assert second == {"Authorization": f"Bearer {SECRET}2"}
    assert source.fetched == 2 and source.last_expires_at == NOW + 600
    assert [r.headers["authorization"] for r in seen] == [f"Bearer {CREDENTIAL}"] * 2
    assert all(r.method == "POST" and str(r.url) == TOKEN_URL for r in seen)
    assert SECRET not in caplog.text and CREDENTIAL not in caplog.text
    assert CREDENTIAL not in repr(source)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectTimeout("slow"), "timeout"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.ConnectError("connection refused"), "refused"),
        (httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED]"), "tls"),
        (httpx.RemoteProtocolError("garbage"), "network"),
    ],
)
async def test_network_failures_are_retryable_problems(exc: Exception, kind: str) -> None:
    def fail(_request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(CredentialUnavailable) as caught:
        await source_with(fail).fetch()
    assert caught.value.problem.kind == kind and caught.value.problem.retryable
    assert "tokens.example.com" in caught.value.problem.message


async def test_a_redirect_is_not_followed_with_the_credential() -> None:
    calls: list[str] = []

    def redirect(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(302, headers={"Location": "https://elsewhere.example.net/steal"})

    with pytest.raises(CredentialUnavailable) as caught:
        await source_with(redirect).fetch()
    assert calls == [TOKEN_URL]
    assert not caught.value.problem.retryable and "redirects" in caught.value.problem.message


def test_the_source_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="margin"):
        ClientSecretSource(TOKEN_URL, CREDENTIAL, margin=-1)
    with pytest.raises(ValueError, match="https"):
        ClientSecretSource("http://tokens.example.com/x", CREDENTIAL)


# ---------------------------------------------------------------------------------------------------
# The launch plan
# ---------------------------------------------------------------------------------------------------


def test_with_a_token_service_no_api_key_is_needed_or_used(
    env: dict[str, str], file_keyring: FileKeyring
) -> None:
    keyring.set_password(KEYRING_SERVICE, "api-key", "sk-should-not-be-used")
    environ = {
        **env,
        "HELPDESK_VOICE_BACKEND": "openai",
        "HELPDESK_VOICE_ENDPOINT_TOKEN_URL": TOKEN_URL,
        TOKEN_CREDENTIAL_ENV: CREDENTIAL,
    }
    plan = plan_from_settings(load_settings(None, environ), environ)
    assert plan.endpoint is not None and plan.endpoint.kind == "openai"
    assert plan.endpoint.headers == {}
    assert isinstance(plan.endpoint.credentials, ClientSecretSource)
    assert plan.endpoint.url.startswith("wss://api.openai.com/v1/realtime?model=")
    assert "sk-should-not-be-used" not in repr(plan) and CREDENTIAL not in repr(plan.endpoint)


def test_azure_with_a_token_service_sends_no_api_key_header(env: dict[str, str]) -> None:
    environ = {
        **env,
        "HELPDESK_VOICE_BACKEND": "azure",
        "HELPDESK_VOICE_ENDPOINT_AZURE_RESOURCE": "contoso",
        "HELPDESK_VOICE_ENDPOINT_AZURE_DEPLOYMENT": "realtime",
        "HELPDESK_VOICE_ENDPOINT_TOKEN_URL": TOKEN_URL,
        TOKEN_CREDENTIAL_ENV: CREDENTIAL,
    }
    plan = plan_from_settings(load_settings(None, environ), environ)
    assert plan.endpoint is not None and plan.endpoint.headers == {}
    assert plan.endpoint.credentials is not None


def test_the_rules_do_not_ask_for_an_api_key_when_a_token_service_is_set(env: dict[str, str]) -> None:
    values = dict(load_settings(None, {**env, "HELPDESK_VOICE_BACKEND": "openai"}).values)
    assert [p.key for p in cross_field_problems(values, False)] == [API_KEY_FIELD]
    values["endpoint.token_url"] = TOKEN_URL
    assert cross_field_problems(values, False) == []


def test_a_token_service_without_a_device_credential_is_refused_with_where_to_put_it(
    env: dict[str, str], file_keyring: FileKeyring
) -> None:
    environ = {**env, "HELPDESK_VOICE_BACKEND": "openai", "HELPDESK_VOICE_ENDPOINT_TOKEN_URL": TOKEN_URL}
    with pytest.raises(LaunchError, match=TOKEN_CREDENTIAL_ENV):
        plan_from_settings(load_settings(None, environ), environ)


def test_the_keyrings_credential_goes_only_to_a_token_service_from_the_settings(
    env: dict[str, str], file_keyring: FileKeyring
) -> None:
    keyring.set_password(KEYRING_SERVICE, TOKEN_KEYRING_USERNAME, CREDENTIAL)
    environ = {**env, "HELPDESK_VOICE_BACKEND": "openai", "HELPDESK_VOICE_ENDPOINT_TOKEN_URL": TOKEN_URL}
    with pytest.raises(LaunchError, match="only sent to the token service chosen in Settings"):
        plan_from_settings(load_settings(None, environ), environ)
    user = env["HELPDESK_VOICE_CONFIG_DIR"]
    with open(f"{user}/settings.toml", "w", encoding="utf-8") as handle:
        handle.write(f'backend = "openai"\n[endpoint]\ntoken_url = "{TOKEN_URL}"\n')
    plan = plan_from_settings(load_settings(None, env), env)
    assert plan.endpoint is not None and plan.endpoint.credentials is not None


def test_a_plain_http_token_service_elsewhere_is_refused(env: dict[str, str]) -> None:
    environ = {
        **env,
        "HELPDESK_VOICE_BACKEND": "openai",
        "HELPDESK_VOICE_ENDPOINT_TOKEN_URL": "http://tokens.example.com/x",
        TOKEN_CREDENTIAL_ENV: CREDENTIAL,
    }
    with pytest.raises(LaunchError, match="must use https://") as caught:
        plan_from_settings(load_settings(None, environ), environ)
    assert caught.value.usage


def test_without_a_token_service_the_api_key_path_is_unchanged(env: dict[str, str]) -> None:
    environ = {**env, "HELPDESK_VOICE_BACKEND": "openai", API_KEY_ENV: "sk-test-0123456789"}
    plan = plan_from_settings(load_settings(None, environ), environ)
    assert plan.endpoint is not None and plan.endpoint.credentials is None
    assert plan.endpoint.headers == {"Authorization": "Bearer sk-test-0123456789"}


def test_no_secret_is_fetched_for_a_plain_ws_server_elsewhere(env: dict[str, str]) -> None:
    environ = {
        **env,
        "HELPDESK_VOICE_BACKEND": "custom",
        "HELPDESK_VOICE_ENDPOINT_URL": "ws://realtime.example.com/v1/realtime",
        "HELPDESK_VOICE_ENDPOINT_TOKEN_URL": TOKEN_URL,
        TOKEN_CREDENTIAL_ENV: CREDENTIAL,
    }
    plan = plan_from_settings(load_settings(None, environ), environ)
    assert plan.endpoint is not None and plan.endpoint.credentials is None and plan.endpoint.headers == {}
    assert any("endpoint.token_url is not used" in warning for warning in plan.warnings)


# ---------------------------------------------------------------------------------------------------
# The transport with a credential source
# ---------------------------------------------------------------------------------------------------


class FixedSource:
    """Hands out ``ek_<n>`` secrets, or fails with ``failure`` while it is set."""

    def __init__(self) -> None:
        self.count = 0
        self.failure: CredentialUnavailable | None = None

    async def headers(self) -> dict[str, str]:
        if self.failure is not None:
            raise self.failure
        self.count += 1
        return {"Authorization": f"Bearer ek_secret_{self.count}"}


class Events:
    def __init__(self) -> None:
        self.events: list[ServerEvent] = []
        self.problems: list[tuple[ConnectionProblem, float | None]] = []

    async def on_connected(self, reconnected: bool) -> None:
        pass

    async def on_event(self, event: ServerEvent) -> None:
        self.events.append(event)

    async def on_disconnected(self, problem: ConnectionProblem, retry_in: float | None) -> None:
        self.problems.append((problem, retry_in))


async def test_the_transport_sends_each_fetched_secret_and_scrubs_it_from_server_text() -> None:
    seen: list[str] = []

    async def echo_it_back(ws: ServerConnection) -> None:
        given = ws.request.headers["Authorization"] if ws.request is not None else ""
        seen.append(given)
        error = {
            "type": "error",
            "event_id": "e1",
            "error": {"type": "invalid_request_error", "message": given},
        }
        await ws.send(json.dumps(error))
        await ws.close(1011)

    source = FixedSource()
    events = Events()
    backoff = BackoffPolicy(initial=0.01, maximum=0.05, jitter=0.0)
    async with serve(echo_it_back, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        endpoint = Endpoint(f"ws://127.0.0.1:{port}/", {}, "custom", credentials=source)
        transport = RealtimeTransport(endpoint, events, backoff=backoff, max_attempts=2)
        await asyncio.wait_for(transport.run(), 5)
    assert seen == ["Bearer ek_secret_1", "Bearer ek_secret_2"]
    texts = [event.message for event in events.events if isinstance(event, ErrorEvent)]
    assert texts and all("ek_secret" not in text for text in texts)


async def test_a_failing_credential_source_is_reported_and_retried_like_a_refused_connection() -> None:
    source = FixedSource()
    source.failure = problem_of(lambda: parse_response(503, b"", NOW))
    events = Events()
    backoff = BackoffPolicy(initial=0.01, maximum=0.05, jitter=0.0)
    endpoint = Endpoint("ws://127.0.0.1:9/", {}, "custom", credentials=source)
    transport = RealtimeTransport(endpoint, events, backoff=backoff, max_attempts=3)
    problem = await asyncio.wait_for(transport.run(), 5)
    assert problem is not None and problem.kind == "server_error"
    assert [retry_in is None for _, retry_in in events.problems] == [False, False, True]
    # probe() (the self-test) asks the source too, and says the same.
    assert await RealtimeTransport(endpoint, events).probe() == problem


def test_an_admins_script_stores_and_removes_the_device_credential_from_standard_input(
    env: dict[str, str], tmp_path: Path
) -> None:
    import json
    import subprocess
    import sys

    from tests.file_keyring import KEYRING_FILE_ENV

    store = tmp_path / "keyring.json"
    environ = {
        **os.environ,
        **env,
        "PYTHON_KEYRING_BACKEND": "tests.file_keyring.FileKeyring",
        KEYRING_FILE_ENV: str(store),
    }

    def run(*args: str, given: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app", "config", *args],
            input=given,
            capture_output=True,
            text=True,
            env=environ,
            timeout=60,
            cwd=Path(__file__).resolve().parent.parent,  # where tests.file_keyring is found
        )

    stored = run("set-token-credential", given="laptop-credential-0123456789abcdef\n")
    assert stored.returncode == 0, stored.stderr
    assert "laptop-credential" not in stored.stdout + stored.stderr  # never echoed
    assert json.loads(store.read_text("utf-8")) == {
        "helpdesk-voice\0token_service": "laptop-credential-0123456789abcdef"
    }
    assert run("set-token-credential", given="").returncode == 2  # nothing typed: a usage error
    removed = run("forget-token-credential")
    assert removed.returncode == 0 and "removed" in removed.stderr
    assert json.loads(store.read_text("utf-8")) == {}
