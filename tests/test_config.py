"""Layered settings: defaults < policy < user < environment < command line, locks, files and secrets."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import keyring
import keyring.backends.fail
import keyring.errors
import pytest

from app import config
from app.cli import main
from app.config import ConfigError, SecretStoreError, load_settings, save_user_setting, secrets
from app.settings_rules import FieldProblem, cross_field_problems
from tests.file_keyring import KEYRING_FILE_ENV, FileKeyring

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-0123456789abcdefSECRET"


def user_file(env: dict[str, str]) -> Path:
    return Path(env[config.CONFIG_DIR_ENV]) / "settings.toml"


def policy_file(env: dict[str, str]) -> Path:
    return Path(env[config.POLICY_ENV])


def write(path: Path, text: str) -> None:
    path.write_text(text, "utf-8")


# ---------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------


def test_defaults_when_nothing_is_configured(env: dict[str, str]) -> None:
    settings = load_settings(None, env)
    assert settings.problems == []
    for key, setting in config.SETTINGS.items():
        assert settings.value(key) == setting.default
        assert settings.origin(key) == "default"
        assert not settings.locked(key)
    assert settings.value("backend") == "embedded"
    assert settings.value("silence_ms") == 500
    with pytest.raises(KeyError, match="unknown setting 'nope'"):
        settings.value("nope")


def test_later_layers_win(env: dict[str, str]) -> None:
    write(policy_file(env), 'voice = "alloy"\nsilence_ms = 700\n[barge_in]\nsensitivity = "low"\n')
    write(user_file(env), 'voice = "cedar"\nsilence_ms = 800\neagerness = "high"\n')
    env |= {"HELPDESK_VOICE_SILENCE_MS": "900", "HELPDESK_VOICE_EAGERNESS": "low"}
    settings = load_settings({"eagerness": "medium", "audio.input_device": None}, env)
    assert settings.problems == []
    assert (settings.value("barge_in.sensitivity"), settings.origin("barge_in.sensitivity")) == (
        "low",
        "policy",
    )
    assert (settings.value("voice"), settings.origin("voice")) == ("cedar", "user")
    assert (settings.value("silence_ms"), settings.origin("silence_ms")) == (900, "env")
    assert (settings.value("eagerness"), settings.origin("eagerness")) == ("medium", "cli")
    # None on the command line means "not given".
    assert settings.origin("audio.input_device") == "default"


def test_locked_list_ignores_later_layers_and_refuses_saving(env: dict[str, str]) -> None:
    write(
        policy_file(env),
        'locked = ["endpoint.url", "push_to_talk"]\n[endpoint]\nurl = "wss://voice.corp.example/rt"\n',
    )
    write(user_file(env), 'push_to_talk = true\n[endpoint]\nurl = "ws://localhost:1234"\n')
    env["HELPDESK_VOICE_ENDPOINT_URL"] = "wss://elsewhere.example/rt"
    settings = load_settings({"endpoint.url": "wss://cli.example/rt", "push_to_talk": True}, env)
    assert settings.value("endpoint.url") == "wss://voice.corp.example/rt"
    assert settings.origin("endpoint.url") == "policy"
    assert settings.locked("endpoint.url")
    # Locked with no policy value: stays at the built-in one.
    assert (settings.value("push_to_talk"), settings.origin("push_to_talk")) == (False, "default")
    assert settings.locked("push_to_talk")
    assert not settings.locked("voice")
    text = "\n".join(settings.problems)
    assert "endpoint.url is locked by the site policy; the value in the user settings is ignored" in text
    assert "(HELPDESK_VOICE_ENDPOINT_URL)" in text
    assert "the value on the command line is ignored" in text
    before = user_file(env).read_bytes()
    with pytest.raises(ConfigError, match=r"endpoint\.url is locked by your administrator's policy"):
        save_user_setting("endpoint.url", "wss://mine.example/rt", env)
    assert user_file(env).read_bytes() == before


def test_locked_table_sets_and_locks(env: dict[str, str]) -> None:
    write(
        policy_file(env),
        '[locked]\ntools.allowed = ["search_knowledge_base"]\n[locked.audio]\nblock_ms = 20\n',
    )
    write(user_file(env), 'tools.allowed = ["create_ticket"]\n')
    settings = load_settings({}, env)
    assert settings.value("tools.allowed") == ("search_knowledge_base",)
    assert settings.value("audio.block_ms") == 20
    assert settings.locked("tools.allowed") and settings.locked("audio.block_ms")
    assert settings.origin("audio.block_ms") == "policy"
    with pytest.raises(ConfigError, match="locked"):
        save_user_setting("audio.block_ms", 15, env)


def test_policy_problems_do_not_undo_its_locks(env: dict[str, str]) -> None:
    write(policy_file(env), 'locked = ["silence_ms", "nonsense.key"]\nsilence_ms = "fast"\n')
    settings = load_settings({"silence_ms": 300}, env)
    assert settings.locked("silence_ms")
    assert settings.value("silence_ms") == 500
    text = "\n".join(settings.problems)
    assert "silence_ms must be a whole number, not the text 'fast'; ignored" in text
    assert "cannot lock unknown settings: nonsense.key" in text


# ---------------------------------------------------------------------------------------------------
# The environment and the command line
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True),
        ("true", True),
        ("Yes", True),
        ("on", True),
        ("0", False),
        ("FALSE", False),
        ("off", False),
    ],
)
def test_env_booleans(env: dict[str, str], text: str, expected: bool) -> None:
    env["HELPDESK_VOICE_PUSH_TO_TALK"] = text
    settings = load_settings(None, env)
    assert (settings.value("push_to_talk"), settings.origin("push_to_talk")) == (expected, "env")


def test_env_ints_lists_strings_and_aliases(env: dict[str, str]) -> None:
    env |= {
        "HELPDESK_VOICE_TRANSCRIPT_RETENTION_DAYS": " 0 ",
        "HELPDESK_VOICE_TOOLS_ALLOWED": "create_ticket, search_knowledge_base,",
        "HELPDESK_VOICE_INPUT_DEVICE": "USB Headset",
        "HELPDESK_VOICE_AUDIO_OUTPUT_DEVICE": "Speakers",
        "HELPDESK_VOICE_OUTPUT_DEVICE": "ignored: the full name wins",
        "HELPDESK_VOICE_API_KEY": KEY,  # not a setting: never shown as one
    }
    settings = load_settings(None, env)
    assert settings.problems == []
    assert settings.value("transcript.retention_days") == 0
    assert settings.value("tools.allowed") == ("create_ticket", "search_knowledge_base")
    assert settings.value("audio.input_device") == "USB Headset"
    assert settings.value("audio.output_device") == "Speakers"
    env["HELPDESK_VOICE_TOOLS_ALLOWED"] = ""
    assert load_settings(None, env).value("tools.allowed") == ()


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("HELPDESK_VOICE_PUSH_TO_TALK", "maybe", "push_to_talk must be true or false"),
        ("HELPDESK_VOICE_SILENCE_MS", "5OO", "silence_ms must be a whole number, not '5OO'"),
        ("HELPDESK_VOICE_SILENCE_MS", "100", "silence_ms must be a whole number from 200 to 2000, not 100"),
        ("HELPDESK_VOICE_TOOLS_ALLOWED", "rm_rf", "tools.allowed names unknown tools (rm_rf)"),
        ("HELPDESK_VOICE_ENDPOINT_URL", "https://x.example", "endpoint.url must start with ws:// or wss://"),
    ],
)
def test_bad_env_values_are_reported_and_ignored(
    env: dict[str, str], name: str, text: str, message: str
) -> None:
    env[name] = text
    settings = load_settings(None, env)
    assert len(settings.problems) == 1
    assert f"environment {name}: {message}" in settings.problems[0]
    assert settings.problems[0].endswith("; ignored")
    assert all(origin == "default" for origin in settings.origins.values())


def test_cli_values_are_checked(env: dict[str, str]) -> None:
    settings = load_settings({"audio.block_ms": "50", "bogus": 1, "backend": "azure"}, env)
    assert settings.value("audio.block_ms") == 10
    assert (settings.value("backend"), settings.origin("backend")) == ("azure", "cli")
    text = "\n".join(settings.problems)
    assert "command line: audio.block_ms must be a whole number from 5 to 40, not 50; ignored" in text
    assert "command line: unknown setting 'bogus' ignored" in text


# ---------------------------------------------------------------------------------------------------
# Bad files
# ---------------------------------------------------------------------------------------------------


def corrupt_copies(env: dict[str, str]) -> list[Path]:
    return sorted(user_file(env).parent.glob("settings.toml.corrupt-*"))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('voice = "cedar"\nsilence_ms = = 3\n', "is not valid TOML"),
        (b"voice = '\xff'\n".decode("latin-1"), "is not UTF-8 text"),
    ],
)
def test_corrupt_user_file_is_set_aside(env: dict[str, str], text: str, reason: str) -> None:
    path = user_file(env)
    path.write_bytes(text.encode("latin-1"))
    settings = load_settings(None, env)
    assert settings.value("voice") == config.SETTINGS["voice"].default
    assert settings.origin("voice") == "default"
    assert len(settings.problems) == 1
    problem = settings.problems[0]
    assert reason in problem and "\n" not in problem
    assert not path.exists()
    [aside] = corrupt_copies(env)
    assert aside.read_bytes() == text.encode("latin-1")
    assert f"moved to {aside.name}" in problem
    # The next save starts afresh and works.
    save_user_setting("voice", "cedar", env)
    assert load_settings(None, env).value("voice") == "cedar"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('silence_ms = "fast"\nvoice = "cedar"\n', "silence_ms must be a whole number, not the text 'fast'"),
        ('push_to_talk = 1\nvoice = "cedar"\n', "push_to_talk must be true or false, not the number 1"),
        ("voice = 'cedar'\n[silence_ms]\nname = 'x'\n", "silence_ms must be a whole number, not a table"),
    ],
)
def test_a_wrong_type_costs_only_its_own_key(env: dict[str, str], text: str, reason: str) -> None:
    """One bad value used to set the whole file aside, and every other setting with it."""
    path = user_file(env)
    write(path, text)
    settings = load_settings(None, env)
    assert (settings.value("voice"), settings.origin("voice")) == ("cedar", "user")
    [problem] = settings.problems
    assert reason in problem and problem.endswith("; ignored")
    assert path.read_text("utf-8") == text
    assert corrupt_copies(env) == []
    # Saving another key keeps what the user wrote, the bad value included, for them to fix.
    save_user_setting("eagerness", "high", env)
    again = load_settings(None, env)
    assert again.value("eagerness") == "high" and again.value("voice") == "cedar"
    assert [p.split(": ", 1)[1] for p in again.problems] == [p.split(": ", 1)[1] for p in settings.problems]


SAFEST = {"backend": "embedded", "endpoint.url": "", "transcript.retention_days": 0}


def assert_failed_closed(settings: config.LoadedSettings) -> None:
    for key, value in SAFEST.items():
        assert settings.locked(key), key
        assert settings.value(key) == value, key
    assert "locked to their safest values" in "\n".join(settings.problems)


@pytest.mark.parametrize(
    "policy",
    [
        'locked = ["backend"\nbackend = "embedded"\n',  # a syntax error
        'locked = "backend"\nbackend = "embedded"\n',  # locks of the wrong shape
        b"backend = '\xff'\n".decode("latin-1"),  # not UTF-8
        None,  # a folder where the file should be: it cannot be read
    ],
)
def test_a_policy_that_cannot_be_used_fails_closed(env: dict[str, str], policy: str | None) -> None:
    path = policy_file(env)
    if policy is None:
        path.mkdir()
    else:
        path.write_bytes(policy.encode("latin-1"))
    write(user_file(env), 'backend = "openai"\ntranscript.retention_days = 90\nvoice = "cedar"\n')
    settings = load_settings({"endpoint.url": "wss://elsewhere.example.com/rt"}, env)
    assert_failed_closed(settings)
    assert (settings.value("voice"), settings.origin("voice")) == ("cedar", "user")  # not a guarded key
    assert "until your administrator fixes it" in "\n".join(settings.problems)
    with pytest.raises(ConfigError, match="locked"):
        save_user_setting("backend", "openai", env)
    if policy is not None:
        assert path.read_bytes() == policy.encode("latin-1")  # never renamed nor rewritten
    assert list(path.parent.glob("policy.toml.*")) == []


def test_a_locked_key_with_an_invalid_policy_value_is_locked_to_its_safest_value(env: dict[str, str]) -> None:
    write(policy_file(env), '[locked]\nbackend = "cloud"\ntranscript.retention_days = -5\n')
    settings = load_settings({"endpoint.url": "ws://evil.example.com/rt"}, env)
    assert (settings.value("backend"), settings.locked("backend")) == ("embedded", True)
    assert settings.value("transcript.retention_days") == 0
    assert "backend stays locked, to its safest value embedded" in "\n".join(settings.problems)


@pytest.mark.parametrize("source", ["env", "cli"])
def test_a_locked_backend_cannot_be_left_through_an_endpoint_url(env: dict[str, str], source: str) -> None:
    """A policy that keeps speech on this computer holds against --url and the environment."""
    from app.launch import plan_from_settings

    write(policy_file(env), '[locked]\nbackend = "embedded"\n')
    url = "wss://elsewhere.example.com/v1/realtime"
    cli = {"endpoint.url": url} if source == "cli" else None
    environ = {**env, "HELPDESK_VOICE_ENDPOINT_URL": url} if source == "env" else env
    settings = load_settings(cli, environ)
    assert settings.value("backend") == "embedded"
    assert settings.locked("endpoint.url")
    assert settings.value("endpoint.url") == ""
    assert any("endpoint.url is locked by the site policy" in problem for problem in settings.problems)
    plan = plan_from_settings(settings, environ)
    assert plan.backend == "embedded" and plan.endpoint is None
    with pytest.raises(ConfigError, match="locked"):
        save_user_setting("endpoint.url", url, env)


def test_an_unlocked_backend_still_follows_an_endpoint_url(env: dict[str, str]) -> None:
    settings = load_settings({"endpoint.url": "ws://127.0.0.1:9/rt"}, env)
    assert (settings.value("backend"), settings.origin("backend")) == ("custom", "cli")
    assert not settings.locked("endpoint.url")


def test_the_test_policy_cannot_undo_the_system_policy(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HELPDESK_VOICE_POLICY is one more policy on top, never a way around the machine's."""
    system = tmp_path / "etc" / "policy.toml"
    system.parent.mkdir()
    write(system, 'transcript.retention_days = 7\n[locked]\nbackend = "embedded"\nvoice = "marin"\n')
    monkeypatch.setattr(config, "system_policy_path", lambda: system)
    write(
        policy_file(env),
        'locked = ["backend", "eagerness"]\nbackend = "custom"\nvoice = "cedar"\n'
        "transcript.retention_days = 3\n",
    )
    settings = load_settings(None, env)
    assert (settings.value("backend"), settings.policy_of("backend")) == ("embedded", system)
    assert (settings.value("voice"), settings.policy_of("voice")) == ("marin", system)
    # What the system leaves open, the extra policy may set and lock.
    assert settings.value("transcript.retention_days") == 3
    assert settings.policy_of("eagerness") == policy_file(env)
    assert any("voice is locked by the system policy" in problem for problem in settings.problems)
    # A broken system policy fails closed even when the extra one is fine.
    write(system, "backend = \n")
    assert_failed_closed(load_settings(None, env))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux location")
def test_the_system_policy_lives_where_no_user_can_move_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path))
    assert config.system_policy_path() == Path("/etc/helpdesk-voice/policy.toml")
    assert config.config_paths({}).policy == Path("/etc/helpdesk-voice/policy.toml")


def test_unreadable_user_file_is_left_alone(env: dict[str, str]) -> None:
    user_file(env).mkdir()  # a folder where the file should be: reading fails with an OSError
    settings = load_settings(None, env)
    [problem] = settings.problems
    assert problem.startswith(f"user settings {user_file(env)} cannot be read")
    assert settings.origin("voice") == "default"
    assert corrupt_copies(env) == []
    with pytest.raises(ConfigError, match=r"cannot be read.*nothing was changed"):
        save_user_setting("voice", "cedar", env)
    assert user_file(env).is_dir()


def test_unknown_keys_are_reported_and_kept_on_save(env: dict[str, str]) -> None:
    write(user_file(env), 'voice = "cedar"\ncolour = "blue"\n[audio]\nblock_ms = 20\ngain = 3\n')
    settings = load_settings(None, env)
    assert settings.value("voice") == "cedar" and settings.value("audio.block_ms") == 20
    assert settings.problems == [
        f"user settings {user_file(env)}: unknown settings ignored: audio.gain, colour"
    ]
    assert corrupt_copies(env) == []
    save_user_setting("eagerness", "low", env)
    import tomllib

    saved = tomllib.loads(user_file(env).read_text("utf-8"))
    assert saved == {
        "voice": "cedar",
        "colour": "blue",
        "eagerness": "low",
        "audio": {"block_ms": 20, "gain": 3},
    }


def test_out_of_range_value_in_user_file_is_ignored_alone(env: dict[str, str]) -> None:
    write(user_file(env), 'voice = "cedar"\nsilence_ms = 5000\nturn_detection = "loud"\n')
    settings = load_settings(None, env)
    assert settings.value("voice") == "cedar"
    assert settings.value("silence_ms") == 500
    text = "\n".join(settings.problems)
    assert "silence_ms must be a whole number from 200 to 2000, not 5000; ignored" in text
    assert "turn_detection must be one of server_vad, semantic_vad, not 'loud'; ignored" in text
    assert corrupt_copies(env) == []


def test_names_that_only_contain_a_secret_word_are_not_secrets() -> None:
    for key in ("max_tokens", "token_limit", "push_to_talk_key", "keyboard.shortcut", "secretary"):
        assert not config._is_secret_key(key), key
    for key in ("access_token", "endpoint.client_secret", "proxy.password", "azure.api-key"):
        assert config._is_secret_key(key), key


@pytest.mark.parametrize("field", ["api_key", "token", "password", "endpoint.api-key", "azure.secret"])
def test_secret_fields_in_files_are_refused(env: dict[str, str], field: str) -> None:
    *table, name = field.split(".")
    header = f"[{table[0]}]\n" if table else ""
    write(user_file(env), f'voice = "cedar"\n{header}{name} = "{KEY}"\n')
    write(policy_file(env), f'{header}{name} = "{KEY}"\n')
    settings = load_settings(None, env)
    assert settings.value("voice") == "cedar"
    assert KEY not in repr(settings)
    assert KEY not in "\n".join(settings.problems)
    assert sum("looks like a secret and was not loaded" in p for p in settings.problems) == 2
    # A save drops the secret from the user file rather than copying it along.
    save_user_setting("eagerness", "high", env)
    assert KEY not in user_file(env).read_text("utf-8")


# ---------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("backend", "gemini", "backend must be one of embedded, openai, azure, custom, not 'gemini'"),
        ("silence_ms", 2001, "silence_ms must be a whole number from 200 to 2000, not 2001"),
        ("silence_ms", True, "silence_ms must be a whole number, not the boolean true"),
        ("silence_ms", "soon", "silence_ms must be a whole number, not 'soon'"),
        ("audio.block_ms", 4, "audio.block_ms must be a whole number from 5 to 40, not 4"),
        ("transcript.retention_days", -1, "from 0 to 3650, not -1"),
        ("push_to_talk", "sometimes", "push_to_talk must be true or false"),
        ("endpoint.url", "http://x.example/rt", "endpoint.url must start with ws:// or wss://"),
        ("endpoint.url", "wss://me:pw@x.example/rt", "must not contain a user name or password"),
        ("endpoint.model", "gpt realtime", "endpoint.model must not contain spaces"),
        ("voice", " ", "voice must not be empty"),
        # In the order the Settings dialog lists them: both come from the schema's choices.
        ("eagerness", "eager", "eagerness must be one of auto, low, medium, high"),
        ("barge_in.sensitivity", 3, "barge_in.sensitivity must be text, not the number 3"),
        ("tools.allowed", ["create_ticket", "create_ticket"], "tools.allowed lists a tool twice"),
        ("tools.allowed", [1], "tools.allowed must be a list of names, not a list"),
        ("volume", 3, "unknown setting 'volume'"),
        ("api_key", KEY, "'api_key' looks like a secret"),
    ],
)
def test_save_refuses_invalid_values(env: dict[str, str], key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        save_user_setting(key, value, env)
    assert message in str(caught.value)
    assert KEY not in str(caught.value)
    assert not user_file(env).exists()


def test_save_round_trips_and_keeps_other_keys(env: dict[str, str]) -> None:
    tricky = 'Say "hi" \\ then\n\ttab, ünïcödé \u007f and \x01.'
    save_user_setting("instructions", tricky, env)
    save_user_setting("push_to_talk", True, env)
    save_user_setting("tools.allowed", ["create_ticket"], env)
    save_user_setting("silence_ms", "650", env)  # text from a form field is parsed
    save_user_setting("endpoint.url", "wss://voice.example/rt?model=m", env)
    save_user_setting("audio.input_device", "Mic (USB)", env)
    settings = load_settings(None, env)
    assert settings.problems == []
    assert settings.value("instructions") == tricky
    assert settings.value("push_to_talk") is True
    assert settings.value("tools.allowed") == ("create_ticket",)
    assert settings.value("silence_ms") == 650
    assert settings.value("endpoint.url") == "wss://voice.example/rt?model=m"
    assert settings.value("audio.input_device") == "Mic (USB)"
    assert all(settings.origin(k) == "user" for k in ("instructions", "silence_ms", "endpoint.url"))
    save_user_setting("silence_ms", None, env)  # None removes the key
    settings = load_settings(None, env)
    assert settings.origin("silence_ms") == "default"
    assert settings.value("push_to_talk") is True
    assert [p.name for p in user_file(env).parent.iterdir()] == ["settings.toml"]  # no temp files


def test_save_creates_missing_folder(tmp_path: Path) -> None:
    env = {config.CONFIG_DIR_ENV: str(tmp_path / "a" / "b"), config.POLICY_ENV: str(tmp_path / "none.toml")}
    save_user_setting("voice", "cedar", env)
    assert load_settings(None, env).value("voice") == "cedar"


def test_failed_write_leaves_old_file_intact(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    save_user_setting("voice", "cedar", env)
    save_user_setting("silence_ms", 700, env)
    before = user_file(env).read_bytes()

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(
        ConfigError, match=r"could not write .*No space left on device.*old settings are kept"
    ):
        save_user_setting("voice", "alloy", env)
    monkeypatch.undo()
    assert user_file(env).read_bytes() == before
    assert [p.name for p in user_file(env).parent.iterdir()] == ["settings.toml"]
    settings = load_settings(None, env)
    assert (settings.value("voice"), settings.value("silence_ms")) == ("cedar", 700)


def test_failed_fsync_leaves_old_file_intact(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    save_user_setting("voice", "cedar", env)
    before = user_file(env).read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(ConfigError, match="Input/output error"):
        save_user_setting("voice", "alloy", env)
    monkeypatch.undo()
    assert user_file(env).read_bytes() == before
    assert [p.name for p in user_file(env).parent.iterdir()] == ["settings.toml"]


# ---------------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------------


def test_keyring_round_trip_never_touches_files(
    env: dict[str, str], file_keyring: FileKeyring, tmp_path: Path
) -> None:
    assert secrets.status(env).source is None
    assert secrets.delete_api_key() is False
    secrets.store_api_key(f"{KEY}\n")
    assert json.loads(file_keyring.path.read_text("utf-8")) == {"helpdesk-voice\0api-key": KEY}
    assert secrets.read_api_key(env) == KEY
    status = secrets.status(env)
    assert (status.source, status.is_set, status.describe()) == ("keyring", True, "set (keyring)")
    assert KEY not in repr(status)
    # The environment wins over the keyring.
    assert secrets.status({**env, "HELPDESK_VOICE_API_KEY": "other"}).describe() == (
        "set (env HELPDESK_VOICE_API_KEY)"
    )
    # Saving and loading settings never copies the key into a settings file.
    save_user_setting("voice", "cedar", env)
    settings = load_settings({"voice": "alloy"}, env)
    assert KEY not in repr(settings) and KEY not in "\n".join(settings.problems)
    for path in tmp_path.rglob("*"):
        if path.is_file() and path != file_keyring.path:
            assert KEY not in path.read_text("utf-8", errors="replace"), path
    assert secrets.delete_api_key() is True
    assert secrets.read_api_key(env) is None
    assert secrets.delete_api_key() is False


def test_bad_key_is_refused_without_echoing_it(file_keyring: FileKeyring) -> None:
    with pytest.raises(SecretStoreError, match="cannot be sent in an HTTP header") as caught:
        secrets.store_api_key("sk-abc def")
    assert "sk-abc" not in str(caught.value)
    with pytest.raises(SecretStoreError, match="empty"):
        secrets.store_api_key("  ")


def test_no_keyring_backend_gives_a_clear_error(env: dict[str, str]) -> None:
    original = keyring.get_keyring()
    keyring.set_keyring(keyring.backends.fail.Keyring())
    try:
        with pytest.raises(SecretStoreError, match=r"no OS keyring is available.*set HELPDESK_VOICE_API_KEY"):
            secrets.store_api_key(KEY)
        with pytest.raises(SecretStoreError, match="no OS keyring is available"):
            secrets.delete_api_key()
        status = secrets.status(env)
        assert status.source is None
        assert status.describe().startswith("not set (the system keyring is unavailable")
    finally:
        keyring.set_keyring(original)


# ---------------------------------------------------------------------------------------------------
# ``helpdesk-voice config path|show``
# ---------------------------------------------------------------------------------------------------


def test_config_path(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    write(user_file(env), 'voice = "cedar"\n')
    assert main(["config", "path"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"policy: {config.system_policy_path()} (not found)",
        f"policy: {policy_file(env)} (not found, from {config.POLICY_ENV})",
        f"user:   {user_file(env)} (exists)",
    ]


def test_config_without_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["config"])
    assert caught.value.code == 2
    assert "required: {path,show,set-token-credential,forget-token-credential}" in capsys.readouterr().err


def run_show(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HELPDESK_VOICE_", "PYTHON_KEYRING"))}
    return subprocess.run(
        [sys.executable, "-m", "app", *args, "config", "show"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def show_lines(stdout: str) -> dict[str, str]:
    return {line.split()[0]: line for line in stdout.splitlines()}


def test_config_show_masks_the_key_and_shows_origins(env: dict[str, str]) -> None:
    write(
        policy_file(env),
        'locked = ["endpoint.url"]\n[endpoint]\nurl = "wss://voice.corp.example/rt?token=abc"\n',
    )
    write(user_file(env), f'voice = "cedar"\ncolour = "blue"\napi_key = "{KEY}"\n')
    env |= {
        "HELPDESK_VOICE_SILENCE_MS": "900",
        "HELPDESK_VOICE_API_KEY": KEY,
        "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
    }
    result = run_show(env, "--input-device", "USB Mic")
    assert result.returncode == 0, result.stderr
    assert KEY not in result.stdout + result.stderr
    lines = show_lines(result.stdout)
    assert set(lines) == {*config.SETTINGS, "api_key"}
    assert lines["endpoint.url"].endswith(f"(policy ({policy_file(env)})) [locked]")
    assert "token=%2A%2A%2A" in lines["endpoint.url"] or "token=***" in lines["endpoint.url"]
    assert "abc" not in lines["endpoint.url"]
    assert lines["voice"].split()[1:] == ["cedar", "(user)"]
    assert lines["silence_ms"].split()[1:] == ["900", "(env)"]
    assert lines["audio.input_device"].endswith("USB Mic  (cli)")
    # A URL from the policy means that server, and `config show` says so.
    assert lines["backend"].split()[1:] == ["custom", "(policy)"]
    assert lines["api_key"].split(None, 1)[1] == "set (env HELPDESK_VOICE_API_KEY)"
    assert "unknown settings ignored: colour" in result.stderr
    assert "'api_key' looks like a secret and was not loaded" in result.stderr


def test_config_show_reports_a_keyring_key(env: dict[str, str], tmp_path: Path) -> None:
    store = tmp_path / "keyring.json"
    store.write_text(json.dumps({"helpdesk-voice\0api-key": KEY}), "utf-8")
    env |= {"PYTHON_KEYRING_BACKEND": "tests.file_keyring.FileKeyring", KEYRING_FILE_ENV: str(store)}
    result = run_show(env)
    assert result.returncode == 0, result.stderr
    assert KEY not in result.stdout + result.stderr
    assert show_lines(result.stdout)["api_key"].split(None, 1)[1] == "set (keyring)"
    store.write_text("{}", "utf-8")
    result = run_show(env)
    assert show_lines(result.stdout)["api_key"].split(None, 1)[1].startswith("not set")


# ---------------------------------------------------------------------------------------------------
# The typed settings, the schema's choices, and the rules that span settings
# ---------------------------------------------------------------------------------------------------


def typed_value(typed: config.Settings, key: str) -> object:
    """``typed.endpoint.url`` for ``"endpoint.url"``: the attribute path the dotted key names."""
    found: object = typed
    for part in key.split("."):
        found = getattr(found, part)
    return found


def test_the_typed_settings_hold_every_value_with_its_type(env: dict[str, str]) -> None:
    write(
        user_file(env),
        'backend = "custom"\nsilence_ms = 800\npush_to_talk = true\n[endpoint]\nurl = "ws://127.0.0.1:9/rt"\n'
        '[tools]\nallowed = ["create_ticket"]\n',
    )
    settings = load_settings({"audio.block_ms": "20"}, {**env, "HELPDESK_VOICE_EAGERNESS": "high"})
    typed = settings.typed
    for key, setting in config.SETTINGS.items():
        assert typed_value(typed, key) == settings.value(key), key
        assert isinstance(typed_value(typed, key), setting.kind), key
    assert typed.backend == "custom" and typed.endpoint.url == "ws://127.0.0.1:9/rt"
    assert typed.silence_ms == 800 and typed.audio.block_ms == 20 and typed.eagerness == "high"
    assert typed.push_to_talk is True and typed.tools.allowed == ("create_ticket",)
    # The typed view adds nothing to where values came from: origins and locks are as before.
    assert [settings.origin(k) for k in ("silence_ms", "audio.block_ms", "eagerness", "voice")] == [
        "user",
        "cli",
        "env",
        "default",
    ]
    for part, attribute in ((typed, "silence_ms"), (typed.audio, "block_ms")):  # frozen, all the way down
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(part, attribute, 900)


def test_the_typed_settings_follow_locks_and_a_policy_that_fails_closed(env: dict[str, str]) -> None:
    write(policy_file(env), "this is not toml")
    write(user_file(env), 'backend = "openai"\n[transcript]\nretention_days = 30\n')
    settings = load_settings(None, env)
    assert settings.typed.backend == "embedded" and settings.typed.transcript.retention_days == 0
    assert settings.origin("backend") == "policy" and settings.locked("backend")


def test_the_typed_settings_refuse_a_value_of_the_wrong_type(env: dict[str, str]) -> None:
    values = dict(load_settings(None, env).values)
    for key, bad in (
        ("silence_ms", "soon"),
        ("backend", "gemini"),
        ("push_to_talk", 1),
        ("tools.allowed", "x"),
    ):
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            config.typed_settings({**values, key: bad})


@pytest.mark.parametrize(
    ("key", "literal"),
    [
        ("backend", config.Backend),
        ("turn_detection", config.TurnDetectionKind),
        ("eagerness", config.Eagerness),
        ("barge_in.sensitivity", config.Sensitivity),
    ],
)
def test_each_choice_has_a_label_and_matches_its_type(key: str, literal: object) -> None:
    setting = config.SETTINGS[key]
    assert set(setting.choice_values) == set(get_args(literal))
    assert setting.default in setting.choice_values
    assert all(label and label != value for value, label in setting.choices)


def test_a_choice_outside_the_schema_is_refused_in_every_layer(env: dict[str, str]) -> None:
    assert config.SETTINGS["backend"].label("azure") == "Azure OpenAI"
    assert config.SETTINGS["backend"].label("gemini") == "gemini"
    write(user_file(env), 'turn_detection = "loud"\n')
    settings = load_settings({"barge_in.sensitivity": "extreme"}, env)
    assert (
        settings.value("turn_detection") == "server_vad" and settings.typed.barge_in.sensitivity == "medium"
    )
    assert any(
        "barge_in.sensitivity must be one of low, medium, high, not 'extreme'" in p for p in settings.problems
    )


def defaults_with(**changes: config.Value) -> dict[str, config.Value]:
    values = {key: setting.default for key, setting in config.SETTINGS.items()}
    values.update({key.replace("__", "."): value for key, value in changes.items()})
    return values


CUSTOM_NEEDS_URL = FieldProblem(
    "endpoint.url", "the Custom URL backend needs the server's address (ws:// or wss://)"
)
OPENAI_NEEDS_MODEL = FieldProblem(
    "endpoint.model", "the OpenAI backend needs a model name (for example gpt-realtime)"
)
AZURE_NEEDS_RESOURCE = FieldProblem(
    "endpoint.azure_resource", "the Azure OpenAI backend needs the name of your Azure OpenAI resource"
)
AZURE_NEEDS_DEPLOYMENT = FieldProblem(
    "endpoint.azure_deployment", "the Azure OpenAI backend needs the name of the realtime model's deployment"
)


def needs_key(name: str) -> FieldProblem:
    return FieldProblem(
        "api_key",
        f"no API key for {name} is stored; type one in Settings (it is kept in the system keyring) "
        "or set HELPDESK_VOICE_API_KEY",
    )


@pytest.mark.parametrize(
    ("values", "key_present", "expected"),
    [
        (defaults_with(), False, []),  # the offline server needs nothing
        (defaults_with(backend="embedded", endpoint__url=""), False, []),
        (defaults_with(backend="custom"), True, [CUSTOM_NEEDS_URL]),
        (defaults_with(backend="custom", endpoint__url="   "), True, [CUSTOM_NEEDS_URL]),
        (
            defaults_with(backend="custom", endpoint__url="ws://127.0.0.1:9/rt"),
            False,
            [],
        ),  # a key is optional
        (defaults_with(backend="openai"), True, []),
        (defaults_with(backend="openai"), False, [needs_key("OpenAI")]),
        (
            defaults_with(backend="openai", endpoint__model=""),
            False,
            [OPENAI_NEEDS_MODEL, needs_key("OpenAI")],
        ),
        (defaults_with(backend="azure"), True, [AZURE_NEEDS_RESOURCE, AZURE_NEEDS_DEPLOYMENT]),
        (
            defaults_with(backend="azure", endpoint__azure_resource="contoso"),
            False,
            [AZURE_NEEDS_DEPLOYMENT, needs_key("Azure OpenAI")],
        ),
        (
            defaults_with(
                backend="azure", endpoint__azure_resource="contoso", endpoint__azure_deployment="rt"
            ),
            True,
            [],
        ),
        ({"backend": "azure"}, True, [AZURE_NEEDS_RESOURCE, AZURE_NEEDS_DEPLOYMENT]),  # missing is empty
    ],
)
def test_each_cross_field_rule(
    values: dict[str, config.Value], key_present: bool, expected: list[FieldProblem]
) -> None:
    assert cross_field_problems(values, api_key_present=key_present) == expected
