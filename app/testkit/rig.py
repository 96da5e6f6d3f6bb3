"""Virtual audio devices on a private PulseAudio daemon, for tests, benchmarks and testers.

The rig starts its own user-mode PulseAudio with a minimal startup file (no restore or
suspend-on-idle modules, which add state and wake-up delay between runs), creates null sinks
with ``norewinds=1`` (without it a sink nobody listens to renders far ahead and capture arrives
late), and exposes every PulseAudio device to PortAudio through ALSA ``pulse`` PCMs named after
them, one direction each.

Devices (names are ``PREFIX_...``, prefix ``hv`` by default):
- ``hv_mic``: the virtual microphone, a real source remapped from ``hv_mic_feed.monitor``.
- ``hv_mic_feed``: what a test plays here is what the microphone hears.
- ``hv_speaker``: the virtual speaker the app plays into.
- ``hv_speaker_monitor``: records what the speaker plays.

PortAudio fixes its device list when it initialises, so start the rig before importing
``sounddevice`` (or call :func:`reinitialise_portaudio` afterwards).

Two lifetimes:

- **In-process** (``VirtualAudioRig()``, ``.start()``/``.stop()`` or ``with``): the tests and the
  benchmarks. The daemon is a child of this process; ``stop()`` ends it and removes its files.
- **Persistent** (``helpdesk-voice rig up``, :func:`bring_up_rig`): the daemon runs in a session of
  its own and outlives the command, in a well-known per-user working directory
  (:func:`rig_workdir`) that holds its files and a JSON state file (``rig.json``: mode, pid,
  server, rate, module ids, echo). :func:`attached_rig` binds a new object to it from any process.
  On such an object ``stop()`` only lets go (it restores what :meth:`VirtualAudioRig.apply_env`
  changed); :meth:`VirtualAudioRig.take_down` (or :func:`take_down_rig`) ends the devices for good.

Either lifetime can, instead of starting a daemon, load the same devices into a sound server
that is already running (``server=``: PipeWire's PulseAudio server on a desktop without the
``pulseaudio`` daemon, or any PulseAudio); taking the rig down then unloads exactly the modules it
loaded and leaves the server running.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SYSTEM_ALSA_CONF = "/usr/share/alsa/alsa.conf"
STATE_FILE = "rig.json"
_STATE_FORMAT = 1
# A unix socket's path must fit in sockaddr_un.sun_path (108 bytes with the terminating NUL).
_MAX_SOCKET_PATH = 107
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
# Module roles in the order they are loaded; taken down in reverse.
_ROLES = ("mic_feed", "speaker", "mic", "loopback")


class RigUnavailable(RuntimeError):
    """PulseAudio or the ALSA pulse plugin is missing, or the daemon would not start."""


@dataclass(frozen=True)
class Echo:
    """A loopback from the speaker into the microphone: its delay and its level (dB, 0: as played)."""

    latency_ms: int = 20
    gain_db: float = 0.0


def check_prefix(prefix: str) -> str:
    """The prefix, if it can name devices, ALSA PCMs and a directory; else ValueError."""
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(
            f"the prefix {prefix!r} cannot name devices: use a letter, then up to 31 letters, "
            "digits or underscores"
        )
    return prefix


@dataclass
class VirtualAudioRig:
    prefix: str = "hv"
    rate: int = 48000
    workdir: Path | None = None
    # None: start a private PulseAudio. Otherwise the address of a running server (``unix:/path``,
    # as ``pactl --server`` takes it) to load the devices into instead.
    server: str | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _own_workdir: bool = field(default=False, init=False, repr=False)
    _saved_env: dict[str, str | None] = field(default_factory=dict, init=False, repr=False)
    _loopback_module: int | None = field(default=None, init=False, repr=False)
    _mic_module: int | None = field(default=None, init=False, repr=False)
    _sink_modules: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _echo: Echo | None = field(default=None, init=False, repr=False)
    # Persistent rigs: the daemon outlives this object; its pid (and start time, so a recycled
    # pid is never taken for it) and every change are kept in the state file.
    _persistent: bool = field(default=False, init=False, repr=False)
    _pid: int | None = field(default=None, init=False, repr=False)
    _pid_start: int | None = field(default=None, init=False, repr=False)

    @property
    def mic(self) -> str:
        return f"{self.prefix}_mic"

    @property
    def mic_feed(self) -> str:
        return f"{self.prefix}_mic_feed"

    @property
    def speaker(self) -> str:
        return f"{self.prefix}_speaker"

    @property
    def speaker_monitor(self) -> str:
        return f"{self.prefix}_speaker_monitor"

    @property
    def socket_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "native"

    @property
    def server_address(self) -> str:
        """The server the devices live on, as ``pactl --server`` and ``PULSE_SERVER`` take it."""
        return self.server if self.server is not None else f"unix:{self.socket_path}"

    @property
    def on_server(self) -> bool:
        """True when the devices live on a server this rig did not start."""
        return self.server is not None

    @property
    def pid(self) -> int | None:
        """The private daemon's process id (None on a server the rig did not start)."""
        if self._process is not None:
            return self._process.pid
        return self._pid

    @property
    def echo(self) -> Echo | None:
        """The speaker-to-microphone loopback, if one is on."""
        return self._echo

    @property
    def persistent(self) -> bool:
        """True for a rig that outlives the process that made it (``rig up``, :func:`attached_rig`)."""
        return self._persistent

    @property
    def env(self) -> dict[str, str]:
        """Environment for a child process that should see the rig's devices."""
        assert self.workdir is not None
        alsa = f"{SYSTEM_ALSA_CONF}:{self.workdir / 'asound.conf'}"
        if self.server is not None:
            # The user's own server: its runtime and state paths stay the user's.
            return {"PULSE_SERVER": self.server, "ALSA_CONFIG_PATH": alsa}
        return {
            "PULSE_SERVER": f"unix:{self.socket_path}",
            "ALSA_CONFIG_PATH": alsa,
            "PULSE_RUNTIME_PATH": str(self.workdir / "runtime"),
            "PULSE_STATE_PATH": str(self.workdir / "state"),
        }

    def start(self, timeout: float = 10.0) -> None:
        """Start the daemon, create the devices and point this process's environment at them."""
        self._launch(timeout, detached=False)
        self.apply_env()

    def apply_env(self) -> None:
        """Point this process's environment at the rig (``start()`` does; ``stop()`` undoes it)."""
        for key, value in self.env.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def _launch(self, timeout: float, *, detached: bool) -> None:
        tools = ("pactl",) if self.server is not None else ("pulseaudio", "pactl")
        for tool in tools:
            if shutil.which(tool) is None:
                raise RigUnavailable(
                    f"{tool} is not installed (Debian package pulseaudio / pulseaudio-utils)"
                )
        if not Path(SYSTEM_ALSA_CONF).exists():
            raise RigUnavailable(f"{SYSTEM_ALSA_CONF} is missing (Debian package libasound2-data)")
        if not alsa_pulse_plugin_present():
            raise RigUnavailable("the ALSA pulse plugin is missing (Debian package libasound2-plugins)")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="hv-pulse-"))
            self._own_workdir = True
        else:
            self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if detached:
                self.workdir.chmod(0o700)  # its socket lets anyone in who can reach it
        if self.server is None and len(os.fsencode(self.socket_path)) > _MAX_SOCKET_PATH:
            raise RigUnavailable(f"the rig's socket path is too long for a unix socket: {self.socket_path}")
        (self.workdir / "asound.conf").write_text(self._alsa_config())
        try:
            if self.server is None:
                self._start_daemon(timeout, detached=detached)
                defaults = None
            else:
                self._check_server_free()
                defaults = self._defaults()
            for sink in (self.mic_feed, self.speaker):
                out = self._load_module(
                    "module-null-sink",
                    [f"sink_name={sink}"],
                    [
                        "norewinds=1",
                        f"rate={self.rate}",
                        "channels=1",
                        f"sink_properties=device.description={sink}",
                    ],
                )
                self._sink_modules[sink] = out
                self._record()
            self.plug_mic()
            if defaults is not None:
                self._restore_defaults(*defaults)
        except BaseException:
            self._abandon()
            raise

    def _start_daemon(self, timeout: float, *, detached: bool) -> None:
        assert self.workdir is not None
        for sub in ("runtime", "state", "home", "config/pulse"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        (self.workdir / "config/pulse/daemon.conf").write_text(
            f"default-sample-rate = {self.rate}\n"
            "default-fragments = 2\n"
            "default-fragment-size-msec = 5\n"
            "flat-volumes = no\n"
        )
        startup = self.workdir / "minimal.pa"
        startup.write_text(
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.socket_path}\n"
        )
        env = {
            **os.environ,
            **self.env,
            "HOME": str(self.workdir / "home"),
            "XDG_CONFIG_HOME": str(self.workdir / "config"),
        }
        argv = [
            "pulseaudio",
            "--daemonize=no",
            "--exit-idle-time=-1",
            "--disallow-exit",
            "--use-pid-file=no",
            "--log-target=stderr",
            "-n",
            "-F",
            str(startup),
        ]
        log_path = self.workdir / "pulseaudio.log"
        if detached:
            self._pid = _spawn_detached(argv, env, log_path)
            self._pid_start = _process_start(self._pid)
            self._persistent = True
            self._record()
        else:
            with open(log_path, "wb") as log:  # the daemon keeps its own copy of the descriptor
                self._process = subprocess.Popen(
                    argv, stdout=log, stderr=log, env=env, stdin=subprocess.DEVNULL
                )
        deadline = time.monotonic() + timeout
        while True:
            if self._daemon_exited():
                raise RigUnavailable(f"pulseaudio exited at start: {self._tail_log()}")
            if self.socket_path.exists() and self._pactl("info", check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RigUnavailable(f"pulseaudio did not answer within {timeout:.0f} s")
            time.sleep(0.05)

    def _daemon_exited(self) -> bool:
        if self._process is not None:
            return self._process.poll() is not None
        return self._pid is None or not _same_process(self._pid, self._pid_start)

    def _load_module(self, name: str, essential: list[str], optional: list[str]) -> int:
        """Load a module and return its id.

        On a server the rig did not start, arguments that server may not know (PipeWire's
        PulseAudio server implements these modules with fewer options) are dropped if the full
        set is refused. Not exercised against PipeWire here.
        """
        result = self._pactl("load-module", name, *essential, *optional, check=self.server is None)
        if result.returncode != 0:
            result = self._pactl("load-module", name, *essential)
        return int(result.stdout.strip())

    def plug_mic(self) -> None:
        """The virtual microphone appears (at start, or again after :meth:`unplug_mic`)."""
        self._mic_module = self._load_module(
            "module-remap-source",
            [f"source_name={self.mic}", f"master={self.mic_feed}.monitor"],
            [f"source_properties=device.description={self.mic}"],
        )
        self._record()

    def unplug_mic(self) -> None:
        """The virtual microphone disappears, as an unplugged USB headset does."""
        if self._mic_module is not None:
            self._pactl("unload-module", str(self._mic_module))
            self._mic_module = None
            self._record()

    def set_echo(self, enabled: bool, latency_ms: int = 20, gain_db: float = 0.0) -> None:
        """Route what the speaker plays back into the microphone, like laptop speakers do.

        ``gain_db`` is the echo's level relative to what the speaker plays (0: unattenuated).
        While an echo is on, ``set_echo(True, ...)`` changes nothing: turn it off first to change it.
        """
        if enabled and self._loopback_module is None:
            self._loopback_module = self._load_module(
                "module-loopback",
                [f"source={self.speaker}.monitor", f"sink={self.mic_feed}", f"latency_msec={latency_ms}"],
                ["source_dont_move=true", "sink_dont_move=true"],
            )
            self._echo = Echo(latency_ms, gain_db)
            self._record()
            if gain_db != 0.0:
                # a linear factor: pactl would read a negative dB figure as an option
                factor = f"{10.0 ** (gain_db / 20.0):.4f}"
                self._pactl("set-sink-input-volume", self._loopback_input(), factor)
        elif not enabled and self._loopback_module is not None:
            self._pactl("unload-module", str(self._loopback_module))
            self._loopback_module = None
            self._echo = None
            self._record()

    def _loopback_input(self) -> str:
        """The sink input the loopback module plays into the microphone feed with."""
        listing = self._pactl("list", "sink-inputs").stdout
        current: str | None = None
        for line in listing.splitlines():
            line = line.strip()
            if line.startswith("Sink Input #"):
                current = line.removeprefix("Sink Input #")
            elif line == f"Owner Module: {self._loopback_module}" and current is not None:
                return current
        raise RigUnavailable("the echo loopback has no sink input")

    def stop(self) -> None:
        """End an in-process rig: the daemon (or the modules it loaded on a server) and its files.

        On a persistent rig this only lets go of it: the environment :meth:`apply_env` changed is
        restored and the devices stay up; :meth:`take_down` ends them.
        """
        if not self._persistent:
            self._end_devices()
            self._sink_modules.clear()
            self._mic_module = self._loopback_module = None
            self._echo = None
        self._restore_env()
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def take_down(self) -> None:
        """End the devices for good, persistent or not: stop the private daemon (or unload the
        modules this rig loaded, leaving the server running) and remove the working directory."""
        if not self._persistent:
            self.stop()
            return
        assert self.workdir is not None
        with _locked(self.workdir.parent):
            self._end_devices()
            self._restore_env()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def is_up(self) -> bool:
        """The daemon is alive and answers, or (on a server) the server answers and holds every
        module this rig loaded."""
        if self.server is None:
            if self._daemon_exited():
                return False
            return self._answers()
        modules = self._server_modules()
        owned = self._modules()
        if modules is None or "mic_feed" not in owned or "speaker" not in owned:
            return False
        return all(self._owns(modules, role, module) for role, module in owned.items())

    def __enter__(self) -> VirtualAudioRig:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _restore_env(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()

    def _abandon(self) -> None:
        """Undo a start that failed half way."""
        self._end_devices()
        if self._persistent and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.stop()

    def _end_devices(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        elif self._pid is not None:
            _end_process(self._pid, self._pid_start)
            self._pid = self._pid_start = None
        elif self.server is not None:
            self._unload_own_modules()

    def _modules(self) -> dict[str, int]:
        roles = {
            "mic_feed": self._sink_modules.get(self.mic_feed),
            "speaker": self._sink_modules.get(self.speaker),
            "mic": self._mic_module,
            "loopback": self._loopback_module,
        }
        return {role: module for role, module in roles.items() if module is not None}

    def _owns(self, modules: dict[int, tuple[str, list[str]]], role: str, module: int) -> bool:
        """Module ``module`` on the server is the one this rig loaded as ``role`` (a restarted
        server reuses ids, so the id alone proves nothing)."""
        expected = {
            "mic_feed": ("module-null-sink", f"sink_name={self.mic_feed}"),
            "speaker": ("module-null-sink", f"sink_name={self.speaker}"),
            "mic": ("module-remap-source", f"source_name={self.mic}"),
            "loopback": ("module-loopback", f"sink={self.mic_feed}"),
        }[role]
        found = modules.get(module)
        return found is not None and found[0] == expected[0] and expected[1] in found[1]

    def _unload_own_modules(self) -> None:
        modules = self._server_modules()
        if modules is not None:
            owned = self._modules()
            for role in reversed(_ROLES):
                if role in owned and self._owns(modules, role, owned[role]):
                    self._pactl("unload-module", str(owned[role]), check=False)
        self._sink_modules.clear()
        self._mic_module = self._loopback_module = None
        self._echo = None

    def _server_modules(self) -> dict[int, tuple[str, list[str]]] | None:
        """The server's modules by id (name, arguments), or None when it does not answer."""
        result = self._pactl("list", "short", "modules", check=False)
        if result.returncode != 0:
            return None
        modules: dict[int, tuple[str, list[str]]] = {}
        for line in result.stdout.splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[0].strip().isdigit():
                args = parts[2].split() if len(parts) > 2 else []
                modules[int(parts[0])] = (parts[1].strip(), args)
        return modules

    def _answers(self) -> bool:
        for attempt in range(2):
            if self._pactl("info", check=False).returncode == 0:
                return True
            if attempt == 0:
                time.sleep(0.2)
        return False

    def _check_server_free(self) -> None:
        """Refuse to load devices whose names the server already has (another rig's, or a leftover)."""
        ours = {self.mic, self.mic_feed, self.speaker}
        for kind in ("sinks", "sources"):
            result = self._pactl("list", "short", kind, check=False)
            if result.returncode != 0:
                raise RigUnavailable(
                    f"the sound server {self.server_address} does not answer: {result.stderr.strip()}"
                )
            for line in result.stdout.splitlines():
                parts = line.split("\t")
                if len(parts) > 1 and parts[1] in ours:
                    raise RigUnavailable(
                        f"the sound server {self.server_address} already has a device named {parts[1]}; "
                        "choose another prefix"
                    )

    def _defaults(self) -> tuple[str | None, str | None]:
        """The server's default sink and source, as ``pactl info`` names them."""
        info = _info_fields(self._pactl("info").stdout)
        return info.get("Default Sink"), info.get("Default Source")

    def _restore_defaults(self, sink: str | None, source: str | None) -> None:
        """New sinks must not take over the user's sound: put back defaults that moved to them."""
        now_sink, now_source = self._defaults()
        if sink and now_sink != sink:
            self._pactl("set-default-sink", sink, check=False)
        if source and now_source != source:
            self._pactl("set-default-source", source, check=False)

    def _record(self) -> None:
        """Write the state file of a persistent rig (atomically; other processes read it)."""
        if not self._persistent or self.workdir is None:
            return
        state: dict[str, Any] = {
            "format": _STATE_FORMAT,
            "prefix": self.prefix,
            "mode": "server" if self.server is not None else "daemon",
            "pid": self._pid,
            "pid_start": self._pid_start,
            "workdir": str(self.workdir),
            "server": self.server_address,
            "rate": self.rate,
            "modules": self._modules(),
            "echo": None
            if self._echo is None
            else {"latency_ms": self._echo.latency_ms, "gain_db": self._echo.gain_db},
        }
        path = self.workdir / STATE_FILE
        temporary = path.with_name(STATE_FILE + ".tmp")
        temporary.write_text(json.dumps(state, indent=2) + "\n")
        temporary.chmod(0o600)
        os.replace(temporary, path)

    def _alsa_config(self) -> str:
        def pcm(name: str, direction: str, pulse_device: str) -> str:
            return (
                f"pcm.{name} {{\n"
                f"  type asym\n"
                f'  {direction}.pcm {{ type pulse device "{pulse_device}" }}\n'
                f'  hint {{ show on description "{name}" }}\n'
                f"}}\n"
            )

        return "".join(
            [
                pcm(self.mic, "capture", self.mic),
                pcm(self.mic_feed, "playback", self.mic_feed),
                pcm(self.speaker, "playback", self.speaker),
                pcm(self.speaker_monitor, "capture", f"{self.speaker}.monitor"),
            ]
        )

    def _pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = ["pactl", "--server", self.server_address, *args]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            result = subprocess.CompletedProcess(command, 124, "", "no answer within 10 s")
        if check and result.returncode != 0:
            raise RigUnavailable(f"pactl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def _tail_log(self) -> str:
        assert self.workdir is not None
        try:
            return (self.workdir / "pulseaudio.log").read_text(errors="replace")[-600:]
        except OSError:
            return "(no log)"


def alsa_pulse_plugin_present() -> bool:
    """The ALSA ``pulse`` PCM plugin (Debian package libasound2-plugins) is installed."""
    patterns = ("/usr/lib/*/alsa-lib", "/usr/lib/alsa-lib", "/usr/lib64/alsa-lib")
    return any(
        (Path(d) / "libasound_module_pcm_pulse.so").exists()
        for pattern in patterns
        for d in glob.glob(pattern)
    )


def reinitialise_portaudio() -> None:
    """Make an already-imported sounddevice see devices created after its import."""
    import sounddevice as sd

    sd._terminate()
    sd._initialize()


# --- persistent rigs ----------------------------------------------------------------------------


def rig_workdir(prefix: str = "hv") -> Path:
    """The persistent rig's working directory: ``$XDG_RUNTIME_DIR/helpdesk-voice-rig-PREFIX``, or
    without XDG_RUNTIME_DIR the same name inside a private (0700) ``helpdesk-voice-rig-UID`` folder
    in the temporary directory. Nothing is created here."""
    return _base_dir() / f"helpdesk-voice-rig-{check_prefix(prefix)}"


def current_server() -> str | None:
    """The address of the sound server ``pactl`` finds from this environment (PULSE_SERVER, else
    the user's own: PipeWire's PulseAudio server or a PulseAudio daemon), or None if none answers."""
    if shutil.which("pactl") is None:
        return None
    try:
        result = subprocess.run(["pactl", "info"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    address = _info_fields(result.stdout).get("Server String") if result.returncode == 0 else None
    if not address:
        return None
    return f"unix:{address}" if address.startswith("/") else address


def attached_rig(prefix: str = "hv") -> VirtualAudioRig | None:
    """The persistent rig of this prefix (``helpdesk-voice rig up``), bound to its running daemon or
    server, or None when none is up. A rig whose daemon died (or whose devices left the server) is
    cleaned up and None returned.

    The object's device names, ``env`` and ``set_echo`` work as on a rig this process started.
    ``stop()`` on it only lets go (it undoes :meth:`VirtualAudioRig.apply_env`, if called); the
    devices stay up for others. ``take_down()`` ends them, as ``helpdesk-voice rig down`` does.
    """
    return _with_attached(prefix)


def _with_attached(
    prefix: str, then: Callable[[VirtualAudioRig], object] | None = None
) -> VirtualAudioRig | None:
    """The persistent rig of this prefix, with ``then`` done to it under the folder's lock."""
    workdir = rig_workdir(prefix)
    base = workdir.parent
    if not base.is_dir():
        return None
    _check_private(base)
    with _locked(base):
        rig = _attach(prefix, workdir)
        if rig is not None and then is not None:
            then(rig)
        return rig


def bring_up_rig(
    prefix: str = "hv",
    *,
    server: str | None = None,
    echo: Echo | None = None,
    rate: int = 48000,
    timeout: float = 10.0,
) -> tuple[VirtualAudioRig, bool]:
    """The persistent rig of this prefix, started if none is up: ``(rig, started)``.

    ``server``: load the devices into this running server instead of starting a private daemon.
    ``echo`` is set on a rig this call starts; a rig that was already up is returned as it is
    (change its echo with ``set_echo``).
    """
    workdir = rig_workdir(prefix)
    base = workdir.parent
    _make_private(base)
    with _locked(base):
        found = _attach(prefix, workdir)
        if found is not None:
            return found, False
        rig = VirtualAudioRig(prefix=prefix, rate=rate, workdir=workdir, server=server)
        rig._persistent = True
        try:
            rig._launch(timeout, detached=True)
            rig._record()
            if echo is not None:
                rig.set_echo(True, echo.latency_ms, echo.gain_db)
        except BaseException:
            rig._abandon()
            raise
        return rig, True


def take_down_rig(prefix: str = "hv") -> VirtualAudioRig | None:
    """End the persistent rig of this prefix; the rig that was up, or None if none was."""
    return _with_attached(prefix, VirtualAudioRig.take_down)


def _attach(prefix: str, workdir: Path) -> VirtualAudioRig | None:
    """Under the lock: the rig the state file describes if it is up; else clean up after it."""
    if not workdir.is_dir() or workdir.is_symlink():
        return None
    rig = _from_state(prefix, workdir)
    if rig is not None and rig.is_up():
        return rig
    if rig is not None:
        rig._end_devices()  # a daemon that no longer answers, or what is left on the server
    shutil.rmtree(workdir, ignore_errors=True)
    return None


def _from_state(prefix: str, workdir: Path) -> VirtualAudioRig | None:
    try:
        state = json.loads((workdir / STATE_FILE).read_text())
        if state.get("format") != _STATE_FORMAT or state.get("prefix") != prefix:
            return None
        mode = state["mode"]
        rig = VirtualAudioRig(
            prefix=prefix,
            rate=int(state["rate"]),
            workdir=workdir,
            server=str(state["server"]) if mode == "server" else None,
        )
        rig._persistent = True
        if mode == "daemon":
            rig._pid = int(state["pid"])
            rig._pid_start = None if state.get("pid_start") is None else int(state["pid_start"])
        modules = {str(role): int(module) for role, module in dict(state["modules"]).items()}
        for role, sink in (("mic_feed", rig.mic_feed), ("speaker", rig.speaker)):
            if role in modules:
                rig._sink_modules[sink] = modules[role]
        rig._mic_module = modules.get("mic")
        rig._loopback_module = modules.get("loopback")
        echo = state.get("echo")
        if echo is not None:
            rig._echo = Echo(int(echo["latency_ms"]), float(echo["gain_db"]))
            if not math.isfinite(rig._echo.gain_db):
                return None
        return rig
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _runtime_dir() -> Path | None:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        return Path(runtime)
    return None


def _base_dir() -> Path:
    runtime = _runtime_dir()
    if runtime is not None:
        return runtime
    return Path(tempfile.gettempdir()) / f"helpdesk-voice-rig-{os.getuid()}"


def _is_runtime_dir(base: Path) -> bool:
    return base == _runtime_dir()


def _make_private(base: Path) -> None:
    if not _is_runtime_dir(base):
        with contextlib.suppress(FileExistsError):
            base.mkdir(mode=0o700)
    _check_private(base)


def _check_private(base: Path) -> None:
    """The temporary directory is shared: use a folder there only if it is this user's, 0700."""
    if _is_runtime_dir(base):
        return  # the session's own runtime directory, private by definition
    info = os.lstat(base)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise RigUnavailable(
            f"{base} is not a private folder of this user (it must be a directory of yours with "
            "mode 0700); remove it, or set XDG_RUNTIME_DIR"
        )


_lock_guard = threading.RLock()
_locks_held: set[Path] = set()


@contextlib.contextmanager
def _locked(base: Path) -> Iterator[None]:
    """One process at a time starts, inspects or ends the persistent rigs of ``base`` (reentrant).

    ``flock`` on the folder itself: nothing is left behind, and the lock dies with its holder.
    """
    import fcntl  # POSIX only; this module is also imported where the rig is not available

    with _lock_guard:
        if base in _locks_held:
            yield
            return
        descriptor = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            _locks_held.add(base)
            try:
                yield
            finally:
                _locks_held.discard(base)
        finally:
            os.close(descriptor)


def _spawn_detached(argv: list[str], env: dict[str, str], log_path: Path) -> int:
    """Start ``argv`` in a session of its own, output to ``log_path``; its pid.

    ``posix_spawn`` rather than ``Popen``: the process is meant to outlive this one, and a
    ``Popen`` object still running when collected warns. No descriptor of this process but the
    log reaches it (one left open on a pipe would hold ``$(helpdesk-voice rig up)`` open forever).
    """
    executable = shutil.which(argv[0])
    if executable is None:
        raise RigUnavailable(f"{argv[0]} is not installed")
    actions: list[tuple[Any, ...]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    for name in os.listdir("/proc/self/fd"):
        descriptor = int(name)
        if descriptor > 2:
            with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
                if os.get_inheritable(descriptor):
                    actions.append((os.POSIX_SPAWN_CLOSE, descriptor))
    return os.posix_spawn(
        executable,
        argv,
        env,
        file_actions=actions,
        setsid=True,
        setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # Python ignores these; a daemon should not
    )


def _process_start(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), None if it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _same_process(pid: int, start: int | None) -> bool:
    """``pid`` is still the process that was recorded (not gone, not a zombie, not a recycled pid)."""
    now = _process_start(pid)
    return now is not None and (start is None or now == start)


def _end_process(pid: int, start: int | None) -> None:
    """SIGTERM, up to 5 s to go, then SIGKILL. Only the recorded process is ever signalled."""
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        if not _same_process(pid, start):
            break
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            _reap(pid)
            if not _same_process(pid, start):
                break
            time.sleep(0.05)
    _reap(pid)
    if _same_process(pid, start):
        raise RigUnavailable(f"the rig's PulseAudio (pid {pid}) would not stop, even with SIGKILL")


def _reap(pid: int) -> None:
    """Collect the exit status if the daemon is this process's own child (it started it)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _info_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields
