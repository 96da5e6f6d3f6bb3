"""Layered settings: built-in defaults < site policy < user settings < environment < command line.

- **Site policy** (admin, read-only): ``policy.toml`` at a place the platform fixes (Linux
  ``/etc/helpdesk-voice/policy.toml``; the machine-wide application data folder elsewhere), never one
  a user's environment can move. It sets values and can lock keys, either with a list
  (``locked = ["endpoint.url"]``, locking the key at the policy's or the built-in value) or with a
  table (``[locked]`` then ``endpoint.url = "wss://..."``, setting and locking at once). A locked key
  ignores every later layer, and :func:`save_user_setting` refuses it. ``HELPDESK_VOICE_POLICY``
  names one more policy on top, for tests: it can add values and locks but never undo the system's.
- **OS-managed policy** (:mod:`app.os_policy`: the Windows registry's Group Policy key, macOS managed
  preferences) sits under the policy file the same way: every value it sets is locked, and the file
  can add values and locks but never undo one of its locks.
- **User settings**: ``settings.toml`` in the user config folder (``HELPDESK_VOICE_CONFIG_DIR``
  overrides the folder), written atomically by :func:`save_user_setting`.
- **Environment**: ``HELPDESK_VOICE_<KEY>`` with dots as underscores (``HELPDESK_VOICE_ENDPOINT_URL``;
  ``HELPDESK_VOICE_INPUT_DEVICE`` and ``HELPDESK_VOICE_OUTPUT_DEVICE`` for the audio devices). Booleans
  are 1/0, true/false, yes/no, on/off; lists are comma-separated.
- **Command line**: a mapping of dotted keys to values, ``None`` meaning "not given".

:func:`load_settings` gives each value with its origin and lock (:meth:`LoadedSettings.value`,
for the Settings dialog and ``config show``) and all of them typed (:attr:`LoadedSettings.typed`,
a frozen :class:`Settings`, for the code that uses them). Settings that take one of a few values
carry their choices and labels in the schema (:attr:`Setting.choices`). The rules that span
settings are :mod:`app.settings_rules`.

An endpoint URL from the policy, the environment or the command line means "use that server"
(backend ``custom``) unless the policy locks the backend: then the URL is ignored and said so.

Nothing here crashes the app: every problem (bad TOML, a wrong type, a value out of range, an unknown
key) becomes one line in :attr:`LoadedSettings.problems`. A bad value in the user file is ignored
alone; a user file that is not valid TOML is renamed to ``settings.toml.corrupt-<timestamp>``. The
policy file is never touched, and a policy that cannot be used **fails closed**: the settings that
decide where speech goes and what is kept (:attr:`Setting.fail_closed`) are locked to their safest
values until the administrator fixes it; a locked key whose policy value is invalid is locked to its
safest value too.

Secrets never live in these files: a key that looks like one (``api_key``, ``token``, ``password``...)
is refused with a warning and not loaded, and the API key is kept in the OS keyring through
:data:`secrets` (or comes from ``HELPDESK_VOICE_API_KEY``).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, TypeAlias, TypeVar

import platformdirs

from app import defaults, os_policy
from app.fileio import write_atomically
from app.paths import APP_NAME
from app.realtime.endpoint import (
    API_KEY_ENV,
    KEYRING_SERVICE,
    KEYRING_USERNAME,
    KeyStoreError,
    lookup_api_key,
    redact_url,
    store_api_key,
)

__all__ = [
    "BACKEND_CHOICES",
    "CONFIG_DIR_ENV",
    "DIAGNOSTIC_FIELDS",
    "EAGERNESS_CHOICES",
    "ENV_PREFIX",
    "KNOWN_TOOLS",
    "POLICY_ENV",
    "SENSITIVITY_CHOICES",
    "SETTINGS",
    "TICKET_SYSTEMS_WITH_ARTICLES",
    "TICKET_SYSTEM_CHOICES",
    "TOKEN_AUTH_CHOICES",
    "TURN_DETECTION_CHOICES",
    "AudioDeviceSettings",
    "Backend",
    "BargeInSettings",
    "ConfigError",
    "ConfigPaths",
    "Eagerness",
    "EndpointSettings",
    "IntRange",
    "LoadedSettings",
    "Origin",
    "SecretStoreError",
    "Sensitivity",
    "Setting",
    "Settings",
    "ToolSettings",
    "TranscriptSettings",
    "TurnDetectionKind",
    "Value",
    "config_main",
    "config_paths",
    "load_settings",
    "save_user_setting",
    "secrets",
    "typed_settings",
    "validate_setting",
]

Origin: TypeAlias = Literal["default", "policy", "user", "env", "cli"]
Value: TypeAlias = str | int | float | bool | tuple[str, ...]
Backend: TypeAlias = Literal["embedded", "openai", "azure", "custom"]
TurnDetectionKind: TypeAlias = Literal["server_vad", "semantic_vad"]
Eagerness: TypeAlias = Literal["auto", "low", "medium", "high"]
Sensitivity: TypeAlias = Literal["low", "medium", "high"]
TicketSystem: TypeAlias = Literal["none", "rt", "servicenow", "jsm", "webhook"]
TokenAuthKind: TypeAlias = Literal["device_credential", "integrated"]

ENV_PREFIX: Final = "HELPDESK_VOICE_"
POLICY_ENV: Final = "HELPDESK_VOICE_POLICY"
CONFIG_DIR_ENV: Final = "HELPDESK_VOICE_CONFIG_DIR"
POLICY_FILE: Final = "policy.toml"
USER_FILE: Final = "settings.toml"
KNOWN_TOOLS: Final = (
    "search_knowledge_base",
    "create_ticket",
    "get_ticket_status",
    "request_human",
    "attach_diagnostics",
)
# What the diagnostics a user agrees to send may hold (app/tools/diagnostics.py collects each).
DIAGNOSTIC_FIELDS: Final = ("os", "uptime", "disk", "power", "network", "vpn", "dns", "reachability", "audio")
# A key part named like this holds a secret, which belongs in the keyring, never in a file. Whole
# names, so that a setting such as ``max_tokens`` or ``token_limit`` is not taken for one.
_SECRET_KEY: Final = re.compile(
    r"(\w*[_-])?(api[_-]?key|token|password|passwd|secret|credentials?)", re.IGNORECASE
)
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")


class ConfigError(ValueError):
    """A setting cannot be saved: unknown key, invalid value, locked by policy or a failed write."""


# ---------------------------------------------------------------------------------------------------
# The schema
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntRange:
    """The check of a whole number from ``low`` to ``high``; an object, so the policy templates can
    give Group Policy the same bounds."""

    low: int
    high: int

    def __call__(self, value: Value) -> str | None:
        assert isinstance(value, int)
        if self.low <= value <= self.high:
            return None
        return f"must be a whole number from {self.low} to {self.high}, not {value}"


_int_range = IntRange


def _minutes_or_unknown(low: float, high: float) -> Callable[[Value], str | None]:
    def check(value: Value) -> str | None:
        assert isinstance(value, float)
        if value == 0 or low <= value <= high:
            return None
        return f"must be 0 (not known) or from {low:g} to {high:g} minutes, not {value:g}"

    return check


def _ws_url(value: Value) -> str | None:
    assert isinstance(value, str)
    if value == "":
        return None  # no endpoint configured
    if any(ch.isspace() for ch in value):
        return "must not contain spaces or line breaks"
    if not value.lower().startswith(("ws://", "wss://")):
        return f"must start with ws:// or wss://, not {redact_url(value)!r}"
    if "@" in value.split("/", 3)[2]:
        return "must not contain a user name or password; store the API key in the keyring instead"
    return None


def _http_url(value: Value) -> str | None:
    assert isinstance(value, str)
    if value == "":
        return None  # none set up
    if any(ch.isspace() for ch in value):
        return "must not contain spaces or line breaks"
    if not value.lower().startswith(("https://", "http://")):
        return f"must start with https:// or http://, not {redact_url(value)!r}"
    if "@" in value.split("/", 3)[2]:
        return "must not contain a user name or password; store the credential in the keyring instead"
    return None


def _no_spaces(value: Value) -> str | None:
    assert isinstance(value, str)
    return "must not contain spaces" if any(ch.isspace() for ch in value) else None


def _not_blank(value: Value) -> str | None:
    assert isinstance(value, str)
    return "must not be empty" if not value.strip() else None


def _names_from(known: tuple[str, ...], what: str) -> Callable[[Value], str | None]:
    def check(value: Value) -> str | None:
        assert isinstance(value, tuple)
        unknown = [name for name in value if name not in known]
        if unknown:
            return f"names unknown {what}s ({', '.join(unknown)}); known {what}s: {', '.join(known)}"
        if len(set(value)) != len(value):
            return f"lists a {what} twice"
        return None

    return check


_tools = _names_from(KNOWN_TOOLS, "tool")


def _host_names(value: Value) -> str | None:
    assert isinstance(value, tuple)
    bad = [name for name in value if not name or any(ch.isspace() or ch in "/@:" for ch in name)]
    return f"must be host names (no scheme, port or path), not {', '.join(map(repr, bad))}" if bad else None


# Each choice with the label people see (the Settings dialog, policy templates). The values are
# typed with the Literal the typed settings use, so a choice added here without the type fails mypy.
BACKEND_CHOICES: Final[tuple[tuple[Backend, str], ...]] = (
    ("embedded", "Embedded (offline)"),
    ("openai", "OpenAI"),
    ("azure", "Azure OpenAI"),
    ("custom", "Custom URL"),
)
TURN_DETECTION_CHOICES: Final[tuple[tuple[TurnDetectionKind, str], ...]] = (
    ("server_vad", "Pause-based (server VAD)"),
    ("semantic_vad", "Meaning-based (semantic VAD)"),
)
EAGERNESS_CHOICES: Final[tuple[tuple[Eagerness, str], ...]] = (
    ("auto", "Automatic"),
    ("low", "Low: lets you finish"),
    ("medium", "Medium"),
    ("high", "High: answers quickly"),
)
SENSITIVITY_CHOICES: Final[tuple[tuple[Sensitivity, str], ...]] = (
    ("low", "Low: only clear speech interrupts"),
    ("medium", "Medium"),
    ("high", "High: any speech interrupts"),
)
TICKET_SYSTEM_CHOICES: Final[tuple[tuple[TicketSystem, str], ...]] = (
    ("none", "None: keep tickets on this computer"),
    ("rt", "Request Tracker"),
    ("servicenow", "ServiceNow"),
    ("jsm", "Jira Service Management"),
    ("webhook", "Webhook"),
)
TOKEN_AUTH_CHOICES: Final[tuple[tuple[TokenAuthKind, str], ...]] = (
    ("device_credential", "This computer's device credential"),
    ("integrated", "My company sign-in (Windows or Kerberos)"),
)
# The ticket systems whose own knowledge base the app can read (kb.ticket_system_articles): Jira
# Service Management's lives in Confluence, behind another API and account, and a webhook has none.
TICKET_SYSTEMS_WITH_ARTICLES: Final[tuple[TicketSystem, ...]] = ("rt", "servicenow")


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its dotted key, type, built-in default, check and environment variable.

    ``choices`` lists, for a setting that takes one of a few values, each value with the label people
    see; any other value is refused.
    """

    key: str
    kind: type[str] | type[int] | type[float] | type[bool] | type[tuple[str, ...]]
    default: Value
    check: Callable[[Value], str | None] | None = None
    env_aliases: tuple[str, ...] = ()
    help: str = ""
    # The safest value, which a site policy that cannot be used locks this setting to; None for
    # settings that do not decide where speech goes or what is kept (devices, voice, timing).
    fail_closed: Value | None = None
    choices: tuple[tuple[str, str], ...] = ()

    @property
    def choice_values(self) -> tuple[str, ...]:
        return tuple(value for value, _ in self.choices)

    def label(self, value: str) -> str:
        """The label of choice ``value``, or the value itself when it is not one of the choices."""
        return dict(self.choices).get(value, value)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper().replace(".", "_")

    @property
    def type_name(self) -> str:
        return {
            str: "text",
            int: "a whole number",
            float: "a number",
            bool: "true or false",
            tuple: "a list of names",
        }[self.kind]


_SETTINGS: Final = (
    Setting("backend", str, "embedded", fail_closed="embedded", choices=BACKEND_CHOICES),
    Setting(
        "endpoint.url",
        str,
        "",
        _ws_url,
        help="ws:// or wss:// URL of a custom realtime server",
        fail_closed="",
    ),
    Setting("endpoint.model", str, "gpt-realtime", _no_spaces),
    Setting("endpoint.azure_resource", str, "", _no_spaces),
    Setting("endpoint.azure_deployment", str, "", _no_spaces),
    Setting(
        "endpoint.token_url",
        str,
        "",
        _http_url,
        help="the company's token service, https://...; laptops then hold no API key (short-lived secrets)",
    ),
    Setting(
        "endpoint.token_auth",
        str,
        "device_credential",
        choices=TOKEN_AUTH_CHOICES,
        help=(
            "how this computer proves itself to the token service: its device credential (keyring) or "
            "the signed-in user's company login (Kerberos / Windows integrated authentication)"
        ),
    ),
    Setting(
        "endpoint.session_minutes",
        float,
        0.0,
        _minutes_or_unknown(0.1, 1440.0),
        help=(
            "how many minutes the custom server lets a session last (0 or empty: not known); the app "
            "opens a fresh session shortly before"
        ),
    ),
    Setting("voice", str, defaults.VOICE, _not_blank),
    Setting("instructions", str, defaults.INSTRUCTIONS, _not_blank),
    Setting(
        "turn_detection",
        str,
        "server_vad",
        choices=TURN_DETECTION_CHOICES,
        help=(
            "how the end of the user's turn is found: a pause of silence_ms (server_vad), or each "
            "short pause judged by meaning (semantic_vad: the offline assistant's words and voice model)"
        ),
    ),
    Setting("eagerness", str, "auto", choices=EAGERNESS_CHOICES),
    Setting("silence_ms", int, defaults.SILENCE_MS, _int_range(200, 2000)),
    Setting("barge_in.sensitivity", str, "medium", choices=SENSITIVITY_CHOICES),
    Setting("push_to_talk", bool, False),
    Setting("start_at_login", bool, False, help="start the tray app when the user logs in"),
    Setting("audio.input_device", str, "", env_aliases=(ENV_PREFIX + "INPUT_DEVICE",)),
    Setting("audio.output_device", str, "", env_aliases=(ENV_PREFIX + "OUTPUT_DEVICE",)),
    Setting("audio.block_ms", int, 10, _int_range(5, 40)),
    Setting(
        "audio.echo_cancellation",
        bool,
        True,
        help="remove the assistant's own voice from the microphone (laptop speakers)",
    ),
    Setting("transcript.retention_days", int, 7, _int_range(0, 3650), fail_closed=0),
    Setting("tools.allowed", tuple, KNOWN_TOOLS, _tools),
    Setting(
        "tickets.system",
        str,
        "none",
        choices=TICKET_SYSTEM_CHOICES,
        help="the company's ticket system the assistant's tickets go to; none keeps them on this computer",
    ),
    Setting("tickets.url", str, "", _http_url, help="the ticket system's address, https://..."),
    Setting("tickets.queue", str, "General", help="Request Tracker: the queue new tickets go to"),
    Setting("tickets.user", str, "", help="ServiceNow: the API user; Jira Service Management: the e-mail"),
    Setting("tickets.service_desk_id", str, "", _no_spaces, help="Jira Service Management: the service desk"),
    Setting("tickets.request_type_id", str, "", _no_spaces, help="Jira Service Management: the request type"),
    Setting("tickets.assignment_group", str, "", help="ServiceNow: the group new incidents go to (optional)"),
    Setting(
        "tickets.contact", str, "", help="the user's e-mail address, so tickets and their status find them"
    ),
    Setting(
        "handoff.phone", str, "", help="the helpdesk's phone number, told to a user who asks for a person"
    ),
    Setting("handoff.chat_url", str, "", _http_url, help="a chat with the helpdesk's people, https://..."),
    Setting(
        "handoff.callback",
        str,
        "",
        help="when a person calls back, in words the assistant says (for example: within two working hours)",
    ),
    Setting(
        "diagnostics.enabled", bool, True, help="the assistant may offer to attach this computer's facts"
    ),
    Setting(
        "diagnostics.fields",
        tuple,
        DIAGNOSTIC_FIELDS,
        _names_from(DIAGNOSTIC_FIELDS, "field"),
        help="which facts diagnostics may hold",
    ),
    Setting(
        "diagnostics.hosts",
        tuple,
        (),
        _host_names,
        help="hosts whose name and reachability diagnostics check",
    ),
    Setting(
        "kb.folders",
        tuple,
        (),
        help="folders of the company's own articles (Markdown, HTML or text), beside the shipped ones",
    ),
    Setting(
        "kb.ticket_system_articles",
        bool,
        False,
        help=(
            "also use the ticket system's own knowledge base (Request Tracker articles, ServiceNow "
            "knowledge), copied to this computer and kept up to date every few minutes"
        ),
    ),
)
SETTINGS: Final[Mapping[str, Setting]] = {s.key: s for s in _SETTINGS}


def _typed(setting: Setting, raw: object) -> Value:
    """``raw`` as the setting's type, or a ValueError saying what was expected."""
    if setting.kind is bool:
        if isinstance(raw, bool):
            return raw
    elif setting.kind is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
            return int(raw)
    elif setting.kind is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw):
            return float(raw)
    elif setting.kind is tuple:
        if isinstance(raw, list | tuple) and all(isinstance(item, str) for item in raw):
            return tuple(item.strip() for item in raw)
    elif isinstance(raw, str):
        return raw
    raise ValueError(f"{setting.key} must be {setting.type_name}, not {_describe_value(raw)}")


def _parse_text(setting: Setting, text: str) -> Value:
    """A value given as text (environment, command line) as the setting's type."""
    if setting.kind is bool:
        word = text.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{setting.key} must be true or false (1/0, yes/no, on/off), not {text!r}")
    if setting.kind is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError(f"{setting.key} must be a whole number, not {text!r}") from None
    if setting.kind is float:
        if not text.strip():
            return 0.0  # an empty field or variable: not known
        try:
            number = float(text.strip())
        except ValueError:
            raise ValueError(f"{setting.key} must be a number, not {text!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"{setting.key} must be a number, not {text!r}")
        return number
    if setting.kind is tuple:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    return text


def _validate(setting: Setting, raw: object, *, from_text: bool = False) -> Value:
    """The checked value, or a ValueError with one clear sentence naming the key."""
    value = _parse_text(setting, raw) if from_text and isinstance(raw, str) else _typed(setting, raw)
    if setting.choices and value not in setting.choice_values:
        raise ValueError(f"{setting.key} must be one of {', '.join(setting.choice_values)}, not {value!r}")
    if setting.check is not None:
        problem = setting.check(value)
        if problem is not None:
            raise ValueError(f"{setting.key} {problem}")
    return value


def _describe_value(raw: object) -> str:
    if isinstance(raw, dict):
        return "a table"
    if isinstance(raw, list | tuple):
        return "a list"
    if isinstance(raw, bool):
        return f"the boolean {str(raw).lower()}"
    if isinstance(raw, int | float):
        return f"the number {raw}"
    if isinstance(raw, str):
        return f"the text {raw[:40]!r}"
    return f"a {type(raw).__name__}"


def validate_setting(key: str, raw: object) -> Value:
    """``raw`` checked as :func:`save_user_setting` would check it, as the setting's type.

    Lets a form report every bad field before anything is saved. Text is parsed for numbers and
    booleans (``"45"`` is 45). Raises :class:`ConfigError` with one clear sentence naming the key.
    """
    setting = SETTINGS.get(key)
    if setting is None:
        raise ConfigError(f"unknown setting {key!r}; known settings: {', '.join(SETTINGS)}")
    try:
        return _validate(setting, raw, from_text=setting.kind is not str)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


# ---------------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigPaths:
    """The system's policy, the extra policy of ``HELPDESK_VOICE_POLICY`` (tests) and the user file."""

    policy: Path
    user: Path
    extra_policy: Path | None = None


def system_policy_path() -> Path:
    """The machine's policy file, at a place no user setting or environment variable can move.

    On Linux platformdirs follows ``XDG_CONFIG_DIRS``, which every user controls, so the path is
    fixed instead; on Windows and macOS platformdirs asks the system for the machine-wide folder.
    """
    if sys.platform.startswith("linux"):
        return Path("/etc") / APP_NAME / POLICY_FILE
    return platformdirs.site_config_path(APP_NAME, appauthor=False) / POLICY_FILE


def config_paths(environ: Mapping[str, str] = os.environ) -> ConfigPaths:
    """Where the site policy and the user settings live (environment overrides applied)."""
    policy_override = environ.get(POLICY_ENV, "").strip()
    extra = Path(policy_override).expanduser() if policy_override else None
    dir_override = environ.get(CONFIG_DIR_ENV, "").strip()
    user_dir = (
        Path(dir_override).expanduser()
        if dir_override
        else platformdirs.user_config_path(APP_NAME, appauthor=False)
    )
    return ConfigPaths(system_policy_path(), user_dir / USER_FILE, extra)


# ---------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------


def _flatten(table: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """``{"endpoint": {"url": x}}`` as ``{"endpoint.url": x}``; a known key keeps its value whole."""
    flat: dict[str, object] = {}
    for name, value in table.items():
        key = f"{prefix}{name}"
        if key not in SETTINGS and isinstance(value, dict):
            flat.update(_flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def _is_secret_key(key: str) -> bool:
    return any(_SECRET_KEY.fullmatch(part) for part in key.split("."))


@dataclass(slots=True)
class _Layer:
    values: dict[str, Value] = field(default_factory=dict)
    locked: dict[str, Path] = field(default_factory=dict)  # key -> the policy file that locks it
    # Unknown keys (perhaps from a newer version) and refused values, written back on save so that
    # nothing the user wrote is lost.
    kept: dict[str, object] = field(default_factory=dict)
    invalid: set[str] = field(default_factory=set)  # known keys whose value was refused
    problems: list[str] = field(default_factory=list)
    unreadable: bool = False  # it exists but cannot be read: never set aside nor overwritten
    sources: dict[str, Path] = field(default_factory=dict)  # policy key -> the policy its value is from


class _Unreadable(Exception):
    """The file exists but cannot be read (permissions, a folder in its place): leave it alone."""


def _read_toml(path: Path, label: str) -> tuple[dict[str, object] | None, str | None]:
    """The parsed file (None when it does not exist) or the one-line reason its content is bad.

    Raises :class:`_Unreadable` when the file cannot be read at all.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        raise _Unreadable(f"{label} {path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        return tomllib.loads(data.decode("utf-8")), None
    except UnicodeDecodeError:
        return None, f"{label} {path} is not UTF-8 text"
    except tomllib.TOMLDecodeError as exc:
        return None, f"{label} {path} is not valid TOML ({exc})"


def _take_values(flat: Mapping[str, object], label: str, layer: _Layer) -> None:
    """Checks each value on its own: one bad value never costs the others."""
    unknown: list[str] = []
    for key, raw in flat.items():
        if _is_secret_key(key):
            layer.problems.append(
                f"{label}: {key!r} looks like a secret and was not loaded; secrets belong in the OS keyring "
                f"(or {API_KEY_ENV}), never in a settings file: remove it from the file"
            )
            continue
        setting = SETTINGS.get(key)
        if setting is None:
            unknown.append(key)
            layer.kept[key] = raw
            continue
        try:
            layer.values[key] = _validate(setting, raw)
        except ValueError as exc:
            layer.problems.append(f"{label}: {exc}; ignored")
            layer.invalid.add(key)
            layer.kept[key] = raw
    if unknown:
        layer.problems.append(f"{label}: unknown settings ignored: {', '.join(sorted(unknown))}")


def _safest(setting: Setting) -> Value:
    return setting.default if setting.fail_closed is None else setting.fail_closed


def _fail_closed(layer: _Layer, path: Path, reason: str) -> _Layer:
    """Locks what decides where speech goes and what is kept to its safest value, and says why."""
    closed = [setting for setting in _SETTINGS if setting.fail_closed is not None]
    for setting in closed:
        layer.values[setting.key] = _safest(setting)
        layer.locked[setting.key] = path
    shown = ", ".join(f"{s.key} = {_display(s.key, _safest(s))}" for s in closed)
    layer.problems.append(
        f"{reason}; until your administrator fixes it these settings are locked to their safest "
        f"values: {shown}"
    )
    return layer


def _read_policy(path: Path) -> _Layer:
    layer = _Layer()
    label = f"site policy {path}"
    try:
        data, reason = _read_toml(path, "site policy")
    except _Unreadable as exc:
        data, reason = None, str(exc)
    if reason is not None:
        return _fail_closed(layer, path, reason)
    if data is None:
        return layer
    locked_raw = data.pop("locked", [])
    locked_table: dict[str, object] = {}
    locked_list: list[str] = []
    bad_locks = False
    if isinstance(locked_raw, dict):
        locked_table = _flatten(locked_raw)
        locked_list = list(locked_table)
    elif isinstance(locked_raw, list) and all(isinstance(key, str) for key in locked_raw):
        locked_list = locked_raw
    else:
        bad_locks = True
    flat = _flatten(data)
    flat.update(locked_table)
    # An admin's typo must not undo the other settings or any lock: a bad value is skipped alone.
    _take_values(flat, label, layer)
    unknown_locks = sorted(key for key in locked_list if key not in SETTINGS)
    layer.locked = {key: path for key in locked_list if key in SETTINGS}
    _lock_invalid_to_safest(layer, label)
    if bad_locks:
        return _fail_closed(layer, path, f"{label}: 'locked' must be a list of setting names or a table")
    if unknown_locks:
        # A misspelt lock may be the one that mattered, and which one cannot be known: fail closed.
        return _fail_closed(layer, path, f"{label}: cannot lock unknown settings: {', '.join(unknown_locks)}")
    return layer


def _lock_invalid_to_safest(layer: _Layer, label: str) -> None:
    for key in sorted(layer.locked.keys() & layer.invalid):
        # The admin meant to pin this key but wrote a value that cannot be used: fail closed.
        safest = _safest(SETTINGS[key])
        layer.values[key] = safest
        layer.problems.append(f"{label}: {key} stays locked, to its safest value {_display(key, safest)}")


def _policy_name(source: Path) -> str:
    mechanism = os_policy.describe_source(source)
    return f"the system policy {source}" if mechanism == str(source) else f"the {mechanism} policy {source}"


def _read_os_policy() -> _Layer:
    """The OS-managed policy (app/os_policy.py), where every value is locked; fails closed like a file."""
    found = os_policy.read_os_policy({setting.key: setting.kind for setting in _SETTINGS})
    layer = _Layer()
    if found.source is None:
        return layer
    if found.error is not None:
        layer = _fail_closed(layer, found.source, found.error)
    else:
        label = _policy_name(found.source)
        flat = _flatten(found.values)
        _take_values(flat, label, layer)
        layer.locked = {key: found.source for key in flat if key in SETTINGS}
        _lock_invalid_to_safest(layer, label)
        # Every value here is a lock, so a misspelt name is a misspelt lock: fail closed, as the file does.
        unknown = sorted(key for key in flat if key not in SETTINGS and not _is_secret_key(key))
        if unknown:
            layer = _fail_closed(
                layer, found.source, f"{label}: cannot lock unknown settings: {', '.join(unknown)}"
            )
    layer.sources = dict.fromkeys(layer.values, found.source)
    return layer


def _read_policies(paths: ConfigPaths) -> _Layer:
    """The OS-managed policy, then the system's policy file and the extra one, each on top where the
    locks under it allow (app/os_policy.py says why the OS's comes first)."""
    merged = _read_os_policy()
    files = [paths.policy]
    if paths.extra_policy is not None and paths.extra_policy != paths.policy:
        files.append(paths.extra_policy)
    for path in files:
        upper = _read_policy(path)
        merged.problems += upper.problems
        for key, value in upper.values.items():
            if key in merged.locked:
                if merged.values.get(key, SETTINGS[key].default) != value:
                    merged.problems.append(
                        f"site policy {path}: {key} is locked by {_policy_name(merged.locked[key])}; "
                        "its value here is ignored"
                    )
                continue
            merged.values[key] = value
            merged.sources[key] = path
        for key, source in upper.locked.items():
            merged.locked.setdefault(key, source)
    backend = merged.values.get("backend", SETTINGS["backend"].default)
    if "backend" in merged.locked and backend != "custom":
        # The URL only serves the custom backend: left open, it would be a way around the lock.
        merged.locked.setdefault("endpoint.url", merged.locked["backend"])
    return merged


def _set_aside(path: Path) -> Path | None:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime())
    for attempt in range(100):
        target = path.with_name(f"{path.name}.corrupt-{stamp}" + (f"-{attempt}" if attempt else ""))
        if target.exists():
            continue
        try:
            os.replace(path, target)
        except OSError:
            return None
        return target
    return None


def _read_user(path: Path) -> _Layer:
    layer = _Layer()
    try:
        data, reason = _read_toml(path, "user settings")
    except _Unreadable as exc:
        layer.problems.append(f"{exc}; built-in values are used")
        layer.unreadable = True
        return layer
    if data is not None:
        _take_values(_flatten(data), f"user settings {path}", layer)
        return layer
    if reason is None:
        return layer
    moved = _set_aside(path)
    where = f"moved to {moved.name}" if moved else "could not be moved aside"
    layer.problems.append(f"{reason}; the file was {where} and built-in values are used")
    return layer


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointSettings:
    """``endpoint.*``: where a cloud or custom backend connects (the API key is never here)."""

    url: str
    model: str
    azure_resource: str
    azure_deployment: str
    session_minutes: float  # how long the custom server lets a session last; 0: not known
    token_url: str = ""  # the token service handing out short-lived secrets; "": the API key is used
    token_auth: TokenAuthKind = "device_credential"  # how the laptop proves itself to that service


@dataclass(frozen=True, slots=True)
class BargeInSettings:
    """``barge_in.*``."""

    sensitivity: Sensitivity


@dataclass(frozen=True, slots=True)
class AudioDeviceSettings:
    """``audio.*``: device names ("" is the system default), block size and echo cancellation."""

    input_device: str
    output_device: str
    block_ms: int
    echo_cancellation: bool


@dataclass(frozen=True, slots=True)
class TranscriptSettings:
    """``transcript.*``."""

    retention_days: int


@dataclass(frozen=True, slots=True)
class ToolSettings:
    """``tools.*``."""

    allowed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TicketSettings:
    """``tickets.*``: where delivered tickets go (the credential is never here: it is in the keyring)."""

    system: TicketSystem
    url: str
    queue: str
    user: str
    service_desk_id: str
    request_type_id: str
    assignment_group: str
    contact: str


@dataclass(frozen=True, slots=True)
class HandoffSettings:
    """``handoff.*``: how a person from the helpdesk reaches a user who asks for one."""

    phone: str
    chat_url: str
    callback: str


@dataclass(frozen=True, slots=True)
class DiagnosticsSettings:
    """``diagnostics.*``: whether the assistant may offer them, what they hold, which hosts they check."""

    enabled: bool
    fields: tuple[str, ...]
    hosts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class KnowledgeSettings:
    """``kb.*``: the company's own articles."""

    folders: tuple[str, ...]
    ticket_system_articles: bool  # the knowledge base of ``tickets.system`` too, where it has one


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective values with their real types, one attribute per dotted key.

    ``settings.audio.block_ms`` is ``value("audio.block_ms")``, as an int. Origins and locks are not
    here; they stay on :class:`LoadedSettings`, which builds this once all layers are merged.
    """

    backend: Backend
    endpoint: EndpointSettings
    voice: str
    instructions: str
    turn_detection: TurnDetectionKind
    eagerness: Eagerness
    silence_ms: int
    barge_in: BargeInSettings
    push_to_talk: bool
    start_at_login: bool
    audio: AudioDeviceSettings
    transcript: TranscriptSettings
    tools: ToolSettings
    tickets: TicketSettings
    handoff: HandoffSettings
    diagnostics: DiagnosticsSettings
    kb: KnowledgeSettings


_L = TypeVar("_L", bound=str)


def _one_of(values: Mapping[str, Value], key: str, choices: tuple[tuple[_L, str], ...]) -> _L:
    for choice, _ in choices:
        if values[key] == choice:
            return choice
    raise ValueError(f"{key} must be one of {', '.join(c for c, _ in choices)}, not {values[key]!r}")


def _text_of(values: Mapping[str, Value], key: str) -> str:
    value = values[key]
    if not isinstance(value, str):
        raise ValueError(f"{key} must be text, not {value!r}")
    return value


def _int_of(values: Mapping[str, Value], key: str) -> int:
    value = values[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key} must be a whole number, not {value!r}")
    return value


def _number_of(values: Mapping[str, Value], key: str) -> float:
    value = values[key]
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{key} must be a number, not {value!r}")
    return float(value)


def _bool_of(values: Mapping[str, Value], key: str) -> bool:
    value = values[key]
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, not {value!r}")
    return value


def _names_of(values: Mapping[str, Value], key: str) -> tuple[str, ...]:
    value = values[key]
    if not isinstance(value, tuple):
        raise ValueError(f"{key} must be a list of names, not {value!r}")
    return value


def typed_settings(values: Mapping[str, Value]) -> Settings:
    """The typed view of checked values (every key of :data:`SETTINGS`).

    Raises ValueError for a value of the wrong type, which :func:`load_settings` never lets through:
    it means a bug, and is better found here than as a wrong type deep in the engine.
    """
    return Settings(
        backend=_one_of(values, "backend", BACKEND_CHOICES),
        endpoint=EndpointSettings(
            url=_text_of(values, "endpoint.url"),
            model=_text_of(values, "endpoint.model"),
            azure_resource=_text_of(values, "endpoint.azure_resource"),
            azure_deployment=_text_of(values, "endpoint.azure_deployment"),
            session_minutes=_number_of(values, "endpoint.session_minutes"),
            token_url=_text_of(values, "endpoint.token_url"),
            token_auth=_one_of(values, "endpoint.token_auth", TOKEN_AUTH_CHOICES),
        ),
        voice=_text_of(values, "voice"),
        instructions=_text_of(values, "instructions"),
        turn_detection=_one_of(values, "turn_detection", TURN_DETECTION_CHOICES),
        eagerness=_one_of(values, "eagerness", EAGERNESS_CHOICES),
        silence_ms=_int_of(values, "silence_ms"),
        barge_in=BargeInSettings(sensitivity=_one_of(values, "barge_in.sensitivity", SENSITIVITY_CHOICES)),
        push_to_talk=_bool_of(values, "push_to_talk"),
        start_at_login=_bool_of(values, "start_at_login"),
        audio=AudioDeviceSettings(
            input_device=_text_of(values, "audio.input_device"),
            output_device=_text_of(values, "audio.output_device"),
            block_ms=_int_of(values, "audio.block_ms"),
            echo_cancellation=_bool_of(values, "audio.echo_cancellation"),
        ),
        transcript=TranscriptSettings(retention_days=_int_of(values, "transcript.retention_days")),
        tools=ToolSettings(allowed=_names_of(values, "tools.allowed")),
        tickets=TicketSettings(
            system=_one_of(values, "tickets.system", TICKET_SYSTEM_CHOICES),
            url=_text_of(values, "tickets.url"),
            queue=_text_of(values, "tickets.queue"),
            user=_text_of(values, "tickets.user"),
            service_desk_id=_text_of(values, "tickets.service_desk_id"),
            request_type_id=_text_of(values, "tickets.request_type_id"),
            assignment_group=_text_of(values, "tickets.assignment_group"),
            contact=_text_of(values, "tickets.contact"),
        ),
        handoff=HandoffSettings(
            phone=_text_of(values, "handoff.phone"),
            chat_url=_text_of(values, "handoff.chat_url"),
            callback=_text_of(values, "handoff.callback"),
        ),
        diagnostics=DiagnosticsSettings(
            enabled=_bool_of(values, "diagnostics.enabled"),
            fields=_names_of(values, "diagnostics.fields"),
            hosts=_names_of(values, "diagnostics.hosts"),
        ),
        kb=KnowledgeSettings(
            folders=_names_of(values, "kb.folders"),
            ticket_system_articles=_bool_of(values, "kb.ticket_system_articles"),
        ),
    )


@dataclass(frozen=True, slots=True)
class LoadedSettings:
    """Every setting's effective value, the layer it came from, and whether policy locks it.

    :attr:`typed` holds the same values with their types, for code that uses them (the launch
    plan); :meth:`value` and the origins and locks serve what shows them per key (the Settings
    dialog, ``config show``).
    """

    values: Mapping[str, Value]
    origins: Mapping[str, Origin]
    locked_by: Mapping[str, Path]  # locked key -> the policy file that locks it
    problems: list[str]
    paths: ConfigPaths
    typed: Settings
    # policy key -> the policy its value is from: a file, or an OS source of app/os_policy.py
    policy_sources: Mapping[str, Path] = field(default_factory=dict)

    @property
    def locks(self) -> frozenset[str]:
        return frozenset(self.locked_by)

    def value(self, key: str) -> Value:
        return self.values[_known(key)]

    def origin(self, key: str) -> Origin:
        return self.origins[_known(key)]

    def locked(self, key: str) -> bool:
        return _known(key) in self.locked_by

    def policy_of(self, key: str) -> Path | None:
        """The policy file that locks ``key``, or None when it is not locked."""
        return self.locked_by.get(_known(key))


def _known(key: str) -> str:
    if key not in SETTINGS:
        raise KeyError(f"unknown setting {key!r}; known settings: {', '.join(SETTINGS)}")
    return key


def _env_values(environ: Mapping[str, str], problems: list[str]) -> dict[str, tuple[str, Value]]:
    found: dict[str, tuple[str, Value]] = {}
    for setting in _SETTINGS:
        for name in (setting.env, *setting.env_aliases):  # the full name wins over an alias
            if name not in environ:
                continue
            try:
                found[setting.key] = (name, _validate(setting, environ[name], from_text=True))
            except ValueError as exc:
                problems.append(f"environment {name}: {exc}; ignored")
            break
    return found


def load_settings(
    cli_overrides: Mapping[str, object] | None = None, environ: Mapping[str, str] = os.environ
) -> LoadedSettings:
    """The effective settings; never raises for bad files or values (see ``problems``)."""
    paths = config_paths(environ)
    values: dict[str, Value] = {s.key: s.default for s in _SETTINGS}
    origins: dict[str, Origin] = dict.fromkeys(SETTINGS, "default")
    policy = _read_policies(paths)
    user = _read_user(paths.user)
    problems = policy.problems + user.problems
    env = _env_values(environ, problems)
    cli: dict[str, Value] = {}
    for key, raw in (cli_overrides or {}).items():
        if raw is None:
            continue
        setting = SETTINGS.get(key)
        if setting is None:
            problems.append(f"command line: unknown setting {key!r} ignored")
            continue
        try:
            cli[key] = _validate(setting, raw, from_text=setting.kind is not str)
        except ValueError as exc:
            problems.append(f"command line: {exc}; ignored")

    layers: list[tuple[Origin, Mapping[str, Value], str]] = [
        ("user", user.values, "in the user settings"),
        ("env", {key: value for key, (_, value) in env.items()}, "from the environment"),
        ("cli", cli, "on the command line"),
    ]
    for key, value in policy.values.items():
        values[key], origins[key] = value, "policy"
    for origin, layer, where in layers:
        for key, value in layer.items():
            if key in policy.locked:
                detail = f" ({env[key][0]})" if origin == "env" else ""
                problems.append(f"{key} is locked by the site policy; the value {where}{detail} is ignored")
                continue
            values[key], origins[key] = value, origin
    # An endpoint URL on its own (policy, --url, HELPDESK_VOICE_ENDPOINT_URL) means "use this server";
    # a locked backend has locked the URL too (see _read_policies), so this cannot get around it.
    if (
        values["backend"] == "embedded"
        and "backend" not in policy.locked
        and values["endpoint.url"]
        and origins["endpoint.url"] in ("policy", "env", "cli")
    ):
        values["backend"], origins["backend"] = "custom", origins["endpoint.url"]
    return LoadedSettings(
        values, origins, dict(policy.locked), problems, paths, typed_settings(values), dict(policy.sources)
    )


# ---------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------


def _toml_key(part: str) -> str:
    return part if _BARE_KEY.fullmatch(part) else _toml_string(part)


_ESCAPES: Final = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):  # a table where a value belongs: kept as the user wrote it
        return "{" + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to a settings file")


def _writable(value: object) -> bool:
    try:
        _toml_value(value)
    except TypeError:
        return False
    return True


def _to_toml(flat: Mapping[str, object]) -> str:
    """A TOML document of flat values (text, numbers, booleans, lists of them) under dotted keys.

    Enough for settings, so the app needs no TOML writer package; the result is parsed back before
    it is written, so a writer bug cannot leave an unreadable file behind.
    """
    tables: dict[tuple[str, ...], list[str]] = {}
    for key in sorted(flat, key=lambda k: (k.count(".") > 0, k)):
        *parents, name = key.split(".")
        tables.setdefault(tuple(parents), []).append(f"{_toml_key(name)} = {_toml_value(flat[key])}")
    chunks = ["# Helpdesk Voice user settings. Secrets (the API key) live in the OS keyring, never here.\n"]
    for table, lines in tables.items():
        header = f"[{'.'.join(_toml_key(part) for part in table)}]\n" if table else ""
        chunks.append("\n" + header + "".join(line + "\n" for line in lines))
    return "".join(chunks)


def save_user_setting(key: str, value: object, environ: Mapping[str, str] = os.environ) -> None:
    """Stores ``key = value`` in the user settings, keeping the other keys; ``None`` removes the key.

    Raises :class:`ConfigError` with one clear sentence for an unknown key, a secret, an invalid
    value, a key the site policy locks, or a failed write (the old file is then left as it was).
    """
    if _is_secret_key(key):
        raise ConfigError(
            f"{key!r} looks like a secret; store the API key in the OS keyring, never in a file"
        )
    setting = SETTINGS.get(key)
    if setting is None:
        raise ConfigError(f"unknown setting {key!r}; known settings: {', '.join(SETTINGS)}")
    paths = config_paths(environ)
    locked_by = _read_policies(paths).locked
    if key in locked_by:
        raise ConfigError(
            f"{key} is locked by your administrator's policy ({locked_by[key]}) and cannot be changed"
        )
    checked: Value | None = None
    if value is not None:
        try:
            checked = _validate(setting, value, from_text=setting.kind is not str)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    user = _read_user(paths.user)
    if user.unreadable:
        raise ConfigError(f"{user.problems[0].split('; ')[0]}; nothing was changed")
    # Unknown keys (perhaps from a newer version) and refused values are kept when they can be written.
    current: dict[str, object] = {k: v for k, v in user.kept.items() if _writable(v)}
    current.update(user.values)
    if checked is None:
        current.pop(key, None)
    else:
        current[key] = checked
    current = {k: list(v) if isinstance(v, tuple) else v for k, v in current.items()}
    text = _to_toml(current)
    if _flatten(tomllib.loads(text)) != current:  # pragma: no cover - a writer bug, not a user error
        raise ConfigError("internal error: the settings could not be written faithfully; nothing was changed")
    try:
        write_atomically(paths.user, text)
    except OSError as exc:
        raise ConfigError(
            f"could not write {paths.user} ({exc.strerror or type(exc).__name__}); the old settings are kept"
        ) from None


# ---------------------------------------------------------------------------------------------------
# Secrets: the API key, in the OS keyring only
# ---------------------------------------------------------------------------------------------------


class SecretStoreError(KeyStoreError):
    """The OS keyring cannot do what was asked; the message says why and never holds the key."""


@dataclass(frozen=True, slots=True)
class ApiKeyStatus:
    """Whether an API key is set and where, without the key itself."""

    source: Literal["env", "keyring"] | None
    reason: str | None = None

    @property
    def is_set(self) -> bool:
        return self.source is not None

    def describe(self) -> str:
        if self.source == "env":
            return f"set (env {API_KEY_ENV})"
        if self.source == "keyring":
            return "set (keyring)"
        return "not set" + (f" ({self.reason})" if self.reason else "")


_NO_KEYRING: Final = (
    f"no OS keyring is available here (on Linux, install and unlock a Secret Service such as GNOME "
    f"Keyring or KWallet); set {API_KEY_ENV} instead"
)


class _Secrets:
    """Stores, reads and deletes the API key in the OS keyring; nothing else ever holds it."""

    @staticmethod
    def _backend_available() -> bool:
        import keyring
        import keyring.backends.fail

        return not isinstance(keyring.get_keyring(), keyring.backends.fail.Keyring)

    def store_api_key(self, api_key: str) -> None:
        if not self._backend_available():
            raise SecretStoreError(_NO_KEYRING)
        try:
            store_api_key(api_key)
        except ValueError as exc:  # empty or unsendable key: the message does not contain it
            raise SecretStoreError(str(exc)) from None
        except KeyStoreError as exc:
            raise SecretStoreError(str(exc)) from None

    def read_api_key(self, environ: Mapping[str, str] = os.environ) -> str | None:
        """The key from the environment or the keyring, or None (see :meth:`status` for why)."""
        return lookup_api_key(environ).key

    def delete_api_key(self) -> bool:
        """Removes the key from the keyring; False when none was stored."""
        import keyring
        import keyring.errors

        if not self._backend_available():
            raise SecretStoreError(_NO_KEYRING)
        try:
            if keyring.get_password(KEYRING_SERVICE, KEYRING_USERNAME) is None:
                return False
            keyring.delete_password(KEYRING_SERVICE, KEYRING_USERNAME)
        except keyring.errors.PasswordDeleteError:
            return False
        except Exception as exc:
            raise SecretStoreError(
                f"the system keyring could not delete the key ({type(exc).__name__})"
            ) from None
        return True

    def status(self, environ: Mapping[str, str] = os.environ) -> ApiKeyStatus:
        found = lookup_api_key(environ)
        if found.source == "environment":
            return ApiKeyStatus("env")
        if found.source == "keyring":
            return ApiKeyStatus("keyring")
        return ApiKeyStatus(None, found.reason)


secrets: Final = _Secrets()


# ---------------------------------------------------------------------------------------------------
# ``helpdesk-voice config path|show``
# ---------------------------------------------------------------------------------------------------


def _exists(path: Path) -> str:
    try:
        return "exists" if path.is_file() else "not found"
    except OSError:
        return "cannot be checked"


def _display(key: str, value: Value, width: int = 60) -> str:
    if key == "endpoint.url" and isinstance(value, str) and value:
        return redact_url(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(value) if value else "(none)"
    if isinstance(value, str):
        if value == "":
            return '""'
        text = " ".join(value.split())
        return text if len(text) <= width else text[: width - 3] + "..."
    return str(value)


def format_settings(settings: LoadedSettings, key_status: ApiKeyStatus) -> str:
    width = max(len(key) for key in SETTINGS)
    lines = []
    for key in SETTINGS:
        mark = " [locked]" if settings.locked(key) else ""
        origin: str = settings.origin(key)
        source = settings.policy_sources.get(key) if origin == "policy" else None
        if source is not None:  # which policy: an admin with several has to know where to look
            origin = f"policy ({os_policy.describe_source(source)})"
        lines.append(f"{key:<{width}}  {_display(key, settings.value(key))}  ({origin}){mark}")
    lines.append(f"{'api_key':<{width}}  {key_status.describe()}")
    return "\n".join(lines)


def _cli_overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        "endpoint.url": getattr(args, "url", None),
        "audio.input_device": getattr(args, "input_device", None),
        "audio.output_device": getattr(args, "output_device", None),
    }


def _print_problems(problems: Iterable[str]) -> None:
    for problem in problems:
        print(f"helpdesk-voice: warning: {problem}", file=sys.stderr)


def config_main(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> int:
    """``config path``: where the files are; ``config show``: every setting, its value and origin."""
    paths = config_paths(environ)
    if args.config_command == "path":
        print(f"policy: {paths.policy} ({_exists(paths.policy)})")
        if paths.extra_policy is not None:
            print(f"policy: {paths.extra_policy} ({_exists(paths.extra_policy)}, from {POLICY_ENV})")
        print(f"user:   {paths.user} ({_exists(paths.user)})")
        return 0
    settings = load_settings(_cli_overrides(args), environ)
    _print_problems(settings.problems)
    print(format_settings(settings, secrets.status(environ)))
    return 0
