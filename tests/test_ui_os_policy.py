"""The Settings dialog shows a value the OS's management tools set as locked, and never saves over it.

The registry is a fake with winreg's value types and the managed preferences a real plist in a
temporary folder (see tests/test_os_policy.py); the dialog is the real one.
"""

from __future__ import annotations

import plistlib
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from app import config, os_policy
from app.config import load_settings
from app.os_policy import REG_DWORD, REG_SZ
from app.ui.settings_dialog import LOCKED_NOTE, SettingsDialog
from tests.file_keyring import FileKeyring
from tests.test_os_policy import KINDS, FakeRegistry


def open_dialog(qtbot: QtBot, env: dict[str, str]) -> SettingsDialog:
    dialog = SettingsDialog(environ=env)
    qtbot.addWidget(dialog)
    return dialog


def assert_locked(dialog: SettingsDialog, key: str, source: str) -> None:
    field = dialog.field(key)
    assert not field.widget.isEnabled(), key
    assert field.note.text() == LOCKED_NOTE, key
    assert source in field.widget.toolTip(), key


def test_registry_values_show_locked_and_are_not_saved(
    qtbot: QtBot, env: dict[str, str], file_keyring: FileKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeRegistry(
        [("backend", "custom", REG_SZ), ("endpoint.url", "wss://voice.corp.example/rt", REG_SZ)]
    )
    monkeypatch.setattr(os_policy, "read_os_policy", lambda kinds: os_policy.read_registry(fake, KINDS))
    dialog = open_dialog(qtbot, env)
    for key in ("backend", "endpoint.url"):
        assert_locked(dialog, key, str(os_policy.REGISTRY_SOURCE))
    assert dialog.url_edit.text() == "wss://voice.corp.example/rt"
    assert dialog.instructions_edit.isEnabled()  # what the OS leaves open stays editable

    # Poke the disabled widgets from code: the saved file must still leave the locked keys out.
    dialog.url_edit.setText("wss://attacker.example/rt")
    dialog.backend_combo.setCurrentIndex(dialog.backend_combo.findData("openai"))
    dialog.push_to_talk_check.setChecked(True)
    with qtbot.waitSignal(dialog.settings_saved, timeout=1000):
        assert dialog.save()
    text = (Path(env[config.CONFIG_DIR_ENV]) / "settings.toml").read_text("utf-8")
    assert "push_to_talk = true" in text
    assert "attacker" not in text and "backend" not in text
    assert load_settings(environ=env).value("backend") == "custom"


def test_managed_profile_values_show_locked(
    qtbot: QtBot,
    tmp_path: Path,
    env: dict[str, str],
    file_keyring: FileKeyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefs = tmp_path / f"{os_policy.BUNDLE_ID}.plist"
    prefs.write_bytes(plistlib.dumps({"voice": "alloy", "push_to_talk": True, "eagerness": "low"}))
    monkeypatch.setattr(os_policy, "read_os_policy", lambda kinds: os_policy.read_managed_preferences(prefs))
    dialog = open_dialog(qtbot, env)
    for key in ("voice", "push_to_talk", "eagerness"):
        assert_locked(dialog, key, str(prefs))
    assert dialog.voice_combo.currentText() == "alloy"
    assert dialog.push_to_talk_check.isChecked()
    dialog.voice_combo.setCurrentText("echo")
    assert dialog.save()  # nothing it may write has changed, so it writes nothing
    assert load_settings(environ=env).value("voice") == "alloy"
    user = Path(env[config.CONFIG_DIR_ENV]) / "settings.toml"
    assert not user.exists() or "voice" not in user.read_text("utf-8")


def test_a_registry_dword_locks_a_checkbox(
    qtbot: QtBot, env: dict[str, str], file_keyring: FileKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeRegistry([("audio.echo_cancellation", 0, REG_DWORD)])
    monkeypatch.setattr(os_policy, "read_os_policy", lambda kinds: os_policy.read_registry(fake, KINDS))
    dialog = open_dialog(qtbot, env)
    assert_locked(dialog, "audio.echo_cancellation", str(os_policy.REGISTRY_SOURCE))
    assert dialog.field("audio.echo_cancellation").read() is False
