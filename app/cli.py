"""Command-line entry points: ``helpdesk-voice [--headless] ...``, ``devices``, ``selftest``, ``serve``,
``config``, and the testers' ``rig`` and ``drive``.

Exit codes: 0 fine, 1 runtime failure, 2 usage error (bad flag, unknown device), each failure
with one clear line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from app import __version__
from app.audio.devices import AudioDevice, DeviceError, Direction, find_device

if TYPE_CHECKING:
    from app.config import LoadedSettings
    from app.launch import LaunchPlan

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """The command line asked for something that does not exist (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse prints the whole usage; the contract is one clear line.
        self.exit(EXIT_USAGE, f"helpdesk-voice: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, not {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {text}")
    return value


def _token_in_argv(text: str) -> str:
    raise argparse.ArgumentTypeError(
        "a token on the command line is visible to every user of this computer (ps); "
        "set HELPDESK_VOICE_SERVER_TOKEN or use --token-stdin"
    )


def _add_device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-device", metavar="NAME", help="microphone: index, exact name or unique part")
    parser.add_argument("--output-device", metavar="NAME", help="speaker: index, exact name or unique part")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="helpdesk-voice", description="Hands-free IT helpdesk voice assistant.")
    parser.add_argument("--version", action="version", version=f"helpdesk-voice {__version__}")
    parser.add_argument("--headless", action="store_true", help="run without a GUI, transcript on stdout")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens to stderr")
    _add_device_options(parser)
    parser.add_argument("--url", metavar="URL", help="realtime endpoint (ws:// or wss://)")
    parser.add_argument("--metrics", type=Path, metavar="PATH", help="append one JSON object per turn")
    parser.add_argument(
        "--events",
        type=Path,
        metavar="PATH",
        help="append one JSON object per event (transcripts, tools, turns, notices), for test drivers",
    )
    parser.add_argument("--turns", type=_positive_int, metavar="N", help="exit after N assistant turns")
    parser.add_argument("--duration", type=_positive_float, metavar="S", help="exit after S seconds")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    sub.add_parser("devices", help="list audio input and output devices")
    selftest = sub.add_parser("selftest", help="check the audio devices; exit code 0 when all is well")
    _add_device_options(selftest)
    serve = sub.add_parser("serve", help="run the embedded offline realtime server alone")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: loopback only; others need TLS)"
    )
    serve.add_argument("--port", type=_port, default=0, help="port (default: a free one)")
    serve.add_argument(
        "--token-stdin",
        action="store_true",
        help="read the token clients must present from stdin's first line (default: "
        "HELPDESK_VOICE_SERVER_TOKEN, else a random one, printed)",
    )
    serve.add_argument("--token", type=_token_in_argv, help="refused: use --token-stdin or the environment")
    serve.add_argument("--tls-cert", metavar="PEM", help="certificate chain: serve wss:// (with --tls-key)")
    serve.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    serve.add_argument("--watch-stdin", action="store_true", help=argparse.SUPPRESS)
    rig = sub.add_parser("rig", help="testers: private virtual audio devices (Linux)")
    rig_sub = rig.add_subparsers(
        dest="rig_command", parser_class=_Parser, required=True, metavar="{up,down,status}"
    )
    rig_up = rig_sub.add_parser("up", help="start the virtual microphone and speaker; print how to use them")
    rig_up.add_argument("--prefix", default="hv", help="device name prefix (default: hv)")
    rig_up.add_argument(
        "--echo-level",
        type=float,
        metavar="DB",
        help="also loop the speaker into the microphone at this gain",
    )
    rig_up.add_argument("--echo-delay", type=int, metavar="MS", help="the echo's delay (default: 20)")
    rig_up.add_argument("--no-echo", action="store_true", help="remove the echo from devices that are up")
    rig_up.add_argument(
        "--on-server",
        action="store_true",
        help="put the devices on the running sound server (PipeWire or PulseAudio, as pactl finds it) "
        "instead of a private PulseAudio; the default where pulseaudio is not installed",
    )
    rig_down = rig_sub.add_parser("down", help="stop the virtual devices")
    rig_down.add_argument("--prefix", default="hv", help="device name prefix (default: hv)")
    rig_status = rig_sub.add_parser("status", help="whether the virtual devices are up, and how to use them")
    rig_status.add_argument("--prefix", default="hv", help="device name prefix (default: hv)")
    drive = sub.add_parser(
        "drive",
        help="testers: run a scripted spoken conversation and judge it",
        epilog="exit codes: 0 every expectation held, 1 one did not, 2 a wrong scenario or option, "
        "3 it could not run (devices, voice, the app). The scenario format: docs/testing.md",
    )
    drive.add_argument("scenario", type=Path, help="the scenario file (TOML)")
    drive.add_argument("--junit", type=Path, metavar="PATH", help="write a JUnit XML report here")
    drive.add_argument("--report", type=Path, metavar="PATH", help="write the JSON report here")
    drive.add_argument(
        "--keep-audio", type=Path, metavar="DIR", help="keep the recorded audio of failed turns (WAV) here"
    )
    drive.add_argument(
        "--attach",
        type=Path,
        metavar="EVENTS",
        help="drive an app that is already running with --events EVENTS instead of starting one",
    )
    drive.add_argument("--prefix", default="hv", help="the rig to use, by its device prefix (default: hv)")
    drive.add_argument("--feed", metavar="NAME", help="the output that feeds the app's microphone")
    drive.add_argument("--monitor", metavar="NAME", help="the input that records the app's speaker")
    _add_device_options(drive)
    config = sub.add_parser("config", help="where the settings live and what they are")
    config_sub = config.add_subparsers(
        dest="config_command",
        parser_class=_Parser,
        required=True,
        metavar="{path,show,set-token-credential,forget-token-credential}",
    )
    config_sub.add_parser("path", help="print the site policy and user settings file paths")
    config_sub.add_parser("show", help="print every setting with its value and where it comes from")
    # From standard input, never the command line, which other users can read in the process list.
    config_sub.add_parser(
        "set-token-credential",
        help="store this device's token-service credential (read from standard input) in the keyring",
    )
    config_sub.add_parser("forget-token-credential", help="remove the stored token-service credential")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        stream=sys.stderr,
        format="%(name)s: %(message)s",
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        if args.command == "devices":
            return _devices()
        if args.command == "selftest":
            return _selftest(args.input_device, args.output_device)
        if args.command == "serve":
            from app.config import load_settings
            from app.localmodel.serve import serve_main

            return serve_main(
                args.host,
                args.port,
                token_stdin=args.token_stdin,
                watch_stdin=args.watch_stdin,
                tls_cert=args.tls_cert,
                tls_key=args.tls_key,
                kb_folders=load_settings().typed.kb.folders,  # HELPDESK_VOICE_SERVER_KB_FOLDERS wins when set
            )
        if args.command == "rig":
            from app.testkit.rig_cli import rig_main

            return rig_main(args)
        if args.command == "drive":
            from app.testkit.drive_cli import drive_main

            return drive_main(args)
        if args.command == "config" and args.config_command.endswith("token-credential"):
            from app.realtime.client_secret import store_token_credential

            typed = sys.stdin.readline() if args.config_command == "set-token-credential" else None
            if typed is not None and not typed.strip():
                raise UsageError("set-token-credential reads the credential from standard input; none came")
            print(f"helpdesk-voice: {store_token_credential(typed)}", file=sys.stderr)
            return EXIT_OK
        if args.command == "config":
            from app.config import config_main

            return config_main(args)
        return _converse(args)
    except UsageError as exc:
        print(f"helpdesk-voice: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # the last line of defence: one line, never a traceback
        print(f"helpdesk-voice: {_describe(exc)}", file=sys.stderr)
        return EXIT_FAILURE


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _resolve(query: str | None, direction: Direction) -> AudioDevice:
    try:
        return find_device(query, direction)
    except DeviceError as exc:
        if query is None:
            raise RuntimeError(str(exc)) from exc
        raise UsageError(str(exc)) from exc


def _devices() -> int:
    from app.audio.devices import format_device_table, list_devices

    devices = list_devices()
    if not devices:
        print("helpdesk-voice: no audio devices found", file=sys.stderr)
        return EXIT_FAILURE
    print(format_device_table(devices))
    return EXIT_OK


def _selftest(input_query: str | None, output_query: str | None) -> int:
    from app.audio.roundtrip import run_audio_check
    from app.config import load_settings
    from app.selftest import check_endpoint, check_keyring, check_settings

    settings = load_settings({"audio.input_device": input_query, "audio.output_device": output_query})
    checks = [check_settings(settings), check_keyring(settings)]
    for check in checks:
        print(check.line(), flush=True)
    endpoint = check_endpoint(settings, lambda line: print(line, flush=True))
    print(endpoint.line(), flush=True)
    input_device = _resolve(_text_setting(settings, "audio.input_device"), "input")
    output_device = _resolve(_text_setting(settings, "audio.output_device"), "output")
    print("audio check: playing a short test sound and listening for it...", flush=True)
    result = run_audio_check(input_device, output_device)
    print(result.report(), flush=True)
    passed = all(check.ok for check in [*checks, endpoint]) and result.ok
    return EXIT_OK if passed else EXIT_FAILURE


def _text_setting(settings: LoadedSettings, key: str) -> str | None:
    value = settings.value(key)
    return value if isinstance(value, str) and value else None


def _cli_settings(args: argparse.Namespace) -> dict[str, object]:
    return {
        "endpoint.url": args.url,
        "audio.input_device": args.input_device,
        "audio.output_device": args.output_device,
    }


def _settings_for(args: argparse.Namespace) -> LoadedSettings:
    """The effective settings with this command line on top; problems are reported, never fatal."""
    from app.config import load_settings

    settings = load_settings(_cli_settings(args))
    for problem in settings.problems:
        if problem.startswith("command line:"):
            raise UsageError(problem.removeprefix("command line:").removesuffix("; ignored").strip())
        print(f"helpdesk-voice: settings: {problem}", file=sys.stderr)
    return settings


def _has_display() -> bool:
    if sys.platform != "linux":
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or (
        os.environ.get("QT_QPA_PLATFORM", "") in ("offscreen", "minimal")
    )


def _converse(args: argparse.Namespace) -> int:
    """A spoken conversation with the configured endpoint, else the embedded offline server."""
    from app.launch import LaunchError, plan_from_settings

    settings = _settings_for(args)
    if not args.headless:
        if _has_display():
            from app.config import load_settings
            from app.ui.app import run_gui

            overrides = _cli_settings(args)
            # Read afresh at every start: the user may fix a problem in Settings and start again,
            # so a plan that cannot work is shown in the window, not turned into an exit code.
            return run_gui(lambda: plan_from_settings(load_settings(overrides)))
        print("helpdesk-voice: no graphical display (DISPLAY is not set); running headless", file=sys.stderr)
    try:
        plan = plan_from_settings(settings)
    except LaunchError as exc:
        if exc.usage or args.url:
            raise UsageError(str(exc)) from exc
        raise RuntimeError(str(exc)) from exc
    for warning in plan.warnings:
        print(f"helpdesk-voice: warning: {warning}", file=sys.stderr)
    return _run_headless(args, plan)


def _print_progress(line: str) -> None:
    print(f"helpdesk-voice: {line}", file=sys.stderr, flush=True)


def _run_headless(args: argparse.Namespace, plan: LaunchPlan) -> int:
    from app.console import ConsoleListener
    from app.launch import ConversationRunner, LaunchError

    runner: ConversationRunner
    listener = ConsoleListener(lambda: runner.description, args.metrics, args.turns, events_path=args.events)
    runner = ConversationRunner(plan, listener, _print_progress)
    try:
        runner.start()
    except LaunchError as exc:
        if exc.usage:
            raise UsageError(str(exc)) from exc
        raise RuntimeError(str(exc)) from exc
    engine = runner.engine
    assert engine is not None
    deadline = None if args.duration is None else time.monotonic() + args.duration
    asked_to_stop = threading.Event()
    # SIGTERM (a service manager, a test harness, `kill`) ends the run like Ctrl-C does: the
    # WebSocket closes properly and the offline server stops, instead of the process vanishing.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: asked_to_stop.set())
    try:
        while not listener.enough.is_set() and engine.running and not asked_to_stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            listener.enough.wait(0.25)  # the engine and SIGTERM are noticed within this
    finally:
        runner.stop()
        signal.signal(signal.SIGTERM, previous)
    problem = engine.final_problem
    if (
        problem is not None
        and not listener.enough.is_set()
        and not asked_to_stop.is_set()
        and (deadline is None or time.monotonic() < deadline)
    ):
        return EXIT_FAILURE
    return EXIT_OK
