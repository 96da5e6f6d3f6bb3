"""Telling a microphone the operating system keeps from the app apart from a quiet room.

Neither macOS nor Windows says "access denied" to an app they keep from the microphone: the stream
opens and delivers digital silence, exact zeros, which no real microphone gives (its own noise is
never zero). So:

- :class:`SilentMicWatch` notices a capture that has given nothing but exact zeros for a few
  seconds and says, once, where the user allows access: System Settings > Privacy & Security >
  Microphone on macOS (the bundle's usage description is what the system asks with the first time),
  Settings > Privacy & security > Microphone on Windows. Linux desktops have no such switch, and
  virtual devices there are silent most of the time, so it stays quiet on Linux.
- :func:`windows_privacy_block` reads the Windows privacy switches before the stream opens (the
  device-wide one and "Let desktop apps access your microphone"), so the user hears the reason at
  once rather than after the silence.

Pure code: the engine feeds frames and asks; the registry is read through a small interface that
tests replace.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Final

__all__ = [
    "MACOS_SETTINGS_LINK",
    "SILENT_FOR_S",
    "WINDOWS_SETTINGS_LINK",
    "SilentMicWatch",
    "windows_privacy_block",
]

SILENT_FOR_S: Final = 3.0
MACOS_SETTINGS_LINK: Final = "x-apple.systempreferences:com.apple.preference.security?Privacy_Microphone"
WINDOWS_SETTINGS_LINK: Final = "ms-settings:privacy-microphone"
_CONSENT_KEY: Final = (
    r"Software\Microsoft\Windows\CurrentVersion\CapabilityAccessManager\ConsentStore\microphone"
)


def _message(platform: str) -> str | None:
    if platform == "darwin":
        return (
            "The microphone gives only digital silence: macOS may not allow Helpdesk Voice to use it. "
            f"Allow it in System Settings > Privacy & Security > Microphone ({MACOS_SETTINGS_LINK}), "
            "then start the conversation again."
        )
    if platform == "win32":
        return (
            "The microphone gives only digital silence: Windows may keep apps from using it. Turn on "
            "microphone access and 'Let desktop apps access your microphone' in Settings > Privacy & "
            f"security > Microphone ({WINDOWS_SETTINGS_LINK})."
        )
    return None


class SilentMicWatch:
    """Feed it every captured frame; it returns a message once, the first time the capture has been
    exact zeros for :data:`SILENT_FOR_S` seconds on a platform that can block the microphone."""

    def __init__(self, platform: str = sys.platform, silent_for_s: float = SILENT_FOR_S) -> None:
        self._message = _message(platform)
        self._silent_for_s = silent_for_s
        self._zeros_since: float | None = None
        self._said = False

    def feed(self, pcm16: bytes, at: float) -> str | None:
        if self._message is None or self._said:
            return None
        if pcm16.strip(b"\0"):  # any sound at all: the system lets the app hear
            self._zeros_since = None
            return None
        if self._zeros_since is None:
            self._zeros_since = at
        if at - self._zeros_since < self._silent_for_s:
            return None
        self._said = True
        return self._message

    def restart(self) -> None:
        """A new stream (device reopened or changed): judge it afresh."""
        self._zeros_since = None
        self._said = False


def windows_privacy_block(read: Callable[[int, str], str | None] | None = None) -> str | None:
    """Why Windows keeps desktop apps from the microphone, or None when it does not (or elsewhere).

    ``read(hive, subkey)`` returns the ``Value`` of that key ("Allow" or "Deny"), None when absent;
    the hive is 0 for the machine, 1 for the current user.
    """
    if read is None:
        if sys.platform != "win32":
            return None
        read = _read_consent
    if read(0, _CONSENT_KEY) == "Deny":
        return (
            "Windows turns off microphone access on this computer (an administrator's setting): "
            f"ask IT, or turn it on in Settings > Privacy & security > Microphone ({WINDOWS_SETTINGS_LINK})."
        )
    if read(1, _CONSENT_KEY) == "Deny" or read(1, _CONSENT_KEY + r"\NonPackaged") == "Deny":
        return (
            "Windows keeps desktop apps from the microphone: turn on 'Microphone access' and 'Let "
            "desktop apps access your microphone' in Settings > Privacy & security > Microphone "
            f"({WINDOWS_SETTINGS_LINK})."
        )
    return None


def _read_consent(hive: int, subkey: str) -> str | None:
    if sys.platform != "win32":
        return None
    import winreg

    root = winreg.HKEY_LOCAL_MACHINE if hive == 0 else winreg.HKEY_CURRENT_USER
    try:
        with winreg.OpenKey(root, subkey) as key:
            value, _kind = winreg.QueryValueEx(key, "Value")
    except OSError:
        return None
    return str(value)
