"""The testers' rig as a child process (``python -m app rig ...``) with a private XDG_RUNTIME_DIR and
a device prefix of its own, so nothing meets the session's virtual devices or a tester's rig; every
daemon a test starts is ended by the fixture, also when the test fails."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.testkit.rig import STATE_FILE, alsa_pulse_plugin_present

RIG_KEYS = ("PULSE_SERVER", "ALSA_CONFIG_PATH", "PULSE_RUNTIME_PATH", "PULSE_STATE_PATH")


def unavailable() -> str | None:
    for tool in ("pulseaudio", "pactl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not alsa_pulse_plugin_present():
        return "the ALSA pulse plugin is not installed"
    return None


def need_pulseaudio() -> None:
    reason = unavailable()
    if reason is not None:
        if os.environ.get("HELPDESK_VOICE_REQUIRE_DEVICES") == "1":
            pytest.fail(f"virtual audio devices are required here but cannot start: {reason}")
        pytest.skip(f"virtual audio devices unavailable: {reason}")


def short_dir(prefix: str) -> Path:
    # Short, in /tmp: a unix socket's path has room for 107 bytes, pytest's tmp_path often too few.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@dataclass
class Rig:
    """The command under test, with its own runtime folder and device prefix."""

    runtime: Path
    prefix: str
    env: dict[str, str]

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app", "rig", *args],
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def __call__(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(command, "--prefix", self.prefix, *args)

    @property
    def workdir(self) -> Path:
        return self.runtime / f"helpdesk-voice-rig-{self.prefix}"

    def state(self) -> dict[str, object]:
        state: dict[str, object] = json.loads((self.workdir / STATE_FILE).read_text())
        return state


def clean_up(runtime: Path, env: dict[str, str]) -> None:
    """Take down whatever rigs are left under ``runtime``; kill what will not go."""
    for workdir in runtime.glob("**/helpdesk-voice-rig-*"):
        if not workdir.is_dir() or not (workdir / STATE_FILE).exists():
            continue
        prefix = workdir.name.removeprefix("helpdesk-voice-rig-")
        subprocess.run(
            [sys.executable, "-m", "app", "rig", "down", "--prefix", prefix],
            env=env,
            capture_output=True,
            timeout=60,
        )
        if (workdir / STATE_FILE).exists():
            pid = json.loads((workdir / STATE_FILE).read_text()).get("pid")
            if isinstance(pid, int) and running(pid):
                os.kill(pid, signal.SIGKILL)
    shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture
def rig() -> Iterator[Rig]:
    need_pulseaudio()
    runtime = short_dir("hvr")
    env = {key: value for key, value in os.environ.items() if key not in RIG_KEYS}
    env["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        yield Rig(runtime, "t" + uuid.uuid4().hex[:8], env)
    finally:
        clean_up(runtime, env)


def running(pid: int) -> bool:
    """Alive and not a zombie (this machine's init may not reap the daemons it inherits)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] not in "ZX"


def exports(stdout: str) -> dict[str, str]:
    """The environment ``eval "$(helpdesk-voice rig up)"`` would set; every line must be an export."""
    result: dict[str, str] = {}
    for line in stdout.splitlines():
        words = shlex.split(line)
        assert len(words) == 2 and words[0] == "export", line
        key, _, value = words[1].partition("=")
        result[key] = value
    return result
