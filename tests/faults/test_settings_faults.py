"""Site policy and settings (rows P1-P10): what the app does with a policy or a settings file gone wrong.

Every test runs the app as a child process, the way a user or an administrator meets it:
``python -m app config show`` (every setting with its value, its source and its lock), ``config
path``, and, where the question is which server the speech goes to (P1, P2, P4), the app itself
started headless on the PulseAudio virtual devices with a real WebSocket peer given as the server the
user asks for. The files are real: the user's ``settings.toml`` in a throwaway config folder, the
extra policy of ``HELPDESK_VOICE_POLICY``, and the machine policy at ``/etc/helpdesk-voice/policy.toml``
(written for one test and put back exactly as it was; those tests need root and skip without it).

What they prove: a policy lock beats the command line and the environment; a user's own policy file
can add locks but never undo the machine's; a machine policy that cannot be used (not TOML, not
UTF-8, not a file, a bad ``locked``) locks where speech goes and what is kept to the safest values
and says why; a broken ``settings.toml`` costs the user only what is broken and is kept for them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.testkit.rig import VirtualAudioRig
from tests.scripted_peer import ScriptedPeer

ROOT = Path(__file__).resolve().parents[2]
# Where the machine policy lives on Linux: a fixed place no user setting or variable can move.
MACHINE_POLICY = Path("/etc/helpdesk-voice/policy.toml")
CHILD_TIMEOUT_S = 60.0
# The headless app loads the offline models (speech recognition, embeddings, voice) before its
# --duration starts counting: generous, as the machine may be busy with other tests.
HEADLESS_TIMEOUT_S = 300.0
# What a policy that cannot be used must lock, and to what (as ``config show`` prints them).
FAIL_CLOSED = {"backend": "embedded", "endpoint.url": '""', "transcript.retention_days": "0"}
SHOW_LINE = re.compile(
    r"^(?P<key>\S+)\s+(?P<value>.*?)\s+\((?P<origin>default|policy|user|env|cli)(?: \([^()]*\))?\)"
    r"(?P<lock> \[locked\])?$"
)
OFFLINE = "(the offline assistant on this computer)"


@dataclass(frozen=True)
class Shown:
    """One line of ``config show``."""

    value: str
    origin: str
    locked: bool


@dataclass(frozen=True)
class Home:
    """A throwaway home for one child: its own config, data and cache folders and extra policy."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def user_settings(self) -> Path:
        return self.config / "settings.toml"

    @property
    def extra_policy(self) -> Path:
        return self.root / "user-policy.toml"

    def env(self, *, extra_policy: bool = True, **more: str) -> dict[str, str]:
        """This process's environment without any HELPDESK_VOICE_* of its own, pointed at this home."""
        env = {name: value for name, value in os.environ.items() if not name.startswith("HELPDESK_VOICE_")}
        env["HELPDESK_VOICE_CONFIG_DIR"] = str(self.config)
        env["HELPDESK_VOICE_DATA_DIR"] = str(self.root / "data")
        env["HELPDESK_VOICE_CACHE_DIR"] = str(self.root / "cache")
        if extra_policy:
            env["HELPDESK_VOICE_POLICY"] = str(self.extra_policy)
        # No key anywhere: config show asks the keyring, and must never touch this machine's own.
        env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
        env["PYTHONPATH"] = str(ROOT)
        env.update(more)
        return env


@pytest.fixture
def home(tmp_path: Path) -> Home:
    (tmp_path / "config").mkdir()
    return Home(tmp_path)


class MachinePolicy:
    """Writes the machine policy for one test; :meth:`restore` puts back exactly what was there."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._folder_existed = path.parent.exists()
        self._folder_mode = path.parent.stat().st_mode if self._folder_existed else None
        if path.is_dir():
            raise RuntimeError(f"{path} is a folder already; refusing to touch it")
        self._old: bytes | None = path.read_bytes() if path.exists() else None
        self._old_mode = path.stat().st_mode if self._old is not None else None

    def write(self, content: bytes | str) -> None:
        self._clear()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode("utf-8") if isinstance(content, str) else content
        self.path.write_bytes(data)

    def make_folder(self) -> None:
        """A folder where the file belongs: as root, permissions would not stop the read."""
        self._clear()
        self.path.mkdir(parents=True)

    def _clear(self) -> None:
        if self.path.is_dir() and not self.path.is_symlink():
            shutil.rmtree(self.path)
        elif self.path.exists() or self.path.is_symlink():
            self.path.unlink()

    def restore(self) -> None:
        self._clear()
        if self._old is not None:
            self.path.write_bytes(self._old)
            assert self._old_mode is not None
            os.chmod(self.path, self._old_mode & 0o7777)
        if not self._folder_existed:
            shutil.rmtree(self.path.parent, ignore_errors=True)
        elif self._folder_mode is not None:
            os.chmod(self.path.parent, self._folder_mode & 0o7777)


@pytest.fixture
def machine_policy() -> Iterator[MachinePolicy]:
    if os.geteuid() != 0:
        pytest.skip(f"the machine policy {MACHINE_POLICY} can only be written by root")
    policy = MachinePolicy(MACHINE_POLICY)
    try:
        yield policy
    finally:
        policy.restore()


def run_app(
    *args: str, env: dict[str, str], timeout: float = CHILD_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def config_show(env: dict[str, str], *args: str) -> tuple[dict[str, Shown], str]:
    """``config show`` (``args`` go before it, as ``--url``): each setting as shown, and stderr."""
    done = run_app(*args, "config", "show", env=env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    shown: dict[str, Shown] = {}
    for line in done.stdout.splitlines():
        match = SHOW_LINE.match(line)
        if match:
            shown[match["key"]] = Shown(match["value"], match["origin"], bool(match["lock"]))
    assert {"backend", "endpoint.url", "transcript.retention_days", "silence_ms"} <= set(shown), done.stdout
    return shown, done.stderr


def assert_fails_closed(shown: dict[str, Shown], stderr: str, why: str) -> None:
    """Where speech goes and what is kept are locked to the safest values, and stderr says why."""
    for key, value in FAIL_CLOSED.items():
        assert shown[key] == Shown(value, "policy", True), f"{key}: {shown[key]}; {stderr}"
    warnings = [line for line in stderr.splitlines() if str(MACHINE_POLICY) in line and why in line]
    assert warnings, stderr
    # One line tells the admin what happened and what it costs until it is fixed.
    assert "safest values" in warnings[0] and "backend = embedded" in warnings[0], warnings[0]


@dataclass(frozen=True)
class HeadlessRun:
    stdout: str
    stderr: str
    returncode: int
    peer_connections: int
    peer_url: str


def run_headless_against_peer(
    rig: VirtualAudioRig, env: dict[str, str], *, url_on_command_line: bool
) -> HeadlessRun:
    """The headless app for 3 s with a live peer as the server the user asks for.

    The peer's URL goes on the command line (``--url``) or, with ``url_on_command_line=False``, into
    the environment as ``HELPDESK_VOICE_ENDPOINT_URL``. ``-v`` makes the app say where it connected.
    """
    devices = ["--input-device", rig.mic, "--output-device", rig.speaker]
    with ScriptedPeer([]) as peer:
        if url_on_command_line:
            args = ["--url", peer.url]
        else:
            args, env = [], {**env, "HELPDESK_VOICE_ENDPOINT_URL": peer.url}
        done = run_app(
            "--headless", "-v", *args, *devices, "--duration", "3", env=env, timeout=HEADLESS_TIMEOUT_S
        )
        time.sleep(0.5)  # a connection still under way when the app ended would show up by now
        connections = peer.connections
        url = peer.url
    return HeadlessRun(done.stdout, done.stderr, done.returncode, connections, url)


def assert_offline_server_used(run: HeadlessRun) -> None:
    """The conversation ran on the embedded server, and the server the user named heard nothing."""
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert run.peer_connections == 0, f"the server the policy forbids was contacted; {run.stderr}"
    assert "starting the offline assistant" in run.stderr, run.stderr
    assert any(line.endswith(OFFLINE) for line in run.stderr.splitlines()), run.stderr
    connected = [line for line in run.stderr.splitlines() if "app.realtime: connected to " in line]
    assert connected, f"the app never connected to the offline server; {run.stderr}"
    peer_port = run.peer_url.split("/")[2]
    assert all(peer_port not in line for line in connected), connected
    assert "listening on" in run.stdout, run.stdout


LOCK_EMBEDDED = 'backend = "embedded"\nlocked = ["backend"]\n'


def place_policy(where: str, text: str, home: Home, machine: MachinePolicy | None) -> dict[str, str]:
    """The policy text at the machine's place or as the extra policy; the child's environment."""
    if where == "machine":
        assert machine is not None
        machine.write(text)
        return home.env(extra_policy=False)
    home.extra_policy.write_text(text, encoding="utf-8")
    return home.env()


@pytest.fixture(params=["machine", "extra"])
def policy_place(request: pytest.FixtureRequest) -> Iterator[tuple[str, MachinePolicy | None]]:
    """Each lock test runs with the lock in the machine policy and in the extra policy file."""
    if request.param == "extra":
        yield "extra", None
        return
    machine: MachinePolicy = request.getfixturevalue("machine_policy")
    yield "machine", machine


# ---------------------------------------------------------------------------------------------------
# P1, P2: a locked backend beats a URL from the command line or the environment
# ---------------------------------------------------------------------------------------------------


@pytest.mark.fault("P1")
@pytest.mark.devices
def test_a_locked_offline_backend_ignores_a_url_on_the_command_line_and_says_so(
    virtual_audio: VirtualAudioRig, home: Home, policy_place: tuple[str, MachinePolicy | None]
) -> None:
    where, machine = policy_place
    env = place_policy(where, LOCK_EMBEDDED, home, machine)

    run = run_headless_against_peer(virtual_audio, env, url_on_command_line=True)

    assert_offline_server_used(run)
    # The user is told which setting is locked, by what, and that their --url was ignored.
    said = [line for line in run.stderr.splitlines() if "locked by the site policy" in line]
    assert said and "endpoint.url" in said[0] and "command line" in said[0], run.stderr
    # config show with the same --url names the lock and its source for each setting involved.
    shown, _ = config_show(env, "--url", "ws://cloud.example.com/v1/realtime")
    assert shown["backend"] == Shown("embedded", "policy", True)
    assert shown["endpoint.url"] == Shown('""', "default", True)


@pytest.mark.fault("P2")
@pytest.mark.devices
def test_a_locked_offline_backend_ignores_an_endpoint_url_in_the_environment_and_says_so(
    virtual_audio: VirtualAudioRig, home: Home, policy_place: tuple[str, MachinePolicy | None]
) -> None:
    where, machine = policy_place
    env = place_policy(where, LOCK_EMBEDDED, home, machine)

    run = run_headless_against_peer(virtual_audio, env, url_on_command_line=False)

    assert_offline_server_used(run)
    said = [line for line in run.stderr.splitlines() if "locked by the site policy" in line]
    assert said and "HELPDESK_VOICE_ENDPOINT_URL" in said[0], run.stderr
    shown, _ = config_show({**env, "HELPDESK_VOICE_ENDPOINT_URL": "ws://cloud.example.com/v1/realtime"})
    assert shown["backend"] == Shown("embedded", "policy", True)
    assert shown["endpoint.url"].locked and shown["endpoint.url"].value == '""'


# ---------------------------------------------------------------------------------------------------
# P3: a user's own policy file adds locks, never removes the machine's
# ---------------------------------------------------------------------------------------------------

MACHINE_LOCKS = (
    'backend = "embedded"\n'
    'locked = ["backend", "transcript.retention_days"]\n'
    "\n[transcript]\nretention_days = 0\n"
)


@pytest.mark.fault("P3")
def test_a_users_own_policy_cannot_unlock_or_relock_what_the_machine_policy_locks(
    machine_policy: MachinePolicy, home: Home
) -> None:
    machine_policy.write(MACHINE_LOCKS)
    # The user's file locks the same keys at the values the user wants, and adds a lock of its own.
    home.extra_policy.write_text(
        '[locked]\nbackend = "custom"\n"transcript.retention_days" = 365\nvoice = "ash"\n',
        encoding="utf-8",
    )
    home.user_settings.write_text('backend = "custom"\n[transcript]\nretention_days = 30\n', encoding="utf-8")
    env = home.env()

    paths = run_app("config", "path", env=env)
    assert f"policy: {MACHINE_POLICY} (exists)" in paths.stdout, paths.stdout
    assert f"policy: {home.extra_policy} (exists, from HELPDESK_VOICE_POLICY)" in paths.stdout, paths.stdout

    shown, stderr = config_show(env)
    assert shown["backend"] == Shown("embedded", "policy", True), stderr
    assert shown["transcript.retention_days"] == Shown("0", "policy", True), stderr
    # What the user's file may do: add a lock the machine policy does not have.
    assert shown["voice"] == Shown("ash", "policy", True), stderr
    # The user is told their policy's values were ignored, and which policy locks them.
    ignored = [line for line in stderr.splitlines() if "is locked by the system policy" in line]
    assert any(" backend " in line and str(MACHINE_POLICY) in line for line in ignored), stderr
    assert any("transcript.retention_days" in line for line in ignored), stderr


@pytest.mark.fault("P3")
def test_an_empty_lock_list_in_a_users_policy_leaves_the_machine_locks_in_place(
    machine_policy: MachinePolicy, home: Home
) -> None:
    machine_policy.write(MACHINE_LOCKS)
    home.extra_policy.write_text(
        'backend = "openai"\nlocked = []\n\n[transcript]\nretention_days = 90\n', encoding="utf-8"
    )
    env = home.env(HELPDESK_VOICE_TRANSCRIPT_RETENTION_DAYS="60", HELPDESK_VOICE_BACKEND="custom")

    shown, stderr = config_show(env)

    assert shown["backend"] == Shown("embedded", "policy", True), stderr
    assert shown["transcript.retention_days"] == Shown("0", "policy", True), stderr


# ---------------------------------------------------------------------------------------------------
# P4-P7: a machine policy that cannot be used fails closed and says why
# ---------------------------------------------------------------------------------------------------

# What the user would have without a policy: a server of their own and transcripts kept for a month.
USER_WANTS = (
    'backend = "custom"\n'
    '\n[endpoint]\nurl = "ws://cloud.example.com/v1/realtime"\n'
    "\n[transcript]\nretention_days = 30\n"
)


@pytest.mark.fault("P4")
def test_a_machine_policy_with_a_toml_error_locks_everything_to_the_safest_values_and_says_why(
    machine_policy: MachinePolicy, home: Home
) -> None:
    # The admin meant to allow a cloud server; one missing quote makes the file unusable.
    machine_policy.write('backend = "custom\n[endpoint]\nurl = "wss://cloud.example.com/v1/realtime"\n')
    home.user_settings.write_text(USER_WANTS, encoding="utf-8")
    env = home.env(extra_policy=False)

    shown, stderr = config_show(env, "--url", "ws://other.example.com/v1/realtime")

    assert_fails_closed(shown, stderr, "is not valid TOML")
    # The policy file is the admin's: never moved aside or rewritten.
    assert machine_policy.path.read_bytes().startswith(b'backend = "custom\n')


@pytest.mark.fault("P4")
@pytest.mark.devices
def test_a_machine_policy_with_a_toml_error_keeps_the_conversation_on_the_offline_server(
    virtual_audio: VirtualAudioRig, machine_policy: MachinePolicy, home: Home
) -> None:
    machine_policy.write("backend = \n")
    home.user_settings.write_text(USER_WANTS, encoding="utf-8")

    run = run_headless_against_peer(virtual_audio, home.env(extra_policy=False), url_on_command_line=True)

    assert_offline_server_used(run)
    why = [
        line for line in run.stderr.splitlines() if str(MACHINE_POLICY) in line and "not valid TOML" in line
    ]
    assert why and "safest values" in why[0], run.stderr


@pytest.mark.fault("P5")
def test_a_machine_policy_that_is_not_utf8_fails_closed_and_says_why(
    machine_policy: MachinePolicy, home: Home
) -> None:
    # Latin-1 from an old editor: "é" as the single byte 0xE9.
    machine_policy.write(
        b'backend = "custom"\n# caf\xe9 floor policy\n[endpoint]\nurl = "wss://cloud.example.com"\n'
    )
    home.user_settings.write_text(USER_WANTS, encoding="utf-8")

    shown, stderr = config_show(home.env(extra_policy=False))

    assert_fails_closed(shown, stderr, "is not UTF-8")


@pytest.mark.fault("P6")
def test_a_machine_policy_that_cannot_be_read_fails_closed_and_says_why(
    machine_policy: MachinePolicy, home: Home
) -> None:
    machine_policy.make_folder()
    home.user_settings.write_text(USER_WANTS, encoding="utf-8")
    env = home.env(extra_policy=False)

    shown, stderr = config_show(env)

    assert_fails_closed(shown, stderr, "cannot be read")
    # config path does not call a folder a policy that exists.
    paths = run_app("config", "path", env=env)
    assert paths.returncode == 0 and f"policy: {MACHINE_POLICY} (exists)" not in paths.stdout, paths.stdout


@pytest.mark.fault("P7")
@pytest.mark.parametrize(
    "locked",
    ['"backend"', "true", '["backend", 3]', '[["backend"]]'],
    ids=["a-string", "a-boolean", "a-list-with-a-number", "a-list-of-lists"],
)
def test_a_machine_policy_whose_locked_is_not_a_list_of_names_fails_closed_and_says_why(
    machine_policy: MachinePolicy, home: Home, locked: str
) -> None:
    # The policy's own values would send speech to a cloud server: failing closed must beat them too.
    machine_policy.write(
        f'backend = "custom"\nlocked = {locked}\n\n[endpoint]\nurl = "wss://cloud.example.com/v1/realtime"\n'
    )
    home.user_settings.write_text(USER_WANTS, encoding="utf-8")

    shown, stderr = config_show(home.env(extra_policy=False))

    assert_fails_closed(shown, stderr, "'locked' must be a list")


@pytest.mark.fault("P7")
def test_a_machine_policy_locking_an_unknown_setting_fails_closed_and_says_why(
    machine_policy: MachinePolicy, home: Home
) -> None:
    # The admin meant endpoint.url; the typo must not leave the user free to pick a server.
    machine_policy.write('locked = ["endpont.url"]\n')
    home.user_settings.write_text(USER_WANTS, encoding="utf-8")

    shown, stderr = config_show(home.env(extra_policy=False))

    assert "endpont.url" in stderr, stderr
    assert_fails_closed(shown, stderr, "endpont.url")


# ---------------------------------------------------------------------------------------------------
# P8-P10: a broken settings.toml costs the user only what is broken
# ---------------------------------------------------------------------------------------------------


def defaults_shown(tmp_path: Path) -> dict[str, Shown]:
    """``config show`` in an empty home: the built-in values, as the app prints them."""
    empty = Home(tmp_path / "empty-home")
    empty.config.mkdir(parents=True)
    shown, stderr = config_show(empty.env())
    assert all(s.origin == "default" and not s.locked for s in shown.values()), (shown, stderr)
    return shown


def set_aside_files(home: Home) -> list[Path]:
    return sorted(home.config.glob("settings.toml.corrupt-*"))


@pytest.mark.fault("P8")
def test_a_settings_file_that_is_not_toml_is_set_aside_with_a_message_and_defaults_are_used(
    home: Home, tmp_path: Path
) -> None:
    broken = b'voice = "ash"\nsilence_ms = 900\n[transcript\nretention_days = 30\n'
    home.user_settings.write_bytes(broken)
    env = home.env()

    shown, stderr = config_show(env)

    assert shown == defaults_shown(tmp_path), stderr
    kept = set_aside_files(home)
    assert len(kept) == 1, list(home.config.iterdir())
    assert kept[0].read_bytes() == broken  # the user's file, whole, for them to fix
    assert not home.user_settings.exists()
    said = [line for line in stderr.splitlines() if "not valid TOML" in line]
    assert len(said) == 1 and kept[0].name in said[0] and "built-in values" in said[0], stderr
    # The next start finds no broken file: no second message, the set-aside file left alone.
    _, again = config_show(env)
    assert "not valid TOML" not in again, again
    assert set_aside_files(home) == kept and kept[0].read_bytes() == broken


@pytest.mark.fault("P9")
def test_one_value_of_the_wrong_type_falls_back_alone_and_every_other_setting_holds(
    home: Home, tmp_path: Path
) -> None:
    text = (
        'voice = "ash"\nsilence_ms = "fast"\npush_to_talk = true\n\n'
        '[barge_in]\nsensitivity = "low"\n\n[transcript]\nretention_days = 30\n'
    )
    home.user_settings.write_text(text, encoding="utf-8")

    shown, stderr = config_show(home.env())

    assert shown["silence_ms"] == defaults_shown(tmp_path)["silence_ms"], stderr
    assert shown["voice"] == Shown("ash", "user", False)
    assert shown["push_to_talk"] == Shown("true", "user", False)
    assert shown["barge_in.sensitivity"] == Shown("low", "user", False)
    assert shown["transcript.retention_days"] == Shown("30", "user", False)
    said = [line for line in stderr.splitlines() if "silence_ms" in line]
    assert len(said) == 1 and "'fast'" in said[0], stderr
    # One bad value is not a broken file: nothing is set aside or rewritten.
    assert home.user_settings.read_text(encoding="utf-8") == text
    assert set_aside_files(home) == []


@pytest.mark.fault("P10")
def test_a_settings_file_that_is_not_utf8_is_set_aside_with_a_message_and_defaults_are_used(
    home: Home, tmp_path: Path
) -> None:
    broken = b'voice = "ash"\ninstructions = "Caf\xe9 helpdesk"\n'
    home.user_settings.write_bytes(broken)

    shown, stderr = config_show(home.env())

    assert shown == defaults_shown(tmp_path), stderr
    kept = set_aside_files(home)
    assert len(kept) == 1 and kept[0].read_bytes() == broken, list(home.config.iterdir())
    assert not home.user_settings.exists()
    said = [line for line in stderr.splitlines() if "not UTF-8" in line]
    assert len(said) == 1 and kept[0].name in said[0] and "built-in values" in said[0], stderr
