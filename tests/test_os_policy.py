"""Policy from the OS's management tools (app/os_policy.py) as a layer under the policy file.

The real Windows registry and real macOS managed preferences are not reachable on the Linux test
machines: the registry is a fake with the same value types, and the managed preferences are real
plist files in a temporary folder.
"""

from __future__ import annotations

import plistlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from app import config, os_policy
from app.cli import main
from app.config import ConfigError, load_settings, save_user_setting
from app.os_policy import REG_DWORD, REG_MULTI_SZ, REG_SZ, OsPolicy
from tests.file_keyring import FileKeyring

KINDS = {setting.key: setting.kind for setting in config.SETTINGS.values()}
REG_BINARY = 3


class FakeRegistry:
    """The ``HKLM\\Software\\Policies\\HelpdeskVoice`` key: (name, data, type) as winreg gives them."""

    def __init__(
        self, values: Iterable[tuple[str, object, int]] | None, error: OSError | None = None
    ) -> None:
        self._values = None if values is None else list(values)
        self._error = error

    def values(self) -> Iterable[tuple[str, object, int]] | None:
        if self._error is not None:
            raise self._error
        return self._values


@pytest.fixture
def use_os_policy(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], OsPolicy]], None]:
    """Makes app.config see ``read()`` as this machine's OS-managed policy."""

    def use(read: Callable[[], OsPolicy]) -> None:
        monkeypatch.setattr(os_policy, "read_os_policy", lambda kinds: read())

    return use


def registry(*values: tuple[str, object, int]) -> Callable[[], OsPolicy]:
    return lambda: os_policy.read_registry(FakeRegistry(values), KINDS)


def profile(path: Path, content: dict[str, object]) -> Callable[[], OsPolicy]:
    path.write_bytes(plistlib.dumps(content))
    return lambda: os_policy.read_managed_preferences(path)


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------


def test_registry_values_take_the_schemas_types() -> None:
    found = os_policy.read_registry(
        FakeRegistry(
            [
                ("Backend", "custom", REG_SZ),  # names ignore case, as in the registry
                ("push_to_talk", 1, REG_DWORD),
                ("silence_ms", 900, REG_DWORD),
                ("endpoint.session_minutes", "12.5", REG_SZ),
                ("tools.allowed", ["create_ticket", "request_human"], REG_MULTI_SZ),
                ("kb.folders", r"C:\kb, D:\more", REG_SZ),
                ("", "ignored", REG_SZ),
            ]
        ),
        KINDS,
    )
    assert found.error is None and found.source == os_policy.REGISTRY_SOURCE
    assert found.values == {
        "backend": "custom",
        "push_to_talk": True,
        "silence_ms": 900,
        "endpoint.session_minutes": 12.5,
        "tools.allowed": ["create_ticket", "request_human"],
        "kb.folders": [r"C:\kb", r"D:\more"],
    }


def test_no_registry_key_and_no_plist_mean_no_os_policy(tmp_path: Path) -> None:
    assert os_policy.read_registry(FakeRegistry(None), KINDS) == OsPolicy()
    assert os_policy.read_managed_preferences(tmp_path / "absent.plist") == OsPolicy()
    assert str(os_policy.MANAGED_PREFERENCES) == "/Library/Managed Preferences/com.helpdeskvoice.app.plist"


def test_sources_are_named_by_their_mechanism() -> None:
    assert os_policy.describe_source(os_policy.REGISTRY_SOURCE) == "Windows registry"
    assert os_policy.describe_source(os_policy.MANAGED_PREFERENCES) == "macOS profile"
    etc = Path("/etc/helpdesk-voice/policy.toml")
    assert os_policy.describe_source(etc) == str(etc)


# ---------------------------------------------------------------------------------------------------
# As a layer of app.config
# ---------------------------------------------------------------------------------------------------


def test_registry_values_are_locked_and_beat_the_policy_file(
    env: dict[str, str], use_os_policy: Callable[[Callable[[], OsPolicy]], None]
) -> None:
    use_os_policy(
        registry(
            ("backend", "custom", REG_SZ),
            ("endpoint.url", "wss://voice.corp.example/rt", REG_SZ),
            ("push_to_talk", 1, REG_DWORD),
        )
    )
    Path(env[config.POLICY_ENV]).write_text(
        'locked = ["voice"]\nvoice = "alloy"\npush_to_talk = false\nsilence_ms = 800\n', "utf-8"
    )
    Path(env[config.CONFIG_DIR_ENV], "settings.toml").write_text(
        'backend = "openai"\nsilence_ms = 900\n', "utf-8"
    )
    settings = load_settings(
        {"endpoint.url": "wss://elsewhere.example/rt"}, env | {"HELPDESK_VOICE_PUSH_TO_TALK": "0"}
    )
    assert (
        settings.value("backend") == "custom" and settings.policy_of("backend") == os_policy.REGISTRY_SOURCE
    )
    assert settings.value("endpoint.url") == "wss://voice.corp.example/rt"
    assert settings.value("push_to_talk") is True and settings.locked("push_to_talk")
    # The file adds what the OS leaves open: a lock, and a value users may still change.
    assert settings.value("voice") == "alloy" and settings.policy_of("voice") == Path(env[config.POLICY_ENV])
    assert (settings.value("silence_ms"), settings.origin("silence_ms")) == (900, "user")
    assert any(
        "push_to_talk is locked by the Windows registry policy HKLM" in problem
        for problem in settings.problems
    )
    with pytest.raises(ConfigError, match=r"backend is locked by your administrator's policy \(HKLM"):
        save_user_setting("backend", "embedded", env)


def test_an_invalid_os_value_is_locked_to_its_safest(
    env: dict[str, str], use_os_policy: Callable[[Callable[[], OsPolicy]], None]
) -> None:
    use_os_policy(
        registry(
            ("transcript.retention_days", 99999, REG_DWORD),
            ("backend", b"\x00", REG_BINARY),
            ("silence_ms", 700, REG_DWORD),
        )
    )
    settings = load_settings(None, env)
    assert settings.value("transcript.retention_days") == 0 and settings.locked("transcript.retention_days")
    assert settings.value("backend") == "embedded" and settings.locked("backend")
    assert settings.value("silence_ms") == 700  # one bad value costs only itself
    assert any(
        "retention_days stays locked, to its safest value 0" in problem for problem in settings.problems
    )


@pytest.mark.parametrize(
    "reader",
    [
        FakeRegistry([("endpoint.ulr", "wss://typo.example/rt", REG_SZ)]),  # a misspelt lock
        FakeRegistry(None, PermissionError(5, "Access is denied")),
    ],
    ids=["unknown name", "unreadable"],
)
def test_an_unusable_os_policy_fails_closed_and_the_file_cannot_undo_it(
    reader: FakeRegistry, env: dict[str, str], use_os_policy: Callable[[Callable[[], OsPolicy]], None]
) -> None:
    use_os_policy(lambda: os_policy.read_registry(reader, KINDS))
    Path(env[config.POLICY_ENV]).write_text(
        'backend = "custom"\n[endpoint]\nurl = "wss://x.example/rt"\n', "utf-8"
    )
    settings = load_settings(None, env)
    for key, safest in (("backend", "embedded"), ("endpoint.url", ""), ("transcript.retention_days", 0)):
        assert settings.value(key) == safest and settings.policy_of(key) == os_policy.REGISTRY_SOURCE, key
    assert any("locked to their safest values" in problem for problem in settings.problems)


def test_a_managed_profile_is_a_locked_layer(
    tmp_path: Path, env: dict[str, str], use_os_policy: Callable[[Callable[[], OsPolicy]], None]
) -> None:
    path = tmp_path / f"{os_policy.BUNDLE_ID}.plist"
    use_os_policy(
        profile(
            path,
            {
                "PayloadUUID": "left in by an MDM tool",
                "eagerness": "low",
                "transcript": {"retention_days": 3},
                "diagnostics.hosts": ["intranet.corp.example"],
            },
        )
    )
    settings = load_settings(None, env)
    assert settings.problems == []
    assert settings.value("eagerness") == "low" and settings.policy_of("eagerness") == path
    assert settings.value("transcript.retention_days") == 3 and settings.locked("transcript.retention_days")
    assert settings.value("diagnostics.hosts") == ("intranet.corp.example",)


def test_a_broken_profile_fails_closed(
    tmp_path: Path, env: dict[str, str], use_os_policy: Callable[[Callable[[], OsPolicy]], None]
) -> None:
    path = tmp_path / "broken.plist"
    path.write_bytes(b"<plist><dict><key>backend")
    use_os_policy(lambda: os_policy.read_managed_preferences(path))
    settings = load_settings(None, env)
    assert settings.value("backend") == "embedded" and settings.policy_of("backend") == path
    assert any("not a valid plist" in problem for problem in settings.problems)


# ---------------------------------------------------------------------------------------------------
# `helpdesk-voice config show`
# ---------------------------------------------------------------------------------------------------


def show(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> dict[str, str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HELPDESK_VOICE_API_KEY", raising=False)
    assert main(["config", "show"]) == 0
    return {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}


def test_config_show_names_each_policy_source(
    tmp_path: Path,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    file_keyring: FileKeyring,
    use_os_policy: Callable[[Callable[[], OsPolicy]], None],
) -> None:
    policy_path = Path(env[config.POLICY_ENV])
    policy_path.write_text('voice = "alloy"\n', "utf-8")
    use_os_policy(registry(("silence_ms", 650, REG_DWORD)))
    lines = show(monkeypatch, env, capsys)
    assert lines["silence_ms"].endswith("650  (policy (Windows registry)) [locked]")
    assert lines["voice"].endswith(f"alloy  (policy ({policy_path}))")
    assert lines["eagerness"].endswith("(default)")

    use_os_policy(profile(tmp_path / "prefs.plist", {"eagerness": "high"}))
    lines = show(monkeypatch, env, capsys)
    assert lines["eagerness"].endswith("high  (policy (macOS profile)) [locked]")
    assert lines["silence_ms"].endswith("(default)")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux has no OS policy besides /etc")
def test_linux_reads_nothing_besides_the_etc_policy_file() -> None:
    assert os_policy.read_os_policy(KINDS) == OsPolicy()
