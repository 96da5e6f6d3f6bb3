"""Company sign-in to the token service (HTTP Negotiate / Kerberos), against a real MIT KDC.

The realm is Debian's krb5-kdc run privately (tests/kerberos_realm.py); users sign in with the real
``kinit``; the laptop side is the app's own launch plan, ClientSecretSource and RealtimeTransport
with pyspnego over GSSAPI, the service side the reference token service under uvicorn with the
realm's keytab. Not exercised here: Windows' SSPI and Active Directory (the same pyspnego call on
Windows), and a Mac's Heimdal.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.server import serve

from app.config import load_settings
from app.launch import LaunchError, plan_from_settings
from app.realtime import API_KEY_ENV, Endpoint, RealtimeTransport
from app.realtime.client_secret import TOKEN_CREDENTIAL_ENV, ClientSecretSource
from app.realtime.errors import CredentialUnavailable
from app.realtime.integrated_auth import IntegratedSignIn, explain_failure
from app.selftest import check_keyring
from app.token_service.negotiate import principal_allowed
from app.token_service.service import (
    ServiceConfig,
    TokenServiceConfigError,
    create_app,
    hash_credential,
    load_config,
)
from tests.kerberos_realm import REALM, SERVICE_HOST, Realm
from tests.test_token_service_e2e import COMPANY_KEY, FAST, LAPTOP, Recorder, Upstream, serving, wait_until
from tests.test_transport import running

ALLOWED = (f"alice@{REALM}", f"carol@{REALM}", "*@OTHER.TEST")


@pytest.fixture(autouse=True)
def no_machine_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.config.system_policy_path", lambda: tmp_path / "no-machine-policy.toml")


# ---------------------------------------------------------------------------------------------------
# Pure parts
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "retryable", "says"),
    [
        (
            "Minor (2529639053): No Kerberos credentials available (default cache: FILE:/x)",
            False,
            "not signed in",
        ),
        ("Ticket expired", False, "not signed in"),
        ("SEC_E_NO_CREDENTIALS", False, "not signed in"),
        ("Server HTTP/tokens.corp@CORP not found in Kerberos database", False, "HTTP/tokens.corp"),
        ("SEC_E_TARGET_UNKNOWN (0x80090303)", False, "HTTP/tokens.corp"),
        ("Cannot contact any KDC for realm 'CORP'", True, "cannot be reached"),
        ("Clock skew too great", True, "clock"),
        ("Something nobody foresaw", False, "Something nobody foresaw"),
    ],
)
def test_kerberos_failures_become_sentences_a_user_can_act_on(words: str, retryable: bool, says: str) -> None:
    again, sentence = explain_failure("tokens.corp", words)
    assert again is retryable
    assert says in sentence


def test_the_allow_list_takes_exact_principals_and_whole_realms() -> None:
    allow = ("alice@CORP.EXAMPLE", "*@LAB.EXAMPLE")
    assert principal_allowed("alice@CORP.EXAMPLE", allow)
    assert principal_allowed("anyone@LAB.EXAMPLE", allow)
    assert not principal_allowed("bob@CORP.EXAMPLE", allow)
    assert not principal_allowed("alice@CORP.EXAMPLE.EVIL", allow)
    assert not principal_allowed("alice", ("*@", "alice@"))


def test_the_service_reads_its_keytab_and_allow_list_from_file_and_environment(tmp_path: Path) -> None:
    config_file = tmp_path / "service.toml"
    config_file.write_text(f'keytab = "{tmp_path}/http.keytab"\nkerberos_allow = ["*@CORP.EXAMPLE"]\n')
    environ = {"HELPDESK_TOKEN_SERVICE_CONFIG": str(config_file), "OPENAI_API_KEY": "sk-x"}
    config = load_config(environ)
    assert config.keytab == f"{tmp_path}/http.keytab" and config.kerberos_allow == ("*@CORP.EXAMPLE",)
    environ["HELPDESK_TOKEN_SERVICE_KERBEROS_ALLOW"] = "alice@CORP.EXAMPLE, bob@CORP.EXAMPLE"
    assert load_config(environ).kerberos_allow == ("alice@CORP.EXAMPLE", "bob@CORP.EXAMPLE")
    with pytest.raises(TokenServiceConfigError, match="no keytab"):
        load_config({"HELPDESK_TOKEN_SERVICE_KERBEROS_ALLOW": "a@B", "OPENAI_API_KEY": "sk-x"})
    with pytest.raises(TokenServiceConfigError, match="user@REALM"):
        load_config({**environ, "HELPDESK_TOKEN_SERVICE_KERBEROS_ALLOW": "alice"})
    # A keytab the service cannot read stops it at start, saying which file.
    with pytest.raises(TokenServiceConfigError, match="cannot read the keytab"):
        create_app(config)


def test_a_laptop_with_company_sign_in_needs_no_key_and_no_device_credential(
    env: dict[str, str], file_keyring: object
) -> None:
    environ = {
        **env,
        "HELPDESK_VOICE_BACKEND": "custom",
        "HELPDESK_VOICE_ENDPOINT_URL": "wss://realtime.example.com/v1/realtime",
        "HELPDESK_VOICE_ENDPOINT_TOKEN_URL": "https://tokens.example.com/v1/realtime/client_secrets",
    }
    with pytest.raises(LaunchError, match="no device credential"):
        plan_from_settings(load_settings(None, environ), environ)
    environ["HELPDESK_VOICE_ENDPOINT_TOKEN_AUTH"] = "integrated"
    plan = plan_from_settings(load_settings(None, environ), environ)
    assert plan.endpoint is not None and plan.endpoint.headers == {}
    assert isinstance(plan.endpoint.credentials, ClientSecretSource)


# ---------------------------------------------------------------------------------------------------
# Against the real KDC and the real token service
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def realm(kerberos_realm: Realm) -> Realm:
    return kerberos_realm


def signed_in_as(realm: Realm, user: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process is now a laptop where ``user`` signed in (None: where nobody did)."""
    if user is not None:
        realm.sign_in(user)
    for name, value in realm.environment(user).items():
        monkeypatch.setenv(name, value)


@dataclass
class KerberosStack:
    upstream: Upstream
    realtime_url: str
    token_url: str


@pytest.fixture
async def stack(realm: Realm) -> AsyncIterator[KerberosStack]:
    upstream = Upstream()
    async with (
        serving(upstream.http_app()) as upstream_port,
        serve(upstream.realtime, "127.0.0.1", 0, process_request=upstream.check) as realtime,
    ):
        config = ServiceConfig(
            upstream_url=f"http://127.0.0.1:{upstream_port}/v1/realtime/client_secrets",
            api_key=COMPANY_KEY,
            devices={hash_credential(LAPTOP).removeprefix("sha256:"): "laptop-1"},
            keytab=str(realm.keytab),
            kerberos_allow=ALLOWED,
            rate_per_minute=100,
        )
        async with serving(create_app(config)) as service_port:
            realtime_port = next(iter(realtime.sockets)).getsockname()[1]
            yield KerberosStack(
                upstream,
                f"ws://127.0.0.1:{realtime_port}/v1/realtime",
                # The name the service principal has: HTTP/localhost.
                f"http://{SERVICE_HOST}:{service_port}/v1/realtime/client_secrets",
            )


def laptop_endpoint(stack: KerberosStack, env: dict[str, str]) -> Endpoint:
    """The endpoint the app's launch plan makes with company sign-in and nothing else."""
    environ = {
        **env,
        "HELPDESK_VOICE_BACKEND": "custom",
        "HELPDESK_VOICE_ENDPOINT_URL": stack.realtime_url,
        "HELPDESK_VOICE_ENDPOINT_TOKEN_URL": stack.token_url,
        "HELPDESK_VOICE_ENDPOINT_TOKEN_AUTH": "integrated",
    }
    assert API_KEY_ENV not in environ and TOKEN_CREDENTIAL_ENV not in environ
    plan = plan_from_settings(load_settings(None, environ), environ)
    assert plan.endpoint is not None and plan.endpoint.credentials is not None
    return plan.endpoint


Laptop = Callable[[str | None], tuple[RealtimeTransport, Recorder]]


@pytest.fixture
def laptop(
    realm: Realm,
    stack: KerberosStack,
    env: dict[str, str],
    file_keyring: object,
    monkeypatch: pytest.MonkeyPatch,
) -> Laptop:
    """The app's transport on a laptop where the given user signed in (None: nobody did)."""

    def signed_in(user: str | None) -> tuple[RealtimeTransport, Recorder]:
        signed_in_as(realm, user, monkeypatch)
        recorder = Recorder()
        return RealtimeTransport(laptop_endpoint(stack, env), recorder, backoff=FAST), recorder

    return signed_in


async def test_a_signed_in_user_connects_with_a_secret_and_nothing_stored_on_the_laptop(
    laptop: Laptop, stack: KerberosStack
) -> None:
    transport, recorder = laptop("alice")
    async with running(transport, stop_within_s=5.0):
        await wait_until(lambda: transport.connected and bool(recorder.events), what="the session")
        assert await transport.rollover()  # a fresh Negotiate token for the next secret
        await wait_until(lambda: len(recorder.connected) == 2 and transport.connected, what="the rollover")
    assert stack.upstream.admitted == ["ek_standin_0", "ek_standin_1"]
    assert recorder.problems == []


async def test_a_user_the_service_does_not_allow_is_told_so_once(
    laptop: Laptop, stack: KerberosStack
) -> None:
    transport, _ = laptop("bob")
    problem = await asyncio.wait_for(transport.run(), 10)
    assert problem is not None and problem.kind == "forbidden" and not problem.retryable
    assert f"did not accept your company sign-in as bob@{REALM}" in problem.message
    assert f"bob@{REALM} is not allowed" in problem.message  # the service's own words
    assert stack.upstream.minted == {}


async def test_nobody_signed_in_is_a_clear_message_and_the_service_is_not_asked(
    laptop: Laptop, stack: KerberosStack
) -> None:
    transport, _ = laptop(None)
    problem = await asyncio.wait_for(transport.run(), 10)
    assert problem is not None and not problem.retryable
    assert "not signed in to the company domain" in problem.message and "kinit" in problem.message
    assert stack.upstream.minted == {}


async def test_a_token_is_good_once_and_a_bad_one_gets_the_negotiate_challenge(
    realm: Realm, stack: KerberosStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed_in_as(realm, "carol", monkeypatch)
    header = await asyncio.to_thread(IntegratedSignIn().authorization, SERVICE_HOST)
    async with httpx.AsyncClient() as client:
        first = await client.post(stack.token_url, headers={"Authorization": header}, content=b"{}")
        replayed = await client.post(stack.token_url, headers={"Authorization": header}, content=b"{}")
        garbage = await client.post(stack.token_url, headers={"Authorization": "Negotiate bm90IGEgdG9rZW4="})
        device = await client.post(stack.token_url, headers={"Authorization": f"Bearer {LAPTOP}"})
    assert first.status_code == 200 and first.json()["value"].startswith("ek_standin_")
    assert replayed.status_code == 401 and replayed.headers["www-authenticate"] == "Negotiate"
    assert garbage.status_code == 401 and "not accepted" in garbage.json()["error"]["message"]
    assert device.status_code == 200  # device credentials keep working beside sign-in


async def test_a_domain_that_cannot_be_reached_is_retried(
    realm: Realm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed_in_as(realm, "carol", monkeypatch)
    # The same realm, its KDC now somewhere nothing listens: the cached sign-in holds no ticket for
    # this service yet, so one must be asked for.
    dead = realm.config.read_text().replace(f"127.0.0.1:{realm.port}", "127.0.0.1:9")
    (tmp_path / "krb5.conf").write_text(dead)
    monkeypatch.setenv("KRB5_CONFIG", str(tmp_path / "krb5.conf"))
    source = ClientSecretSource(f"http://{SERVICE_HOST}:9/x", IntegratedSignIn())
    with pytest.raises(CredentialUnavailable) as failed:
        await source.fetch()
    assert failed.value.problem.retryable
    assert "sign-in servers cannot be reached" in failed.value.problem.message


def test_selftest_says_who_is_signed_in_or_why_not(
    realm: Realm, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    environ = {
        **env,
        "HELPDESK_VOICE_BACKEND": "openai",
        "HELPDESK_VOICE_ENDPOINT_TOKEN_URL": f"https://{SERVICE_HOST}/v1/realtime/client_secrets",
        "HELPDESK_VOICE_ENDPOINT_TOKEN_AUTH": "integrated",
    }
    settings = load_settings(None, environ)
    signed_in_as(realm, "alice", monkeypatch)
    check = check_keyring(settings, environ)
    assert check.ok and f"alice@{REALM}" in check.detail
    signed_in_as(realm, None, monkeypatch)
    check = check_keyring(settings, environ)
    assert not check.ok and "not signed in" in check.detail
