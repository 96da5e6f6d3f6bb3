"""Start at login: the entry each desktop reads when the user logs in, made or removed to match the
``start_at_login`` setting.

- Linux (freedesktop): ``$XDG_CONFIG_HOME/autostart/helpdesk-voice.desktop`` (``~/.config`` when
  unset), which GNOME, KDE, Xfce and others start at login.
- macOS: a LaunchAgent, ``~/Library/LaunchAgents/com.helpdeskvoice.app.plist`` with ``RunAtLoad``.
- Windows: the value ``Helpdesk Voice`` under ``HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run``.

Per user, never machine-wide: the setting is the user's (a policy may lock it), and an entry in the
user's own folders goes with the user's data, not with the package. The command is the one this app
was started with (:func:`app.localmodel.launcher.self_command`), so an installed bundle and a
checkout's virtual environment each start themselves. Only the Linux entry was exercised here; the
macOS and Windows ones are checked against their formats with a fake registry.
"""

from __future__ import annotations

import os
import plistlib
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, Protocol

from app.fileio import write_atomically

__all__ = [
    "LAUNCH_AGENT_LABEL",
    "RUN_KEY",
    "RUN_VALUE",
    "RunKey",
    "StartAtLogin",
    "desktop_entry",
    "launch_agent",
]

LAUNCH_AGENT_LABEL: Final = "com.helpdeskvoice.app"
RUN_KEY: Final = r"Software\Microsoft\Windows\CurrentVersion\Run"
RUN_VALUE: Final = "Helpdesk Voice"
_DESKTOP_FILE: Final = "helpdesk-voice.desktop"


def desktop_entry(command: Sequence[str]) -> str:
    """The freedesktop autostart entry that runs ``command``."""
    # The Exec key has its own quoting rules: arguments with spaces in double quotes, and "%"
    # doubled so it is not taken for a field code.
    exec_line = " ".join(_desktop_quote(argument) for argument in command)
    return (
        "[Desktop Entry]\n"
        "Type=Application\n"
        "Name=Helpdesk Voice\n"
        "Comment=Ask the IT helpdesk out loud\n"
        f"Exec={exec_line}\n"
        "Icon=helpdesk-voice\n"
        "Terminal=false\n"
        "X-GNOME-Autostart-enabled=true\n"
    )


def _desktop_quote(argument: str) -> str:
    argument = argument.replace("%", "%%")
    if argument and not any(ch in argument for ch in " \t\n\"'\\><~|&;$*?#()`"):
        return argument
    escaped = argument.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`").replace("$", "\\$")
    return f'"{escaped}"'


def launch_agent(command: Sequence[str]) -> bytes:
    """The macOS LaunchAgent that runs ``command`` at login."""
    agent = {"Label": LAUNCH_AGENT_LABEL, "ProgramArguments": list(command), "RunAtLoad": True}
    return plistlib.dumps(agent)


class RunKey(Protocol):
    """The current user's Run key (winreg on Windows; a dictionary in tests)."""

    def get(self, name: str) -> str | None: ...
    def set(self, name: str, value: str) -> None: ...
    def delete(self, name: str) -> None: ...


class _WindowsRunKey:
    def get(self, name: str) -> str | None:
        if sys.platform != "win32":  # only ever made on Windows
            return None
        import winreg

        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY) as key:
                value, _kind = winreg.QueryValueEx(key, name)
        except FileNotFoundError:
            return None
        return str(value)

    def set(self, name: str, value: str) -> None:
        if sys.platform != "win32":
            raise OSError("the Windows registry exists only on Windows")
        import winreg

        with winreg.CreateKey(winreg.HKEY_CURRENT_USER, RUN_KEY) as key:
            winreg.SetValueEx(key, name, 0, winreg.REG_SZ, value)

    def delete(self, name: str) -> None:
        if sys.platform != "win32":
            return
        import winreg

        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY, 0, winreg.KEY_SET_VALUE) as key:
                winreg.DeleteValue(key, name)
        except FileNotFoundError:
            pass


class StartAtLogin:
    """This user's start-at-login entry on ``platform``; every method raises OSError on failure."""

    def __init__(
        self,
        command: Sequence[str] | None = None,
        *,
        platform: str = sys.platform,
        home: Path | None = None,
        environ: Mapping[str, str] = os.environ,
        run_key: RunKey | None = None,
    ) -> None:
        if command is None:
            from app.localmodel.launcher import self_command

            command = self_command()
        self.command = list(command)
        self.platform = platform
        self._home = home if home is not None else Path.home()
        self._environ = environ
        self._run_key = run_key

    @property
    def path(self) -> Path | None:
        """The entry's file; None on Windows, where it is a registry value."""
        if self.platform == "win32":
            return None
        if self.platform == "darwin":
            return self._home / "Library" / "LaunchAgents" / f"{LAUNCH_AGENT_LABEL}.plist"
        config = self._environ.get("XDG_CONFIG_HOME", "").strip()
        base = Path(config) if config and Path(config).is_absolute() else self._home / ".config"
        return base / "autostart" / _DESKTOP_FILE

    def _key(self) -> RunKey:
        if self._run_key is None:
            self._run_key = _WindowsRunKey()
        return self._run_key

    @property
    def enabled(self) -> bool:
        if self.platform == "win32":
            return self._key().get(RUN_VALUE) is not None
        path = self.path
        return path is not None and path.is_file()

    def apply(self, wanted: bool) -> bool:
        """Makes the entry exist (for this command) or not; True when something changed."""
        if self.platform == "win32":
            value = subprocess_line(self.command)
            current = self._key().get(RUN_VALUE)
            if wanted and current != value:
                self._key().set(RUN_VALUE, value)
                return True
            if not wanted and current is not None:
                self._key().delete(RUN_VALUE)
                return True
            return False
        path = self.path
        assert path is not None
        if not wanted:
            if path.is_file():
                path.unlink()
                return True
            return False
        content = (
            launch_agent(self.command) if self.platform == "darwin" else desktop_entry(self.command).encode()
        )
        if path.is_file() and path.read_bytes() == content:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, content)
        return True


def subprocess_line(command: Sequence[str]) -> str:
    """``command`` as one Windows command line: the Run key holds a string, not a list."""
    return subprocess.list2cmdline(list(command))
