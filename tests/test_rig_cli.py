"""``helpdesk-voice rig up|down|status``: the testers' persistent virtual devices, on real daemons.

The command runs as a child process (``python -m app rig ...``) with a private XDG_RUNTIME_DIR and a
prefix of its own, so nothing here meets the session's virtual devices or a tester's rig. Every
daemon a test starts is ended by its fixture, also when the test fails. The Windows and macOS texts
and the missing-package messages run in-process with the platform and the lookups injected.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.cli import build_parser
from app.testkit.rig import (
    STATE_FILE,
    RigUnavailable,
    attached_rig,
    rig_workdir,
)
from app.testkit.rig_cli import NOT_UP, RigHost, rig_main
from tests.rig_support import RIG_KEYS, Rig, clean_up, exports, need_pulseaudio, rig, running, short_dir

__all__ = ["rig"]  # the fixture, shared with test_drive_e2e


@dataclass
class StandIn:
    """A plain PulseAudio daemon standing in for the user's own sound server."""

    address: str
    process: subprocess.Popen[bytes]

    def pactl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["pactl", "--server", self.address, *args], capture_output=True, text=True, timeout=10
        )

    def modules(self) -> list[str]:
        """Each module's name and arguments (not its id)."""
        return [line.split("\t", 1)[1] for line in self.pactl("list", "short", "modules").stdout.splitlines()]


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    need_pulseaudio()
    root = short_dir("hvs")
    for sub in ("runtime", "state", "home", "config"):
        (root / sub).mkdir()
    socket = root / "native"
    (root / "startup.pa").write_text(
        f"load-module module-native-protocol-unix auth-anonymous=1 socket={socket}\n"
        "load-module module-null-sink sink_name=users_speakers\n"
        "set-default-sink users_speakers\n"
    )
    env = {
        **os.environ,
        "HOME": str(root / "home"),
        "XDG_CONFIG_HOME": str(root / "config"),
        "PULSE_RUNTIME_PATH": str(root / "runtime"),
        "PULSE_STATE_PATH": str(root / "state"),
    }
    with open(root / "log", "wb") as log:
        process = subprocess.Popen(
            [
                "pulseaudio",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--use-pid-file=no",
                "--log-target=stderr",
                "-n",
                "-F",
                str(root / "startup.pa"),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    server = StandIn(f"unix:{socket}", process)
    try:
        deadline = time.monotonic() + 10
        while server.pactl("info").returncode != 0:
            assert process.poll() is None, (root / "log").read_text()
            assert time.monotonic() < deadline, "the stand-in server did not answer"
            time.sleep(0.05)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 5
    while running(pid):
        assert time.monotonic() < deadline, f"pid {pid} is still running"
        time.sleep(0.05)


def _names(env: dict[str, str], kind: str) -> list[str]:
    listing = subprocess.run(
        ["pactl", "list", "short", kind], env=env, capture_output=True, text=True, timeout=10, check=True
    )
    return [line.split("\t")[1] for line in listing.stdout.splitlines()]


def _portaudio_inputs(env: dict[str, str]) -> list[str]:
    """The input devices PortAudio lists in a fresh process with ``env``."""
    code = (
        "import sounddevice as sd\n"
        "for d in sd.query_devices():\n"
        "    if d['max_input_channels'] > 0: print(d['name'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout.splitlines()


@pytest.mark.devices
def test_up_gives_devices_a_shell_can_use_until_down(rig: Rig) -> None:
    p = rig.prefix
    up = rig("up")
    assert up.returncode == 0, up.stderr
    shell_env = exports(up.stdout)
    assert set(shell_env) == set(RIG_KEYS)
    for name in (f"{p}_mic", f"{p}_mic_feed", f"{p}_speaker", f"{p}_speaker_monitor"):
        assert name in up.stderr
    assert f"helpdesk-voice --headless --input-device {p}_mic --output-device {p}_speaker" in up.stderr
    assert f"rig down --prefix {p}" in up.stderr
    assert (rig.workdir.stat().st_mode & 0o777) == 0o700
    pid = rig.state()["pid"]
    assert isinstance(pid, int) and running(pid)  # it outlived the command

    status = rig("status")
    assert status.returncode == 0, status.stderr
    assert exports(status.stdout) == shell_env
    assert f"{p}_speaker_monitor" in status.stderr

    device_env = {**rig.env, **shell_env}
    assert {f"{p}_mic_feed", f"{p}_speaker"} <= set(_names(device_env, "sinks"))
    assert f"{p}_mic" in _names(device_env, "sources")
    assert f"{p}_mic" in _portaudio_inputs(device_env)

    # The way a tester uses it: eval in a shell (and $(...) returns: the daemon holds no pipe of it).
    script = f'eval "$("$0" -m app rig up --prefix {p} 2>/dev/null)" && pactl list short sources'
    shell = subprocess.run(
        ["bash", "-c", script, sys.executable], env=rig.env, capture_output=True, text=True, timeout=60
    )
    assert shell.returncode == 0, shell.stderr
    assert f"{p}_mic\t" in shell.stdout

    again = rig("up")
    assert again.returncode == 0, again.stderr
    assert "already up" in again.stderr
    assert rig.state()["pid"] == pid
    assert exports(again.stdout) == shell_env

    down = rig("down")
    assert down.returncode == 0, down.stderr
    assert down.stdout.split() == ["unset", *RIG_KEYS]
    _wait_gone(pid)
    assert not rig.workdir.exists()

    status = rig("status")
    assert status.returncode == 3
    assert status.stdout == ""
    assert status.stderr.strip() == "helpdesk-voice: " + NOT_UP.replace("rig up", f"rig up --prefix {p}")
    down = rig("down")
    assert down.returncode == 0
    assert "nothing to take down" in down.stderr


@pytest.mark.devices
def test_a_dead_daemon_is_not_up_and_up_starts_a_fresh_one(rig: Rig) -> None:
    assert rig("up").returncode == 0
    pid = rig.state()["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)

    status = rig("status")
    assert status.returncode == 3
    assert "are gone" in status.stderr
    assert not rig.workdir.exists()  # the stale state is cleaned up

    up = rig("up")
    assert up.returncode == 0, up.stderr
    assert "are up" in up.stderr
    fresh = rig.state()["pid"]
    assert isinstance(fresh, int) and fresh != pid and running(fresh)
    assert rig("status").returncode == 0


@pytest.mark.devices
def test_the_echo_is_set_changed_and_removed_on_a_rig_that_is_up(rig: Rig) -> None:
    up = rig("up", "--echo-level", "-10", "--echo-delay", "30")
    assert up.returncode == 0, up.stderr
    assert "-10 dB, 30 ms late" in up.stderr
    assert rig.state()["echo"] == {"latency_ms": 30, "gain_db": -10.0}
    env = {**rig.env, **exports(up.stdout)}

    def loopbacks() -> list[str]:
        listing = subprocess.run(
            ["pactl", "list", "short", "modules"], env=env, capture_output=True, text=True, check=True
        ).stdout
        return [line for line in listing.splitlines() if "\tmodule-loopback\t" in line]

    assert len(loopbacks()) == 1 and "latency_msec=30" in loopbacks()[0]

    louder = rig("up", "--echo-level", "-20")  # the delay stays
    assert louder.returncode == 0, louder.stderr
    assert rig.state()["echo"] == {"latency_ms": 30, "gain_db": -20.0}
    assert len(loopbacks()) == 1
    inputs = subprocess.run(["pactl", "list", "sink-inputs"], env=env, capture_output=True, text=True).stdout
    assert "-20.00 dB" in inputs

    off = rig("up", "--no-echo")
    assert off.returncode == 0, off.stderr
    assert rig.state()["echo"] is None
    assert loopbacks() == []
    assert "echo: none" in rig("status").stderr


@pytest.mark.devices
def test_attached_rig_binds_to_the_running_rig_and_stop_lets_it_run(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    up = rig("up")
    assert up.returncode == 0, up.stderr
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(rig.runtime))
    found = attached_rig(rig.prefix)
    assert found is not None
    assert (found.mic, found.mic_feed, found.speaker_monitor) == (
        f"{rig.prefix}_mic",
        f"{rig.prefix}_mic_feed",
        f"{rig.prefix}_speaker_monitor",
    )
    assert found.env == exports(up.stdout)
    assert found.persistent and found.pid == rig.state()["pid"]
    found.set_echo(True, 25, -6.0)  # recorded for everyone
    assert "-6 dB, 25 ms late" in rig("status").stderr
    found.stop()
    assert rig("status").returncode == 0
    assert attached_rig("never" + rig.prefix) is None


@pytest.mark.devices
def test_on_server_puts_the_devices_on_a_running_server_and_down_takes_only_them(
    rig: Rig, stand_in: StandIn
) -> None:
    p = rig.prefix
    env = {**rig.env, "PULSE_SERVER": stand_in.address}
    before = stand_in.modules()
    up = rig.run("up", "--prefix", p, "--on-server", "--echo-level", "-10", env=env)
    assert up.returncode == 0, up.stderr
    assert f"on the sound server {stand_in.address}" in up.stderr
    shell_env = exports(up.stdout)
    assert shell_env["PULSE_SERVER"] == stand_in.address
    assert shell_env["ALSA_CONFIG_PATH"].endswith(f"helpdesk-voice-rig-{p}/asound.conf")
    assert "PULSE_RUNTIME_PATH" not in shell_env  # the user's server keeps its own
    state = rig.state()
    assert state["mode"] == "server" and state["pid"] is None
    modules = state["modules"]
    assert isinstance(modules, dict) and set(modules) == {"mic_feed", "speaker", "mic", "loopback"}

    device_env = {**rig.env, **shell_env}
    assert {f"{p}_mic_feed", f"{p}_speaker"} <= set(_names(device_env, "sinks"))
    assert f"{p}_mic" in _portaudio_inputs(device_env)
    assert "Default Sink: users_speakers" in stand_in.pactl("info").stdout  # the user's sound stays put
    assert rig.run("status", "--prefix", p, env=rig.env).returncode == 0  # found from the state alone

    down = rig.run("down", "--prefix", p, env=rig.env)
    assert down.returncode == 0, down.stderr
    assert "keeps running" in down.stderr
    assert down.stdout.split() == ["unset", "PULSE_SERVER", "ALSA_CONFIG_PATH"]
    assert stand_in.pactl("info").returncode == 0
    assert stand_in.modules() == before
    assert rig("status").returncode == 3


@pytest.mark.devices
def test_devices_that_left_the_server_are_not_up_and_the_rest_is_unloaded(
    rig: Rig, stand_in: StandIn
) -> None:
    before = stand_in.modules()
    env = {**rig.env, "PULSE_SERVER": stand_in.address}
    assert rig.run("up", "--prefix", rig.prefix, "--on-server", env=env).returncode == 0
    modules = rig.state()["modules"]
    assert isinstance(modules, dict)
    stand_in.pactl("unload-module", str(modules["speaker"]))  # someone else unloaded one

    status = rig("status")
    assert status.returncode == 3
    assert stand_in.modules() == before
    assert not rig.workdir.exists()


@pytest.mark.devices
def test_without_pulseaudio_up_uses_the_running_server(
    rig: Rig, stand_in: StandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(rig.runtime))
    monkeypatch.setenv("PULSE_SERVER", stand_in.address)
    host = RigHost(which=lambda name: None if name == "pulseaudio" else shutil.which(name))
    code = rig_main(build_parser().parse_args(["rig", "up", "--prefix", rig.prefix]), host)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "pulseaudio is not installed; putting the devices on the running sound server" in err
    assert exports(out)["PULSE_SERVER"] == stand_in.address
    assert rig.state()["mode"] == "server"
    code = rig_main(build_parser().parse_args(["rig", "down", "--prefix", rig.prefix]), host)
    assert code == 0
    assert f"{rig.prefix}_mic_feed" not in _names({**os.environ, "PULSE_SERVER": stand_in.address}, "sinks")


@pytest.mark.devices
def test_without_xdg_runtime_dir_the_rig_lives_in_a_private_temporary_folder(rig: Rig) -> None:
    temporary = short_dir("hvt")
    env = {key: value for key, value in rig.env.items() if key != "XDG_RUNTIME_DIR"}
    env["TMPDIR"] = str(temporary)
    try:
        up = rig.run("up", "--prefix", rig.prefix, env=env)
        assert up.returncode == 0, up.stderr
        base = temporary / f"helpdesk-voice-rig-{os.getuid()}"
        assert (base.stat().st_mode & 0o777) == 0o700
        assert (base / f"helpdesk-voice-rig-{rig.prefix}" / STATE_FILE).exists()
        assert rig.run("status", "--prefix", rig.prefix, env=env).returncode == 0
        assert rig.run("down", "--prefix", rig.prefix, env=env).returncode == 0
    finally:
        clean_up(temporary, env)


def test_a_shared_temporary_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    base = tmp_path / f"helpdesk-voice-rig-{os.getuid()}"
    assert rig_workdir("hv") == base / "helpdesk-voice-rig-hv"
    assert attached_rig("hv") is None
    assert not base.exists()  # looking creates nothing
    base.mkdir(mode=0o755)
    base.chmod(0o755)
    with pytest.raises(RigUnavailable, match="not a private folder"):
        attached_rig("hv")
    assert rig_main(build_parser().parse_args(["rig", "status"])) == 1
    assert "not a private folder" in capsys.readouterr().err


def _run_in_process(
    argv: list[str], host: RigHost, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    code = rig_main(build_parser().parse_args(["rig", *argv]), host)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("platform", "words"),
    [
        ("win32", ["VB-CABLE", '"CABLE Input"', '"CABLE Output"', "helpdesk-voice devices"]),
        ("darwin", ["BlackHole", '"BlackHole 2ch"', "Multi-Output Device", "aggregate device"]),
    ],
)
def test_windows_and_macos_are_told_to_name_an_installed_virtual_cable(
    platform: str, words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    host = RigHost(platform=platform)
    for command in ("up", "status"):
        code, out, err = _run_in_process([command], host, capsys)
        assert code == 3
        assert out == ""  # nothing for `eval` to run
        assert err.startswith("helpdesk-voice: rig makes its devices with PulseAudio")
        for word in [*words, "--input-device", "--output-device", "--feed", "--monitor", "drive SCENARIO"]:
            assert word in err
    code, out, err = _run_in_process(["down"], host, capsys)
    assert code == 0 and "nothing to take down" in err


def test_missing_packages_are_named_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    nothing = RigHost(which=lambda name: None, alsa_pulse_plugin=lambda: False, running_server=lambda: None)
    code, out, err = _run_in_process(["up"], nothing, capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1
    assert err.startswith("helpdesk-voice: the virtual devices need PulseAudio: no pulseaudio command")
    assert err.rstrip().endswith("sudo apt-get install pulseaudio pulseaudio-utils libasound2-plugins")

    def without(missing: str) -> Callable[[str], str | None]:
        return lambda name: None if name == missing else f"/usr/bin/{name}"

    no_plugin = RigHost(which=without("nothing"), alsa_pulse_plugin=lambda: False)
    code, _, err = _run_in_process(["up"], no_plugin, capsys)
    assert code == 1
    assert err.rstrip().endswith("sudo apt-get install libasound2-plugins")
    assert "no ALSA pulse plugin" in err

    no_server = RigHost(
        which=without("pulseaudio"), alsa_pulse_plugin=lambda: True, running_server=lambda: None
    )
    code, _, err = _run_in_process(["up"], no_server, capsys)
    assert code == 1
    assert err.rstrip().endswith("sudo apt-get install pulseaudio")
    code, _, err = _run_in_process(["up", "--on-server"], no_server, capsys)
    assert code == 1 and "no sound server answers" in err
    assert not list(tmp_path.iterdir())  # nothing was started or written


def test_a_path_without_pulseaudio_is_reported(tmp_path: Path) -> None:
    """The real lookup: a PATH with pactl but no pulseaudio, and no sound server to fall back on."""
    pactl = shutil.which("pactl")
    if pactl is None:
        pytest.skip("pactl is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pactl").symlink_to(pactl)
    env = {key: value for key, value in os.environ.items() if key not in RIG_KEYS}
    env.update(PATH=str(bin_dir), XDG_RUNTIME_DIR=str(tmp_path), PULSE_SERVER=f"unix:{tmp_path}/none")
    result = subprocess.run(
        [sys.executable, "-m", "app", "rig", "up"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "no pulseaudio command" in result.stderr
    assert "sudo apt-get install pulseaudio" in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "--prefix", "bad prefix"],
        ["status", "--prefix", "../x"],
        ["up", "--echo-level", "nan"],
        ["up", "--echo-level", "-10", "--no-echo"],
        ["up", "--echo-delay", "0", "--echo-level", "-10"],
    ],
)
def test_bad_options_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run_in_process(argv, RigHost(), capsys)
    assert code == 2 and out == ""
    assert err.startswith("helpdesk-voice: ") and err.count("\n") == 1
