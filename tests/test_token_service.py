"""The reference token service (app/token_service/): configuration, allow-list, rate limit, upstream.

The ASGI app is driven in-process through httpx's ASGI transport, its upstream through httpx's
MockTransport; tests/test_token_service_e2e.py runs it for real on loopback.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.token_service.__main__ import main
from app.token_service.service import (
    CONFIG_ENV,
    RateLimiter,
    ServiceConfig,
    TokenServiceConfigError,
    create_app,
    hash_credential,
    load_config,
    new_credential,
)

COMPANY_KEY = "sk-company-0123456789SECRET"
DEVICE = "device-credential-0123456789abcdef"
UPSTREAM = "https://api.openai.com/v1/realtime/client_secrets"


def config(**overrides: Any) -> ServiceConfig:
    base = ServiceConfig(
        upstream_url=UPSTREAM,
        api_key=COMPANY_KEY,
        devices={hash_credential(DEVICE).removeprefix("sha256:"): "laptop-1"},
        rate_per_minute=2,
    )
    return replace(base, **overrides)


def test_rate_limiter_is_a_sliding_window_per_key() -> None:
    limiter = RateLimiter(2)
    assert limiter.check("a", 0.0) is None
    assert limiter.check("a", 10.0) is None
    assert limiter.check("a", 20.0) == pytest.approx(40.0)
    assert limiter.check("b", 20.0) is None  # another device has its own allowance
    assert limiter.check("a", 60.0) is None  # the grant at 0 s has left the window
    assert limiter.check("a", 61.0) == pytest.approx(9.0)


def test_credentials_are_random_and_only_their_hash_is_kept() -> None:
    one, two = new_credential(), new_credential()
    assert one != two and len(one) >= 43
    digest = hash_credential(one)
    assert digest.startswith("sha256:") and len(digest) == 7 + 64 and one not in digest


def test_configuration_from_toml_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "service.toml"
    path.write_text(
        f'model = "gpt-realtime-mini"\nvoice = "marin"\nrate_per_minute = 4\n'
        f'[devices]\n"laptop-1" = "{hash_credential(DEVICE)}"\n',
        encoding="utf-8",
    )
    loaded = load_config(
        {
            CONFIG_ENV: str(path),
            "HELPDESK_TOKEN_SERVICE_API_KEY": COMPANY_KEY,
            "HELPDESK_TOKEN_SERVICE_PORT": "9000",
        }
    )
    assert (loaded.model, loaded.voice, loaded.rate_per_minute, loaded.port) == (
        "gpt-realtime-mini",
        "marin",
        4,
        9000,
    )
    assert loaded.upstream_url == UPSTREAM and list(loaded.devices.values()) == ["laptop-1"]
    assert COMPANY_KEY not in repr(loaded)


@pytest.mark.parametrize(
    ("text", "environ", "words"),
    [
        ("", {}, "no API key"),
        (f'api_key = "{COMPANY_KEY}"\n', {"OPENAI_API_KEY": COMPANY_KEY}, "must not be in the file"),
        ('[devices]\nx = "md5:abc"\n', {"OPENAI_API_KEY": COMPANY_KEY}, "sha256:<64 hex digits>"),
        ('upstream_url = "http://example.com/x"\n', {"OPENAI_API_KEY": COMPANY_KEY}, "https://"),
        ('upstream_auth = "basic"\n', {"OPENAI_API_KEY": COMPANY_KEY}, "upstream_auth"),
        ("rate_per_minute = 0\n", {"OPENAI_API_KEY": COMPANY_KEY}, "rate_per_minute must be from 1"),
        ("model = [\n", {"OPENAI_API_KEY": COMPANY_KEY}, "not valid TOML"),
    ],
)
def test_configuration_that_cannot_work_is_refused(
    tmp_path: Path, text: str, environ: dict[str, str], words: str
) -> None:
    path = tmp_path / "service.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TokenServiceConfigError, match=words):
        load_config({CONFIG_ENV: str(path), **environ})


def test_devices_from_the_environment() -> None:
    loaded = load_config(
        {"OPENAI_API_KEY": COMPANY_KEY, "HELPDESK_TOKEN_SERVICE_DEVICES": f"a={hash_credential(DEVICE)}"}
    )
    assert list(loaded.devices.values()) == ["a"]


async def post(
    app_config: ServiceConfig, upstream: httpx.MockTransport, credential: str | None
) -> httpx.Response:
    app = create_app(app_config, upstream_transport=upstream)
    headers = {} if credential is None else {"Authorization": f"Bearer {credential}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://service") as client:
        return await client.post("/v1/realtime/client_secrets", headers=headers, content=b'{"session": {}}')


def answering(status: int, payload: object, seen: list[httpx.Request] | None = None) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, json=payload, headers={"Retry-After": "9"} if status == 429 else {})

    return httpx.MockTransport(handler)


async def test_a_registered_device_gets_the_upstreams_answer_made_with_the_company_key() -> None:
    seen: list[httpx.Request] = []
    secret = {"value": "ek_1", "expires_at": 2_000_000_000, "session": {"type": "realtime"}}
    answer = await post(config(voice="marin"), answering(200, secret, seen), DEVICE)
    assert answer.status_code == 200 and answer.json() == secret
    (request,) = seen
    assert str(request.url) == UPSTREAM and request.headers["authorization"] == f"Bearer {COMPANY_KEY}"
    assert json.loads(request.content)["session"] == {
        "type": "realtime",
        "model": "gpt-realtime",
        "audio": {"output": {"voice": "marin"}},
    }


async def test_azure_upstreams_get_the_api_key_header() -> None:
    seen: list[httpx.Request] = []
    await post(config(upstream_auth="api-key"), answering(200, {}, seen), DEVICE)
    assert seen[0].headers["api-key"] == COMPANY_KEY and "authorization" not in seen[0].headers


@pytest.mark.parametrize("credential", [None, "", "someone-else", DEVICE + "x"])
async def test_unknown_devices_are_refused_without_asking_upstream(credential: str | None) -> None:
    seen: list[httpx.Request] = []
    answer = await post(config(), answering(200, {}, seen), credential)
    assert answer.status_code == 401 and seen == []
    assert "not registered" in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    ("upstream_status", "status", "retry_after"), [(401, 502, None), (500, 502, None), (429, 503, "9")]
)
async def test_upstream_failures_do_not_pass_the_upstreams_words_on(
    upstream_status: int, status: int, retry_after: str | None
) -> None:
    answer = await post(
        config(), answering(upstream_status, {"error": {"message": "org-secret-name"}}), DEVICE
    )
    assert answer.status_code == status and "org-secret-name" not in answer.text
    assert answer.headers.get("retry-after") == retry_after


async def test_an_unreachable_upstream_is_a_502() -> None:
    def fail(_request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    answer = await post(config(), httpx.MockTransport(fail), DEVICE)
    assert answer.status_code == 502


def test_new_device_prints_a_credential_and_its_hash(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new-device", "laptop-7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    credential = lines[1].strip()
    assert lines[3].strip() == f'"laptop-7" = "{hash_credential(credential)}"'


def test_the_service_refuses_to_start_without_configuration(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("OPENAI_API_KEY", "HELPDESK_TOKEN_SERVICE_API_KEY", CONFIG_ENV):
        monkeypatch.delenv(name, raising=False)
    assert main([]) == 2
    assert "no API key" in capsys.readouterr().err
