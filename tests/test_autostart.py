"""Start at login: the Linux entry for real in a temporary home, macOS and Windows by their formats."""

from __future__ import annotations

import configparser
import plistlib
import shlex
from pathlib import Path

from app.autostart import LAUNCH_AGENT_LABEL, RUN_VALUE, StartAtLogin, desktop_entry

COMMAND = ["/opt/helpdesk-voice/helpdesk-voice"]


def test_the_linux_entry_is_made_once_and_removed(tmp_path: Path) -> None:
    login = StartAtLogin(COMMAND, platform="linux", home=tmp_path, environ={})
    assert login.path == tmp_path / ".config" / "autostart" / "helpdesk-voice.desktop"
    assert not login.enabled
    assert login.apply(True) is True and login.enabled and login.path is not None
    entry = configparser.ConfigParser(interpolation=None)
    entry.read_string(login.path.read_text())
    assert entry["Desktop Entry"]["Exec"] == COMMAND[0]
    assert entry["Desktop Entry"]["Type"] == "Application"
    assert login.apply(True) is False  # already there: untouched
    assert login.apply(False) is True and not login.enabled and not login.path.exists()
    assert login.apply(False) is False


def test_the_entry_follows_xdg_config_home_and_a_moved_app(tmp_path: Path) -> None:
    config = tmp_path / "elsewhere"
    login = StartAtLogin(
        ["/usr/bin/python3", "-m", "app"],
        platform="linux",
        home=tmp_path,
        environ={"XDG_CONFIG_HOME": str(config)},
    )
    login.apply(True)
    assert login.path == config / "autostart" / "helpdesk-voice.desktop"
    moved = StartAtLogin(
        ["/home/me/my venv/bin/python", "-m", "app"],
        platform="linux",
        home=tmp_path,
        environ={"XDG_CONFIG_HOME": str(config)},
    )
    assert moved.apply(True) is True  # a different command: rewritten
    assert moved.path is not None
    exec_line = next(line for line in moved.path.read_text().splitlines() if line.startswith("Exec="))
    assert shlex.split(exec_line.removeprefix("Exec=")) == ["/home/me/my venv/bin/python", "-m", "app"]


def test_a_percent_sign_is_not_a_field_code() -> None:
    assert "Exec=/opt/100%%/helpdesk-voice" in desktop_entry(["/opt/100%/helpdesk-voice"])


def test_the_macos_launch_agent_runs_the_app_at_load(tmp_path: Path) -> None:
    login = StartAtLogin(
        ["/Applications/Helpdesk Voice.app/Contents/MacOS/helpdesk-voice"], platform="darwin", home=tmp_path
    )
    login.apply(True)
    assert login.path is not None
    assert login.path == tmp_path / "Library" / "LaunchAgents" / f"{LAUNCH_AGENT_LABEL}.plist"
    agent = plistlib.loads(login.path.read_bytes())
    assert agent == {
        "Label": LAUNCH_AGENT_LABEL,
        "ProgramArguments": ["/Applications/Helpdesk Voice.app/Contents/MacOS/helpdesk-voice"],
        "RunAtLoad": True,
    }


class FakeRunKey:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def set(self, name: str, value: str) -> None:
        self.values[name] = value

    def delete(self, name: str) -> None:
        self.values.pop(name, None)


def test_the_windows_run_value_holds_one_quoted_command_line() -> None:
    key = FakeRunKey()
    login = StartAtLogin(
        [r"C:\Program Files\Helpdesk Voice\helpdesk-voice.exe"], platform="win32", run_key=key
    )
    assert login.path is None and not login.enabled
    assert login.apply(True) is True
    assert key.values == {RUN_VALUE: r'"C:\Program Files\Helpdesk Voice\helpdesk-voice.exe"'}
    assert login.apply(True) is False and login.enabled
    assert login.apply(False) is True and key.values == {}
