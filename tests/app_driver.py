"""Driving the app as a person would: a child process, speech into the virtual microphone."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from app.audio.devices import find_device
from app.audio.probe import SignalPlayer, TimedRecorder
from app.audio.resample import FloatArray
from app.audio.streams import open_stream
from app.testkit.rig import VirtualAudioRig


class HeadlessApp:
    """The app as a child process, with its stdout and stderr lines collected as they come.

    ``headless=False`` runs ``helpdesk-voice`` as a user does, with ``args`` alone.
    """

    def __init__(
        self,
        args: list[str],
        env: dict[str, str | None] | None = None,
        *,
        headless: bool = True,
        command: list[str] | None = None,
    ) -> None:
        """``command``: how to run the app (an installed executable); the checkout's by default."""
        environ = dict(os.environ)
        for name, value in (env or {}).items():  # None: not set for the app
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value
        self.process = subprocess.Popen(
            [*(command or [sys.executable, "-m", "app"]), *(["--headless"] if headless else []), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        threading.Thread(target=self._read, args=(self.process.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.process.stderr, self.errors), daemon=True).start()

    @staticmethod
    def _read(stream: object, sink: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            sink.append(line.rstrip("\n"))

    def wait_for(self, predicate: Callable[[str], bool], timeout: float, *, stderr: bool = False) -> str:
        lines = self.errors if stderr else self.lines
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(lines):
                if predicate(line):
                    return line
            if self.process.poll() is not None and not any(predicate(x) for x in lines):
                break
            time.sleep(0.05)
        raise AssertionError(f"no matching line; stdout={self.lines} stderr={self.errors[-30:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(5)


def start_on_rig(rig: VirtualAudioRig, env: dict[str, str | None], *args: str) -> HeadlessApp:
    """The headless app on the rig's virtual microphone and speaker, for at most 150 s."""
    devices = ["--input-device", rig.mic, "--output-device", rig.speaker, "--duration", "150"]
    return HeadlessApp([*devices, *args], env=env)


def speak(rig: VirtualAudioRig, signal: FloatArray) -> None:
    feed = find_device(rig.mic_feed, "output")
    player = SignalPlayer(signal, feed.default_samplerate)
    with open_stream("output", feed, player.callback):
        player.finished.wait(len(signal) / feed.default_samplerate + 3)
        time.sleep(0.1)


def loud_since(recorder: TimedRecorder, since: float, threshold: float = 0.02) -> npt.NDArray[np.float64]:
    """Capture times of the samples louder than ``threshold`` since ``since``."""
    times, samples = recorder.timeline()
    return times[(times >= since) & (np.abs(samples) > threshold)]


def children(pid: int) -> list[int]:
    """Every child of ``pid``: /proc lists them per thread, and a restart comes from a watcher thread."""
    tasks = Path(f"/proc/{pid}/task")
    if not (tasks / str(pid) / "children").exists():
        pytest.skip("needs /proc to find child processes")
    children: list[int] = []
    for task in tasks.iterdir():
        try:
            children += [int(p) for p in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
    return children


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")
