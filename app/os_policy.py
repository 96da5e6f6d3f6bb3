"""The policy an administrator sets through the operating system's own management tools.

Where each system keeps it:

- **Windows** (Group Policy, Intune): values under ``HKLM\\Software\\Policies\\HelpdeskVoice``, one
  per setting, named by the setting's dotted key (``endpoint.url``). ``REG_SZ`` holds text (and
  numbers or true/false written as text), ``REG_DWORD`` whole numbers and true/false as 1/0,
  ``REG_MULTI_SZ`` lists. The templates in ``packaging/policy/`` write exactly these.
- **macOS** (configuration profiles): the managed preferences of the bundle id :data:`BUNDLE_ID`,
  which the system writes to :data:`MANAGED_PREFERENCES`; keys are the dotted setting keys, or
  nested dictionaries of their parts, with the plist's own types.
- **Linux**: ``/etc/helpdesk-voice/policy.toml``, which is the site policy file itself, so there is
  nothing more to read here.

Every value set through these tools is **locked**: that is what Group Policy and a managed profile
mean to the people who use them, and neither has a natural place for "locked or not". A value an
admin wants users to be able to change goes into the policy file without a lock instead.

This layer sits *under* the site policy file: the file may set and lock what the OS leaves open
but never undo an OS lock, as the test policy of ``HELPDESK_VOICE_POLICY`` cannot undo the file's.
The OS tools are the ones an admin manages many machines with, so they get the last word.

This module only reads and converts to the types the settings schema asks for (the caller passes
each key's type, so this module needs nothing from :mod:`app.config`); checking the values and
failing closed is the caller's job. A policy that exists but cannot be read comes back with
:attr:`OsPolicy.error` set, so the caller can fail closed.
"""

from __future__ import annotations

import math
import plistlib
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol, TypeAlias

__all__ = [
    "BUNDLE_ID",
    "MANAGED_PREFERENCES",
    "REGISTRY_KEY",
    "REGISTRY_SOURCE",
    "REG_DWORD",
    "REG_EXPAND_SZ",
    "REG_MULTI_SZ",
    "REG_QWORD",
    "REG_SZ",
    "OsPolicy",
    "RegistryReader",
    "describe_source",
    "read_managed_preferences",
    "read_os_policy",
    "read_registry",
]

BUNDLE_ID: Final = "com.helpdeskvoice.app"
MANAGED_PREFERENCES: Final = Path("/Library/Managed Preferences") / f"{BUNDLE_ID}.plist"
REGISTRY_KEY: Final = r"Software\Policies\HelpdeskVoice"
# Not a file, but it names the source the way admins write it, and the lock bookkeeping of
# app/config.py (which maps each locked key to where the lock comes from) takes paths.
REGISTRY_SOURCE: Final = Path("HKLM\\" + REGISTRY_KEY)

# The registry's value types, with winreg's numbers, so that they exist where winreg does not.
REG_SZ: Final = 1
REG_EXPAND_SZ: Final = 2
REG_DWORD: Final = 4
REG_MULTI_SZ: Final = 7
REG_QWORD: Final = 11

_Kind: TypeAlias = type[str] | type[int] | type[float] | type[bool] | type[tuple[str, ...]]


class RegistryReader(Protocol):
    """One registry key's values, as ``winreg.EnumValue`` gives them: (name, data, type)."""

    def values(self) -> Iterable[tuple[str, object, int]] | None:
        """The key's values, or None when the key does not exist; raises OSError when it cannot be read."""
        ...


@dataclass(slots=True)
class OsPolicy:
    """What the OS-managed policy sets: values by dotted key, already in the schema's types where
    they could be converted (else as found, for the caller's check to refuse)."""

    source: Path | None = None  # None: this system has no OS-managed policy for the app
    values: dict[str, object] = field(default_factory=dict)
    error: str | None = None  # it exists but cannot be used as a whole: fail closed


def describe_source(source: Path) -> str:
    """How ``config show`` names a policy source: the mechanism for the OS's, else the file."""
    if source == REGISTRY_SOURCE:
        return "Windows registry"
    if source.suffix == ".plist":
        return "macOS profile"
    return str(source)


class _WinregReader:
    """The real registry (Windows only), read from its 64-bit view, where Group Policy writes."""

    def values(self) -> Iterable[tuple[str, object, int]] | None:
        if sys.platform != "win32":  # pragma: no cover - the caller only builds this on Windows
            return None
        import winreg

        try:
            key = winreg.OpenKey(
                winreg.HKEY_LOCAL_MACHINE, REGISTRY_KEY, 0, winreg.KEY_READ | winreg.KEY_WOW64_64KEY
            )
        except FileNotFoundError:
            return None
        with key:
            count = winreg.QueryInfoKey(key)[1]
            return [winreg.EnumValue(key, index) for index in range(count)]


def _from_text(kind: _Kind, text: str) -> object:
    """A REG_SZ as the setting's type where the text says one clearly; else the text, to be refused."""
    word = text.strip()
    if kind is bool:
        lowered = word.lower()
        if lowered in ("1", "true"):
            return True
        if lowered in ("0", "false"):
            return False
    elif kind is int:
        try:
            return int(word)
        except ValueError:
            pass
    elif kind is float:
        if not word:
            return 0.0  # an empty decimal field: not known, as in the environment
        try:
            number = float(word)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return number
    elif kind is tuple:
        return [part.strip() for part in word.split(",") if part.strip()]
    return text


def _from_registry(kind: _Kind | None, data: object, value_type: int) -> object:
    if value_type in (REG_DWORD, REG_QWORD) and isinstance(data, int):
        if kind is bool and data in (0, 1):
            return bool(data)
        return data
    if value_type in (REG_SZ, REG_EXPAND_SZ) and isinstance(data, str):
        return data if kind is None or kind is str else _from_text(kind, data)
    if value_type == REG_MULTI_SZ and isinstance(data, list):
        return [str(item) for item in data]
    return data  # another type (REG_BINARY...): left as it is, so the check refuses it by name


def read_registry(reader: RegistryReader, kinds: Mapping[str, _Kind]) -> OsPolicy:
    """The policy in the registry key ``reader`` reads; ``kinds`` gives each setting's type."""
    try:
        found = reader.values()
    except OSError as exc:
        return OsPolicy(REGISTRY_SOURCE, error=f"the policy in HKLM\\{REGISTRY_KEY} cannot be read ({exc})")
    if found is None:
        return OsPolicy()
    policy = OsPolicy(REGISTRY_SOURCE)
    for name, data, value_type in found:
        if name == "":
            continue  # the key's unnamed default value, which Group Policy never sets
        key = name.lower()  # registry names ignore case; setting keys are lower case
        policy.values[key] = _from_registry(kinds.get(key), data, value_type)
    return policy


def read_managed_preferences(path: Path) -> OsPolicy:
    """The policy of a configuration profile, from the managed-preferences plist at ``path``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return OsPolicy()
    except OSError as exc:
        return OsPolicy(path, error=f"the managed preferences {path} cannot be read ({exc.strerror or exc})")
    try:
        parsed = plistlib.loads(data)
    except Exception as exc:  # plistlib raises expat, value and overflow errors too: all mean "broken"
        return OsPolicy(path, error=f"the managed preferences {path} are not a valid plist ({exc})")
    if not isinstance(parsed, dict):
        return OsPolicy(path, error=f"the managed preferences {path} do not hold a dictionary")
    # Payload* keys are a profile's own bookkeeping, which some MDM tools leave in the preferences;
    # they are no settings, and every other unknown key fails closed in app/config.py.
    return OsPolicy(
        path, {str(key): value for key, value in parsed.items() if not str(key).startswith("Payload")}
    )


def read_os_policy(kinds: Mapping[str, _Kind]) -> OsPolicy:
    """This system's OS-managed policy; an empty one where the OS has none (Linux)."""
    if sys.platform == "win32":
        return read_registry(_WinregReader(), kinds)
    if sys.platform == "darwin":
        return read_managed_preferences(MANAGED_PREFERENCES)
    return OsPolicy()
