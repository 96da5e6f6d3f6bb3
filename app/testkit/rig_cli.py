"""``helpdesk-voice rig up|down|status``: private virtual audio devices for testers.

``rig up`` starts the persistent rig (:func:`app.testkit.rig.bring_up_rig`: a private PulseAudio
in a session of its own, or the same devices loaded into the user's running sound server) and
prints, on stdout, only shell lines (``eval "$(helpdesk-voice rig up)"``); everything for a person
goes to stderr. Exit codes follow app/cli.py's contract (0 fine, 1 failure, 2 usage), plus 3 for
"not up" (``rig status``) and "not available on this system" (Windows, macOS). This module must
not import app/cli.py (layers), so it prints its own ``helpdesk-voice:`` lines.
"""

from __future__ import annotations

import argparse
import math
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.testkit.rig import Echo, VirtualAudioRig

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_UP = 3

NOT_UP = "no virtual devices are up (start them with: helpdesk-voice rig up)"
DEFAULT_PREFIX = "hv"
DEFAULT_ECHO_DELAY_MS = 20


def _plugin_present() -> bool:
    from app.testkit.rig import alsa_pulse_plugin_present

    return alsa_pulse_plugin_present()


def _server() -> str | None:
    from app.testkit.rig import current_server

    return current_server()


@dataclass(frozen=True)
class RigHost:
    """What the command asks of this machine; tests replace parts of it."""

    platform: str = field(default_factory=lambda: sys.platform)
    which: Callable[[str], str | None] = shutil.which
    alsa_pulse_plugin: Callable[[], bool] = _plugin_present
    running_server: Callable[[], str | None] = _server


def rig_main(args: argparse.Namespace, host: RigHost | None = None) -> int:
    host = host or RigHost()
    command: str = args.rig_command
    if host.platform in ("win32", "darwin"):
        return _elsewhere(command, host.platform)
    from app.testkit.rig import RigUnavailable, check_prefix

    try:
        check_prefix(args.prefix)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        if command == "up":
            return _up(args, host)
        if command == "down":
            return _down(args.prefix)
        return _status(args.prefix)
    except RigUnavailable as exc:
        return _fail(str(exc).strip().splitlines()[0] if str(exc).strip() else "the rig failed", EXIT_FAILURE)
    except OSError as exc:
        return _fail(f"the rig's files: {exc}", EXIT_FAILURE)


def _up(args: argparse.Namespace, host: RigHost) -> int:
    from app.testkit.rig import Echo, attached_rig, bring_up_rig

    prefix: str = args.prefix
    level: float | None = args.echo_level
    delay: int | None = args.echo_delay
    if level is not None and not (math.isfinite(level) and -100.0 <= level <= 20.0):
        return _fail(f"--echo-level is a gain in dB from -100 to 20, not {level:g}", EXIT_USAGE)
    if delay is not None and not 1 <= delay <= 5000:
        return _fail(f"--echo-delay is 1 to 5000 ms, not {delay}", EXIT_USAGE)
    if args.no_echo and (level is not None or delay is not None):
        return _fail("--no-echo cannot go with --echo-level or --echo-delay", EXIT_USAGE)

    existing = attached_rig(prefix)
    server: str | None = None
    if existing is None:
        problem, server = _pick_server(args.on_server, host)
        if problem is not None:
            return _fail(problem, EXIT_FAILURE)
        where = f"on the sound server {server}" if server else "on a private PulseAudio"
        _say(f"starting the virtual devices {where} ...")
    fresh = Echo(delay or DEFAULT_ECHO_DELAY_MS, level) if level is not None else None
    rig, started = bring_up_rig(prefix, server=server, echo=fresh)
    if not started:
        if args.on_server and not rig.on_server:
            _say(f"they are up on a private PulseAudio; to move them: helpdesk-voice rig down{_flag(prefix)}")
        current = rig.echo
        change = current
        if args.no_echo:
            change = None
        elif level is not None:
            change = Echo(delay or (current.latency_ms if current else DEFAULT_ECHO_DELAY_MS), level)
        elif delay is not None and current is not None:
            change = Echo(delay, current.gain_db)
        if change != current:
            rig.set_echo(False)
            if change is not None:
                rig.set_echo(True, change.latency_ms, change.gain_db)
    if delay is not None and rig.echo is None:
        _say("--echo-delay alone makes no echo: give its level too (--echo-level DB)")
    _report(rig, "are up" if started else "were already up")
    return EXIT_OK


def _pick_server(on_server: bool, host: RigHost) -> tuple[str | None, str | None]:
    """(a problem to report, the server to use: None for a private daemon)."""
    missing: list[str] = []
    lacks: list[str] = []
    server: str | None = None
    if on_server:
        if host.which("pactl") is None:
            lacks.append("no pactl command")
            missing.append("pulseaudio-utils")
        else:
            server = host.running_server()
            if server is None:
                return (
                    "--on-server: no sound server answers pactl info (is PipeWire or PulseAudio running?)",
                    None,
                )
    elif host.which("pulseaudio") is None:
        # PipeWire desktops have no pulseaudio daemon, but their PulseAudio server can hold the devices.
        server = host.running_server() if host.which("pactl") is not None else None
        if server is None:
            lacks.append("no pulseaudio command (and no running sound server answers pactl)")
            missing.append("pulseaudio")
        else:
            _say(f"pulseaudio is not installed; putting the devices on the running sound server {server}")
    if not on_server and host.which("pactl") is None:
        lacks.append("no pactl command")
        missing.append("pulseaudio-utils")
    if not host.alsa_pulse_plugin():
        lacks.append("no ALSA pulse plugin")
        missing.append("libasound2-plugins")
    if missing:
        return (
            f"the virtual devices need PulseAudio: {', '.join(lacks)}; install the Debian packages: "
            f"sudo apt-get install {' '.join(missing)}"
        ), None
    return None, server


def _down(prefix: str) -> int:
    from app.testkit.rig import take_down_rig

    rig = take_down_rig(prefix)
    if rig is None:
        _say("no virtual devices are up; nothing to take down")
        return EXIT_OK
    how = (
        f"removed them from the sound server {rig.server_address}, which keeps running"
        if rig.on_server
        else "stopped their private PulseAudio"
    )
    _say(f"took down {', '.join(_names(rig))}: {how}")
    # For `eval "$(helpdesk-voice rig down)"`: the shell forgets the exports of `rig up`.
    print("unset " + " ".join(rig.env))
    return EXIT_OK


def _status(prefix: str) -> int:
    from app.testkit.rig import attached_rig, rig_workdir

    had_state = rig_workdir(prefix).exists()
    rig = attached_rig(prefix)
    if rig is None:
        if had_state:
            _say("the virtual devices that were up are gone (their sound server stopped); cleaned up")
        return _fail(NOT_UP.replace("rig up", f"rig up{_flag(prefix)}"), EXIT_NOT_UP)
    _report(rig, "are up")
    return EXIT_OK


def _report(rig: VirtualAudioRig, state: str) -> None:
    """The exports on stdout; what the devices are and how to use them on stderr."""
    for key, value in rig.env.items():
        print(f"export {key}={shlex.quote(value)}")
    sys.stdout.flush()
    where = (
        f"on the sound server {rig.server_address}"
        if rig.on_server
        else f"on a private PulseAudio, pid {rig.pid}"
    )
    flag = _flag(rig.prefix)
    drive = ["Or let the driver find them by itself:", f"  helpdesk-voice drive SCENARIO{flag}"]
    lines = [
        f"helpdesk-voice: the virtual audio devices {state} ({where})",
        f"  {rig.mic:<24} the virtual microphone: give it to the app as its input",
        f"  {rig.speaker:<24} the virtual speaker: give it to the app as its output",
        f"  {rig.mic_feed:<24} play sound into it and the microphone hears it (the user's voice)",
        f"  {rig.speaker_monitor:<24} record from it what the speaker plays (the app's answers)",
        "  echo: " + _echo_text(rig.echo, flag),
        "In a shell, take the exports (the lines on stdout), then run the app on the devices:",
        f'  eval "$(helpdesk-voice rig up{flag})"',
        f"  helpdesk-voice --headless --input-device {rig.mic} --output-device {rig.speaker}",
        *drive,
        f'Take them down: eval "$(helpdesk-voice rig down{flag})"   (also clears the exports)',
    ]
    print("\n".join(lines), file=sys.stderr)


def _echo_text(echo: Echo | None, flag: str) -> str:
    if echo is None:
        return f"none (for laptop-speaker echo: helpdesk-voice rig up{flag} --echo-level -10)"
    return (
        f"the speaker is looped into the microphone at {echo.gain_db:g} dB, {echo.latency_ms} ms late "
        f"(change it: helpdesk-voice rig up{flag} --echo-level DB; remove it: ... --no-echo)"
    )


def _names(rig: VirtualAudioRig) -> list[str]:
    return [rig.mic, rig.mic_feed, rig.speaker, rig.speaker_monitor]


def _flag(prefix: str) -> str:
    return "" if prefix == DEFAULT_PREFIX else f" --prefix {prefix}"


def _say(message: str) -> None:
    print(f"helpdesk-voice: {message}", file=sys.stderr)


def _fail(message: str, code: int) -> int:
    _say(message)
    return code


# Windows and macOS have no PulseAudio: testers install a virtual cable and name its ends to the
# app and to `drive`. These texts are checked on Linux by injecting the platform; the paths are
# not exercised on real Windows or macOS.
_WINDOWS = """\
helpdesk-voice: rig makes its devices with PulseAudio, which Windows does not have; use a virtual cable
Install VB-Audio's VB-CABLE (https://vb-audio.com/Cable/). It adds the two ends of one cable:
  "CABLE Input"    a playback device: what is played into it comes out of the other end
  "CABLE Output"   a recording device: it hears what is played into "CABLE Input"
So the app's microphone is "CABLE Output", and the driver speaks to it through "CABLE Input":
  helpdesk-voice --headless --input-device "CABLE Output" --output-device SPEAKERS
To record what the app says too, give its output a second cable (VB-Audio's "VB-CABLE A+B" adds,
for example, "CABLE-A Input" and "CABLE-A Output") and let the driver record the other end:
  helpdesk-voice drive SCENARIO --input-device "CABLE Output" --feed "CABLE Input" \\
      --output-device "CABLE-A Input" --monitor "CABLE-A Output"
(--input-device/--output-device: the app's microphone and speaker; --feed: where the driver plays
the user's voice; --monitor: where it records the app.) Windows lists each device once per audio
API: where a name matches several, give the index that helpdesk-voice devices shows.
"""

_MACOS = """\
helpdesk-voice: rig makes its devices with PulseAudio, which macOS does not have; use BlackHole
Install BlackHole (https://existential.audio/blackhole/, or: brew install blackhole-2ch).
"BlackHole 2ch" is a playback and a recording device at once: what is played into it is recorded
from it. So it is the app's microphone, and the driver speaks to the app by playing into it:
  helpdesk-voice --headless --input-device "BlackHole 2ch" --output-device SPEAKERS
To record what the app says too, give it a second BlackHole (brew install blackhole-16ch) as its
output, or, to hear it as well, a Multi-Output Device made in Audio MIDI Setup from your speakers
and "BlackHole 16ch" (an aggregate device likewise joins several inputs into one), and let the
driver record "BlackHole 16ch":
  helpdesk-voice drive SCENARIO --input-device "BlackHole 2ch" --feed "BlackHole 2ch" \\
      --output-device "Multi-Output Device" --monitor "BlackHole 16ch"
(--input-device/--output-device: the app's microphone and speaker; --feed: where the driver plays
the user's voice; --monitor: where it records the app.)
"""


def _elsewhere(command: str, platform: str) -> int:
    system = "Windows" if platform == "win32" else "macOS"
    if command == "down":
        _say(f"rig starts no devices on {system}; nothing to take down")
        return EXIT_OK
    print(_WINDOWS if platform == "win32" else _MACOS, file=sys.stderr, end="")
    return EXIT_NOT_UP
