"""The benchmarks' way to talk to the whole app: the same driver as ``helpdesk-voice drive``, on a
private rig. The app runs headless with its embedded server, as a user meets it; requests are
spoken into the virtual microphone and timed from outside (:mod:`app.testkit.timing`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.testkit.report import RunResult
from app.testkit.scenario import Scenario, Turn


@dataclass
class DrivenRun:
    run: RunResult
    app_log: list[str]  # the app's stderr (verbose), for the server's own breakdown
    start_to_listening_s: float
    load_before: tuple[float, float, float]


def drive(
    name: str, turns: list[Turn], env: dict[str, str] | None = None, *, verbose: bool = True
) -> DrivenRun:
    """Speak ``turns`` to the whole app on a fresh rig; ``env``: the app's settings (HELPDESK_VOICE_...)."""
    from app.testkit.rig import VirtualAudioRig

    rig = VirtualAudioRig()
    rig.start()  # before PortAudio initialises in this process
    try:
        from app.testkit.driver import DriveDevices, Driver, started_app

        devices = DriveDevices(rig.mic, rig.speaker, rig.mic_feed, rig.speaker_monitor)
        scenario = Scenario(name, Path(f"{name}.toml"), tuple(turns))
        driver = Driver(scenario, devices, lambda line: print(line, file=sys.stderr, flush=True))
        spoken = driver.prepare()
        load_before = os.getloadavg()
        data_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"hv-bench-{os.getpid()}"
        app_env = {**rig.env, **(env or {}), "HELPDESK_VOICE_DATA_DIR": str(data_dir)}
        started = time.monotonic()
        with started_app(
            devices, app_env, lambda line: None, extra_args=("--verbose",) if verbose else ()
        ) as app:
            ready_s = time.monotonic() - started
            time.sleep(1.0)
            run = driver.run(spoken, app.events, app.exited)
            log = list(app.errors)
    finally:
        rig.stop()
    return DrivenRun(run, log, round(ready_s, 1), load_before)


class Lines:
    """A child's output lines, collected in the background."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, prefix: str, timeout: float, after: int = 0) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index, line in enumerate(self.lines[after:], after):
                if line.startswith(prefix):
                    return index, line
            time.sleep(0.05)
        raise TimeoutError(f"no line starting with {prefix!r}; last lines: {self.lines[-8:]}")


def headless_app(
    rig: Any, data_dir: Path, metrics: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """The app as a user runs it on the rig's devices (no endpoint: its embedded server), verbose,
    with its output in pipes, for a benchmark that watches it over a long run (``bench.echo_loop``)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app",
            "--headless",
            "--verbose",
            "--input-device",
            rig.mic,
            "--output-device",
            rig.speaker,
            "--metrics",
            str(metrics),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {}), "HELPDESK_VOICE_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"},
    )
