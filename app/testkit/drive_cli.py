"""``helpdesk-voice drive SCENARIO``: a scripted spoken conversation, judged from outside.

Exit codes: 0 every expectation held; 1 one did not (the report says which); 2 the scenario file or
the command line is wrong; 3 the conversation could not be run (no devices, the app would not start
or died, a voice is missing).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.testkit.driver import DriveDevices

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANNOT_RUN = 3


def drive_main(args: argparse.Namespace) -> int:
    from app.testkit.scenario import ScenarioError, load_scenario

    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        return _say(str(exc), EXIT_USAGE)
    for path in (args.junit, args.report):
        if path is not None and path.is_dir():
            return _say(f"{path} is a folder; give a file name for the report", EXIT_USAGE)
    try:
        devices, env = _devices(args)
    except LookupError as exc:
        return _say(str(exc), EXIT_CANNOT_RUN)
    # PortAudio reads the sound server's address when it starts: the rig's must be in place first.
    os.environ.update(env)
    from app.testkit.rig import reinitialise_portaudio

    reinitialise_portaudio()
    from app.testkit.driver import DriveError, Driver, EventsFile, app_settings_env, started_app
    from app.testkit.report import summary_lines, to_json, to_junit
    from app.testkit.speech import SpeechUnavailable

    def progress(line: str) -> None:
        print(f"helpdesk-voice: {line}", file=sys.stderr, flush=True)

    try:
        driver = Driver(scenario, devices, progress)
        progress(f"{scenario.name}: preparing {len(scenario.turns)} turns")
        spoken = driver.prepare()
        if args.attach is not None:
            if not args.attach.exists():
                return _say(
                    f"{args.attach} does not exist: start the app with --events {args.attach}",
                    EXIT_CANNOT_RUN,
                )
            if scenario.settings:
                progress("the scenario's [settings] apply only to an app the driver starts: ignored here")
            run = driver.run(spoken, EventsFile(args.attach), keep_audio=args.keep_audio)
            run.app = {"started_by_driver": False, "events": str(args.attach)}
        else:
            with started_app(devices, {**env, **app_settings_env(scenario.settings)}, progress) as app:
                run = driver.run(spoken, app.events, app.exited, args.keep_audio)
                run.app = {"started_by_driver": True, "command": app.command}
    except (DriveError, SpeechUnavailable) as exc:
        return _say(str(exc), EXIT_CANNOT_RUN)
    except KeyboardInterrupt:  # the app the driver started is stopped on the way out
        return _say("stopped before the conversation ended; nothing was judged", EXIT_CANNOT_RUN)
    run.app["devices"] = {
        "app_input": devices.app_input,
        "app_output": devices.app_output,
        "feed": devices.feed,
        "monitor": devices.monitor,
    }
    try:
        if args.report is not None:
            _write(args.report, to_json(run))
        if args.junit is not None:
            _write(args.junit, to_junit(run))
    except OSError as exc:
        return _say(f"cannot write the report: {exc}", EXIT_CANNOT_RUN)
    for line in summary_lines(run):
        print(line, flush=True)
    if run.problem is not None:
        return EXIT_CANNOT_RUN
    return EXIT_PASSED if run.passed else EXIT_FAILED


def _devices(args: argparse.Namespace) -> tuple[DriveDevices, dict[str, str]]:
    """The four devices: named on the command line, else the rig's (``helpdesk-voice rig up``)."""
    from app.testkit.driver import DriveDevices

    named = (args.input_device, args.output_device, args.feed, args.monitor)
    if all(named):
        return DriveDevices(*named), {}
    from app.testkit.rig import attached_rig

    try:
        rig = attached_rig(args.prefix)
    except (ValueError, RuntimeError) as exc:  # a prefix that names nothing, a folder not ours
        raise LookupError(str(exc)) from None
    if rig is None:
        if any(named):
            raise LookupError(
                "name all four devices (--input-device, --output-device, --feed, --monitor), "
                "or start virtual ones with: helpdesk-voice rig up"
            )
        raise LookupError(
            f"no virtual devices with prefix {args.prefix} are up: start them with 'helpdesk-voice rig up', "
            "or name the devices (--input-device, --output-device, --feed, --monitor)"
        )
    devices = DriveDevices(
        args.input_device or rig.mic,
        args.output_device or rig.speaker,
        args.feed or rig.mic_feed,
        args.monitor or rig.speaker_monitor,
    )
    return devices, dict(rig.env)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _say(message: str, code: int) -> int:
    print(f"helpdesk-voice: {message}", file=sys.stderr, flush=True)
    return code
