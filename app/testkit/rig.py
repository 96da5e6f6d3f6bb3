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
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_ALSA_CONF = "/usr/share/alsa/alsa.conf"


class RigUnavailable(RuntimeError):
    """PulseAudio or the ALSA pulse plugin is missing, or the daemon would not start."""


@dataclass
class VirtualAudioRig:
    prefix: str = "hv"
    rate: int = 48000
    workdir: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _own_workdir: bool = field(default=False, init=False, repr=False)
    _saved_env: dict[str, str | None] = field(default_factory=dict, init=False, repr=False)
    _loopback_module: int | None = field(default=None, init=False, repr=False)
    _mic_module: int | None = field(default=None, init=False, repr=False)

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
    def env(self) -> dict[str, str]:
        """Environment for a child process that should see the rig's devices."""
        assert self.workdir is not None
        return {
            "PULSE_SERVER": f"unix:{self.socket_path}",
            "ALSA_CONFIG_PATH": f"{SYSTEM_ALSA_CONF}:{self.workdir / 'asound.conf'}",
            "PULSE_RUNTIME_PATH": str(self.workdir / "runtime"),
            "PULSE_STATE_PATH": str(self.workdir / "state"),
        }

    def start(self, timeout: float = 10.0) -> None:
        """Start the daemon, create the devices and point this process's environment at them."""
        for tool in ("pulseaudio", "pactl"):
            if shutil.which(tool) is None:
                raise RigUnavailable(
                    f"{tool} is not installed (Debian package pulseaudio / pulseaudio-utils)"
                )
        if not Path(SYSTEM_ALSA_CONF).exists():
            raise RigUnavailable(f"{SYSTEM_ALSA_CONF} is missing (Debian package libasound2-data)")
        if not _alsa_pulse_plugin_present():
            raise RigUnavailable("the ALSA pulse plugin is missing (Debian package libasound2-plugins)")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="hv-pulse-"))
            self._own_workdir = True
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
        (self.workdir / "asound.conf").write_text(self._alsa_config())
        env = {
            **os.environ,
            **self.env,
            "HOME": str(self.workdir / "home"),
            "XDG_CONFIG_HOME": str(self.workdir / "config"),
        }
        log = open(self.workdir / "pulseaudio.log", "wb")  # noqa: SIM115 - lives as long as the daemon
        self._process = subprocess.Popen(
            [
                "pulseaudio",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--disallow-exit",
                "--use-pid-file=no",
                "--log-target=stderr",
                "-n",
                "-F",
                str(startup),
            ],
            stdout=log,
            stderr=log,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RigUnavailable(f"pulseaudio exited at start: {self._tail_log()}")
            if self.socket_path.exists() and self._pactl("info", check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RigUnavailable(f"pulseaudio did not answer within {timeout:.0f} s")
            time.sleep(0.05)
        for sink in (self.mic_feed, self.speaker):
            self._pactl(
                "load-module",
                "module-null-sink",
                f"sink_name={sink}",
                "norewinds=1",
                f"rate={self.rate}",
                "channels=1",
                f"sink_properties=device.description={sink}",
            )
        self.plug_mic()
        for key, value in self.env.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def plug_mic(self) -> None:
        """The virtual microphone appears (at start, or again after :meth:`unplug_mic`)."""
        out = self._pactl(
            "load-module",
            "module-remap-source",
            f"source_name={self.mic}",
            f"master={self.mic_feed}.monitor",
            f"source_properties=device.description={self.mic}",
        )
        self._mic_module = int(out.stdout.strip())

    def unplug_mic(self) -> None:
        """The virtual microphone disappears, as an unplugged USB headset does."""
        if self._mic_module is not None:
            self._pactl("unload-module", str(self._mic_module))
            self._mic_module = None

    def set_echo(self, enabled: bool, latency_ms: int = 20, gain_db: float = 0.0) -> None:
        """Route what the speaker plays back into the microphone, like laptop speakers do.

        ``gain_db`` is the echo's level relative to what the speaker plays (0: unattenuated).
        """
        if enabled and self._loopback_module is None:
            out = self._pactl(
                "load-module",
                "module-loopback",
                f"source={self.speaker}.monitor",
                f"sink={self.mic_feed}",
                f"latency_msec={latency_ms}",
                "source_dont_move=true",
                "sink_dont_move=true",
            )
            self._loopback_module = int(out.stdout.strip())
            if gain_db != 0.0:
                # a linear factor: pactl would read a negative dB figure as an option
                factor = f"{10.0 ** (gain_db / 20.0):.4f}"
                self._pactl("set-sink-input-volume", self._loopback_input(), factor)
        elif not enabled and self._loopback_module is not None:
            self._pactl("unload-module", str(self._loopback_module))
            self._loopback_module = None

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
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> VirtualAudioRig:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

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
        result = subprocess.run(
            ["pactl", "--server", f"unix:{self.socket_path}", *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if check and result.returncode != 0:
            raise RigUnavailable(f"pactl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def _tail_log(self) -> str:
        assert self.workdir is not None
        try:
            return (self.workdir / "pulseaudio.log").read_text(errors="replace")[-600:]
        except OSError:
            return "(no log)"


def _alsa_pulse_plugin_present() -> bool:
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
