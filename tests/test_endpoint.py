"""Endpoint URLs and headers, secret-free reprs, and where the API key comes from."""

from __future__ import annotations

from collections.abc import Iterator

import keyring
import keyring.errors
import pytest
from keyring.backend import KeyringBackend

from app.realtime import (
    API_KEY_ENV,
    KEYRING_SERVICE,
    KEYRING_USERNAME,
    Endpoint,
    KeyStoreError,
    azure_endpoint,
    custom_endpoint,
    endpoint_from_url,
    lookup_api_key,
    openai_endpoint,
    redact_url,
    resolve_api_key,
    store_api_key,
)
from tests.file_keyring import FileKeyring

KEY = "sk-proj-TESTKEY1234567890abcdef"


def _shows_no_key(endpoint: Endpoint) -> None:
    for text in (repr(endpoint), str(endpoint), f"{endpoint}", endpoint.display_url):
        assert KEY not in text
        assert "TESTKEY" not in text


# ---------------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------------


def test_openai_endpoint_url_header_and_repr() -> None:
    endpoint = openai_endpoint("gpt-realtime", KEY)
    assert endpoint.url == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    assert endpoint.headers == {"Authorization": f"Bearer {KEY}"}
    assert endpoint.kind == "openai"
    _shows_no_key(endpoint)
    assert "gpt-realtime" in repr(endpoint)
    assert "Authorization" in repr(endpoint)


def test_openai_endpoint_keeps_base_query_and_replaces_model() -> None:
    endpoint = openai_endpoint("gpt-realtime-mini", f"  {KEY}\n", "ws://127.0.0.1:8080/rt?model=old&x=1")
    assert endpoint.url == "ws://127.0.0.1:8080/rt?x=1&model=gpt-realtime-mini"
    # A pasted key with a trailing newline must not end up in the header.
    assert endpoint.headers["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize(
    "resource",
    [
        "contoso-voice",
        "https://contoso-voice.openai.azure.com",
        "https://contoso-voice.openai.azure.com/",
        "wss://Contoso-Voice.openai.azure.com/openai/realtime?api-version=2024-10-01",
    ],
)
def test_azure_endpoint_forms(resource: str) -> None:
    endpoint = azure_endpoint(resource, "my-realtime", KEY)
    assert endpoint.url == "wss://contoso-voice.openai.azure.com/openai/v1/realtime?model=my-realtime"
    assert endpoint.headers == {"api-key": KEY}
    assert endpoint.kind == "azure"
    _shows_no_key(endpoint)


def test_azure_endpoint_accepts_cognitiveservices_host() -> None:
    endpoint = azure_endpoint("https://contoso.cognitiveservices.azure.com", "rt", KEY)
    assert endpoint.url == "wss://contoso.cognitiveservices.azure.com/openai/v1/realtime?model=rt"


@pytest.mark.parametrize(
    ("resource", "deployment", "fragment"),
    [
        ("", "rt", "resource is empty"),
        ("contoso voice", "rt", "not an Azure resource name"),
        ("https://evil.example.com", "rt", "not an Azure OpenAI host"),
        ("http://contoso.openai.azure.com", "rt", "https:// or wss://"),
        ("contoso", " ", "deployment name is empty"),
    ],
)
def test_azure_endpoint_rejects_bad_input(resource: str, deployment: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        azure_endpoint(resource, deployment, KEY)


def test_custom_endpoint_with_and_without_key() -> None:
    with_key = custom_endpoint("ws://127.0.0.1:9000/realtime?model=local", KEY)
    assert with_key.url == "ws://127.0.0.1:9000/realtime?model=local"
    assert with_key.headers == {"Authorization": f"Bearer {KEY}"}
    assert with_key.kind == "custom"
    _shows_no_key(with_key)
    without = custom_endpoint("wss://voice.example.com/rt", None)
    assert without.headers == {}
    assert custom_endpoint("wss://voice.example.com/rt", "").headers == {}


@pytest.mark.parametrize(
    ("url", "sent"),
    [
        ("wss://voice.example.com/rt", True),
        ("ws://127.0.0.1:9000/rt", True),
        ("ws://127.8.9.10:9000/rt", True),
        ("ws://localhost:9000/rt", True),
        ("ws://[::1]:9000/rt", True),
        ("ws://voice.example.com/rt", False),
        ("ws://10.0.0.5:9000/rt", False),
        ("ws://localhost.example.com/rt", False),
    ],
)
def test_the_key_goes_only_over_wss_or_to_this_computer(url: str, sent: bool) -> None:
    endpoint = custom_endpoint(url, KEY)
    assert (endpoint.headers == {"Authorization": f"Bearer {KEY}"}) is sent
    if sent:
        assert endpoint.notes == ()
    else:
        assert endpoint.headers == {}
        assert len(endpoint.notes) == 1 and "not encrypted" in endpoint.notes[0]
        assert "wss://" in endpoint.notes[0]
    _shows_no_key(endpoint)


def test_openai_over_plain_ws_is_refused_off_this_computer() -> None:
    with pytest.raises(ValueError, match="wss://"):
        openai_endpoint("gpt-realtime", KEY, "ws://proxy.example.com/v1/realtime")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("", "empty"),
        ("voice.example.com/rt", "full address"),
        ("https://voice.example.com/rt", "ws:// or wss://"),
        ("ftp://voice.example.com/rt", "ws:// or wss://"),
        ("ws://", "full address"),
        ("ws://host:99999/rt", "not a valid URL"),
        ("ws://user:pw@host/rt", "user name or password"),
        ("ws://host/rt#x", "fragment"),
        ("ws://host/r t", "spaces"),
    ],
)
def test_custom_endpoint_rejects_invalid_urls(url: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as info:
        custom_endpoint(url, KEY)
    assert KEY not in str(info.value)


@pytest.mark.parametrize("bad", ["sk-abc def", "sk-abc\r\nX-Evil: 1", "sk-ключ", "   "])
def test_unusable_keys_are_rejected_without_being_quoted(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        openai_endpoint("gpt-realtime", bad)
    assert bad.strip() == "" or bad not in str(info.value)
    assert "X-Evil" not in str(info.value)


def test_endpoint_from_url_recognises_openai() -> None:
    endpoint = endpoint_from_url("https://api.openai.com/v1/realtime?model=gpt-realtime", KEY)
    assert endpoint.kind == "openai"
    assert endpoint.url == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    assert endpoint.headers == {"Authorization": f"Bearer {KEY}"}
    bare = endpoint_from_url("wss://api.openai.com?model=gpt-realtime", KEY)
    assert bare.url == "wss://api.openai.com/v1/realtime?model=gpt-realtime"


def test_endpoint_from_url_recognises_azure() -> None:
    url = "wss://contoso.openai.azure.com/openai/v1/realtime?model=my-realtime"
    endpoint = endpoint_from_url(url, KEY)
    assert endpoint.kind == "azure"
    assert endpoint.url == url
    assert endpoint.headers == {"api-key": KEY}
    assert "Authorization" not in endpoint.headers


def test_endpoint_from_url_falls_back_to_custom() -> None:
    endpoint = endpoint_from_url("ws://localhost:8765/v1/realtime", None)
    assert endpoint.kind == "custom"
    assert endpoint.headers == {}


@pytest.mark.parametrize(
    ("url", "key", "fragment"),
    [
        ("wss://api.openai.com/v1/realtime", KEY, r"\?model="),
        ("wss://api.openai.com/v1/realtime?model=x", None, "needs an API key"),
        ("ws://api.openai.com/v1/realtime?model=x", KEY, "wss://"),
        ("https://contoso.openai.azure.com/", KEY, "no realtime path"),
        ("wss://contoso.openai.azure.com/openai/v1/realtime", KEY, r"\?model="),
        ("http://voice.example.com/rt", KEY, "ws:// or wss://"),
    ],
)
def test_endpoint_from_url_errors(url: str, key: str | None, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        endpoint_from_url(url, key)


def test_redact_url_masks_possible_tokens() -> None:
    shown = redact_url("wss://host.example/rt?model=m&token=abc123&api-version=2025")
    assert "abc123" not in shown
    assert "model=m" in shown
    assert "api-version=2025" in shown
    assert "token=***" in shown
    endpoint = Endpoint("wss://host.example/rt?access_token=abc123", {"X-Key": "abc123"}, "custom")
    assert "abc123" not in repr(endpoint)


# ---------------------------------------------------------------------------------------------------
# The API key: environment first, then the keyring
# ---------------------------------------------------------------------------------------------------


class LockedKeyring(KeyringBackend):
    priority = 1

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def get_password(self, service: str, username: str) -> str | None:
        raise keyring.errors.KeyringLocked("the login keyring is locked")

    def set_password(self, service: str, username: str, password: str) -> None:
        raise keyring.errors.PasswordSetError("the login keyring is locked")

    def delete_password(self, service: str, username: str) -> None:
        raise keyring.errors.PasswordDeleteError("locked")


@pytest.fixture
def locked_keyring() -> Iterator[LockedKeyring]:
    original = keyring.get_keyring()
    backend = LockedKeyring()
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(original)


def test_keyring_round_trip(file_keyring: FileKeyring) -> None:
    assert resolve_api_key({}) is None
    store_api_key(f"{KEY}\n")
    # Stored through the real keyring API into the file, and read back the same way.
    assert KEY in file_keyring.path.read_text("utf-8")
    assert keyring.get_password(KEYRING_SERVICE, KEYRING_USERNAME) == KEY
    lookup = lookup_api_key({})
    assert lookup.key == KEY
    assert lookup.source == "keyring"
    assert KEY not in repr(lookup)
    assert resolve_api_key({}) == KEY


def test_environment_beats_keyring(file_keyring: FileKeyring) -> None:
    file_keyring.set_password(KEYRING_SERVICE, KEYRING_USERNAME, "from-keyring")
    assert resolve_api_key({API_KEY_ENV: "from-env"}) == "from-env"
    assert lookup_api_key({API_KEY_ENV: "from-env"}).source == "environment"
    # An empty or blank variable is "not set", not "an empty key".
    assert resolve_api_key({API_KEY_ENV: "  "}) == "from-keyring"


def test_no_key_anywhere_gives_a_reason(file_keyring: FileKeyring) -> None:
    lookup = lookup_api_key({})
    assert lookup.key is None
    assert lookup.reason is not None
    assert API_KEY_ENV in lookup.reason


def test_keyring_errors_become_none_with_reason(locked_keyring: LockedKeyring) -> None:
    assert resolve_api_key({}) is None
    lookup = lookup_api_key({})
    assert lookup.key is None
    assert lookup.reason is not None
    assert "KeyringLocked" in lookup.reason
    assert "locked" in lookup.reason
    assert resolve_api_key({API_KEY_ENV: KEY}) == KEY  # the environment still works


def test_store_error_does_not_quote_the_key(locked_keyring: LockedKeyring) -> None:
    with pytest.raises(KeyStoreError) as info:
        store_api_key(KEY)
    assert KEY not in str(info.value)
    assert info.value.__cause__ is None
