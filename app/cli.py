"""Command-line entry points: ``helpdesk-voice [--headless] ...``, ``devices``, ``selftest``.

Exit codes: 0 fine, 1 runtime failure, 2 usage error (bad flag, unknown device), each failure
with one clear line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from app import __version__
from app.audio.devices import AudioDevice, DeviceError, Direction, find_device
from app.realtime.endpoint import Endpoint

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
    parser.add_argument("--turns", type=_positive_int, metavar="N", help="exit after N assistant turns")
    parser.add_argument("--duration", type=_positive_float, metavar="S", help="exit after S seconds")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    sub.add_parser("devices", help="list audio input and output devices")
    selftest = sub.add_parser("selftest", help="check the audio devices; exit code 0 when all is well")
    _add_device_options(selftest)
    serve = sub.add_parser("serve", help="run the embedded offline realtime server alone")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    serve.add_argument("--port", type=_port, default=0, help="port (default: a free one)")
    serve.add_argument("--token", help="the token clients must present (default: a random one, printed)")
    serve.add_argument("--watch-stdin", action="store_true", help=argparse.SUPPRESS)
    config = sub.add_parser("config", help="where the settings live and what they are")
    config_sub = config.add_subparsers(
        dest="config_command", parser_class=_Parser, required=True, metavar="{path,show}"
    )
    config_sub.add_parser("path", help="print the site policy and user settings file paths")
    config_sub.add_parser("show", help="print every setting with its value and where it comes from")
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
            from app.localmodel.serve import serve_main

            return serve_main(args.host, args.port, args.token, args.watch_stdin)
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

    input_device = _resolve(input_query, "input")
    output_device = _resolve(output_query, "output")
    print("audio check: playing a short test sound and listening for it...", flush=True)
    result = run_audio_check(input_device, output_device)
    print(result.report(), flush=True)
    return EXIT_OK if result.heard else EXIT_FAILURE


def _converse(args: argparse.Namespace) -> int:
    """A spoken conversation: with ``--url``, or else with the embedded offline server."""
    from app.localmodel.launcher import EmbeddedServerProcess, ServerStartError
    from app.realtime import endpoint_from_url, lookup_api_key

    if not args.headless:
        print("helpdesk-voice: the tray app is not available yet; running headless", file=sys.stderr)
    endpoint: Endpoint | None = None
    if args.url:
        key = lookup_api_key()
        try:
            endpoint = endpoint_from_url(args.url, key.key)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        if endpoint.kind in ("openai", "azure") and key.key is None:
            raise UsageError(
                "no API key: set HELPDESK_VOICE_API_KEY or store one in the OS keyring"
                + (f" ({key.reason})" if key.reason else "")
            )
    input_device = _resolve(args.input_device, "input")
    output_device = _resolve(args.output_device, "output")
    server: EmbeddedServerProcess | None = None
    if endpoint is None:
        print("helpdesk-voice: starting the offline assistant (no endpoint configured)", file=sys.stderr)
        server = EmbeddedServerProcess(
            progress=lambda line: print(f"helpdesk-voice: {line}", file=sys.stderr)
        )
        try:
            endpoint = server.start()
        except ServerStartError as exc:
            raise RuntimeError(str(exc)) from exc
    try:
        return _run_engine(args, endpoint, input_device, output_device)
    finally:
        if server is not None:
            server.stop()


def _run_engine(
    args: argparse.Namespace, endpoint: Endpoint, input_device: AudioDevice, output_device: AudioDevice
) -> int:
    from app.console import ConsoleListener
    from app.defaults import session_config
    from app.engine import Engine, EngineConfig
    from app.tools import default_registry

    tools = default_registry()
    listener = ConsoleListener(
        f"listening on {input_device.name} -> {output_device.name}", args.metrics, args.turns
    )
    engine = Engine(
        EngineConfig(
            endpoint=endpoint,
            session=session_config(tuple(tools.specs()), backend=endpoint.kind),
            input_device=input_device,
            output_device=output_device,
            tools=tools,
            backend=endpoint.kind,
        ),
        listener,
    )
    engine.start()
    deadline = None if args.duration is None else time.monotonic() + args.duration
    try:
        while not listener.enough.is_set() and engine.running:
            if deadline is not None and time.monotonic() >= deadline:
                break
            listener.enough.wait(0.05)
    finally:
        engine.stop()
    problem = engine.final_problem
    if (
        problem is not None
        and not listener.enough.is_set()
        and (deadline is None or time.monotonic() < deadline)
    ):
        return EXIT_FAILURE
    return EXIT_OK
