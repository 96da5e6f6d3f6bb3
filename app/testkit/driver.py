"""Driving the app through audio devices, as a person would: its speech played into the device the
app listens on, its speaker recorded, both on one clock, its events read from its ``--events``
file. The judging is :mod:`app.testkit.timing` and :mod:`app.testkit.judge`; this is the I/O.

The app is started headless by the driver (``--events`` into a temporary file) or is already
running with ``--events FILE`` (``attach``). The benchmarks drive the app through this too.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.audio.devices import AudioDevice, find_device
from app.audio.probe import SignalPlayer, TimedRecorder
from app.audio.resample import FloatArray, StreamResampler
from app.audio.streams import open_stream
from app.localmodel.launcher import self_command
from app.testkit.judge import judge, split_events
from app.testkit.report import RunResult, TurnResult
from app.testkit.scenario import Scenario, Turn
from app.testkit.speech import read_wav, speak, write_wav
from app.testkit.timing import LOUD, first_loud, measure_turn, window

READY_TIMEOUT_S = 300.0  # a first start loads the offline models: tens of seconds on a slow laptop
SETTLED_QUIET_S = 1.0  # an answer is over when the speaker has been quiet this long and the app listens
NOTHING_HEARD_S = 4.0  # with no answer expected, this much quiet after the user ends the turn
RECORD_TAIL_S = 0.3


class DriveError(RuntimeError):
    """The conversation could not be driven: a device is missing, the app would not start or died."""


@dataclass(frozen=True)
class DriveDevices:
    """The app's microphone and speaker, and the driver's ends of them."""

    app_input: str  # the app listens here; the driver records it too, to find the user's speech
    app_output: str  # the app plays here
    feed: str  # the driver plays the user's speech here, which the app's microphone hears
    monitor: str  # the driver records the app's speaker here


@dataclass
class Spoken:
    """A turn's audio, ready before the conversation starts so no turn waits on a synthesiser."""

    turn: Turn
    at_feed: FloatArray  # at the feed's rate, to play
    at_mic: FloatArray  # at the microphone's rate, to find in its recording


@dataclass
class _Played:
    turn: Turn
    at: float  # monotonic time its first sample was handed to the feed
    done: float  # when its last was


class EventsFile:
    """Lines appended to the app's events file, read from where it ended when this was made."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = path.stat().st_size if path.exists() else 0
        self._partial = ""
        self.events: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("r", encoding="utf-8") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
                self._offset = handle.tell()
        except FileNotFoundError:
            return self.events
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # not an event (a torn or foreign line): the rest still counts
            if isinstance(event, dict):
                self.events.append(event)
        return self.events

    def state(self) -> str | None:
        for event in reversed(self.poll()):
            if event.get("kind") == "state":
                return str(event.get("state"))
        return None

    def count(self, kind: str, since: float) -> int:
        return sum(1 for e in self.poll() if e.get("kind") == kind and float(e.get("t", 0)) >= since)


@dataclass
class AppProcess:
    """The app started by the driver: headless on the named devices, its events in a file."""

    process: subprocess.Popen[str]
    events: EventsFile
    command: list[str]
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=5000))  # its stderr, the last lines

    @classmethod
    def start(
        cls,
        devices: DriveDevices,
        events_path: Path,
        env: dict[str, str],
        command: list[str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> AppProcess:
        argv = [
            *(command or self_command()),
            *extra_args,
            "--headless",
            "--input-device",
            devices.app_input,
            "--output-device",
            devices.app_output,
            "--events",
            str(events_path),
        ]
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        )
        app = cls(process, EventsFile(events_path), argv)
        threading.Thread(target=app._read_errors, daemon=True).start()
        return app

    def _read_errors(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.errors.append(line.rstrip("\n"))

    def wait_ready(self, timeout: float, progress: Callable[[str], None]) -> None:
        deadline = time.monotonic() + timeout
        shown = 0
        while time.monotonic() < deadline:
            lines = list(self.errors)
            for line in lines[shown:]:
                if line.startswith("helpdesk-voice: "):
                    progress("app: " + line.removeprefix("helpdesk-voice: "))
            shown = len(lines)
            if self.events.state() == "listening":
                return
            if self.process.poll() is not None:
                raise DriveError(
                    f"the app exited (code {self.process.returncode}) before it listened: {self.last_error()}"
                )
            time.sleep(0.1)
        raise DriveError(f"the app did not start listening within {timeout:g} s: {self.last_error()}")

    def last_error(self) -> str:
        lines = [line for line in self.errors if line.strip()]
        return lines[-1] if lines else "it printed nothing"

    def exited(self) -> str | None:
        code = self.process.poll()
        return None if code is None else f"the app exited (code {code}) mid-conversation: {self.last_error()}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # the app closes its connection and its server on SIGTERM
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def app_settings_env(settings: dict[str, str]) -> dict[str, str]:
    """A scenario's ``[settings]`` (``turn_detection = "server_vad"``) as the app's environment."""
    return {"HELPDESK_VOICE_" + key.replace(".", "_").upper(): value for key, value in settings.items()}


def prepare(scenario: Scenario, feed_rate: float, mic_rate: float) -> list[Spoken]:
    """Every turn's audio, at both rates."""
    spoken = []
    for turn in scenario.turns:
        if turn.audio is not None:
            samples, rate = read_wav(turn.audio)
        else:
            samples, rate = speak(turn.say or "", turn.voice, turn.speed)
        at_feed = StreamResampler(rate, feed_rate, "HQ").process(samples, last=True)
        at_mic = StreamResampler(rate, mic_rate, "HQ").process(samples, last=True)
        spoken.append(Spoken(turn, at_feed, at_mic))
    return spoken


class Driver:
    """One scripted conversation with an app that is up and listening."""

    def __init__(
        self, scenario: Scenario, devices: DriveDevices, progress: Callable[[str], None] = lambda line: None
    ) -> None:
        self.scenario = scenario
        self.progress = progress
        self.events = EventsFile(Path(os.devnull))
        self.alive: Callable[[], str | None] = lambda: None
        self.feed = _device(devices.feed, "output", "the feed of the app's microphone")
        self.mic = _device(devices.app_input, "input", "the app's microphone")
        self.monitor = _device(devices.monitor, "input", "the monitor of the app's speaker")
        self.voice = _Voice(self.feed.default_samplerate)
        self.mic_rec = TimedRecorder(self.mic.default_samplerate)
        self.speaker_rec = TimedRecorder(self.monitor.default_samplerate)

    def prepare(self) -> list[Spoken]:
        """Every turn's audio at the feed's and the microphone's rates (before the app starts, so
        a missing voice is found at once)."""
        return prepare(self.scenario, self.feed.default_samplerate, self.mic.default_samplerate)

    def run(
        self,
        spoken: list[Spoken],
        events: EventsFile,
        alive: Callable[[], str | None] = lambda: None,
        keep_audio: Path | None = None,
    ) -> RunResult:
        """The conversation; ``alive``: None while the app runs, else why it does not."""
        self.events, self.alive = events, alive
        played: list[_Played] = []
        problem = None
        with ExitStack() as stack:
            stack.enter_context(open_stream("input", self.mic, self.mic_rec.callback))
            stack.enter_context(open_stream("input", self.monitor, self.speaker_rec.callback))
            # One feed stream for the whole conversation, silent between turns: a stream opened per
            # turn would start each turn on an empty buffer (an underrun, and a later first sample).
            stack.enter_context(open_stream("output", self.feed, self.voice.callback))
            time.sleep(0.3)
            began = time.monotonic()
            try:
                for item in spoken:
                    self._wait_for_turn(item.turn, played, began)
                    self.progress(f"{item.turn.label}")
                    played.append(self._play(item))
                if played:
                    self._wait_settled(played[-1])
                time.sleep(RECORD_TAIL_S)
            except DriveError as exc:
                problem = str(exc)
        return self._judge(spoken, played, problem, keep_audio)

    # -- timing the turns ---------------------------------------------------------------------
    def _wait_for_turn(self, turn: Turn, played: list[_Played], began: float) -> None:
        if turn.when == "at":
            if played:
                self._sleep_until(played[-1].done)
            self._sleep_until(began + turn.after_ms / 1000.0)
        elif turn.when == "barge_in":
            previous = played[-1]
            sounded = self._wait_for_answer(previous)
            if sounded is None:
                return  # nothing to talk over; the turn's halt_ms says so
            self._sleep_until(sounded + turn.after_ms / 1000.0)
        elif played:
            self._wait_settled(played[-1])
            self._sleep_until(time.monotonic() + turn.after_ms / 1000.0)

    def _wait_for_answer(self, previous: _Played) -> float | None:
        """When the answer to ``previous`` first sounded (None after its timeout)."""
        deadline = previous.done + previous.turn.timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            times, audio = self.speaker_rec.timeline(since=previous.done)
            onset = first_loud(times, audio, previous.done, float("inf"))
            if onset is not None:
                return onset
            time.sleep(0.02)
        return None

    def _wait_settled(self, previous: _Played) -> None:
        """Until the app has answered ``previous`` and is listening again, with the speaker quiet."""
        deadline = previous.done + previous.turn.timeout_s
        answered_wanted = previous.turn.expect.answered
        while time.monotonic() < deadline:
            self._check_alive()
            now = time.monotonic()
            times, audio = self.speaker_rec.timeline(since=now - 30.0)
            loud = times[np.abs(audio) > LOUD]
            last_sound = float(loud[-1]) if len(loud) else previous.at
            quiet_for = now - max(last_sound, previous.done)
            answered = self.events.count("turn", previous.at) > 0
            listening = self.events.state() in (None, "listening")
            # With no answer wanted, a longer quiet shows none is coming.
            if (
                listening
                and quiet_for >= SETTLED_QUIET_S
                and (answered or (not answered_wanted and quiet_for >= NOTHING_HEARD_S))
            ):
                return
            time.sleep(0.05)

    def _sleep_until(self, at: float) -> None:
        while (left := at - time.monotonic()) > 0:
            self._check_alive()
            time.sleep(min(left, 0.05))

    def _check_alive(self) -> None:
        problem = self.alive()
        if problem is not None:
            raise DriveError(problem)

    def _play(self, item: Spoken) -> _Played:
        length = len(item.at_feed) / self.feed.default_samplerate
        started = self.voice.say(item.at_feed)
        if not started.finished.wait(length + 5.0):
            raise DriveError(f"{self.feed.name} stopped taking audio while {item.turn.label} was spoken")
        first = started.handed_at(0)
        start = first if first is not None else time.monotonic() - length
        return _Played(item.turn, start, start + length)

    # -- judging ------------------------------------------------------------------------------
    def _judge(
        self, spoken: list[Spoken], played: list[_Played], problem: str | None, keep_audio: Path | None
    ) -> RunResult:
        mic = self.mic_rec.timeline()
        speaker = self.speaker_rec.timeline()
        end = float(max(mic[0][-1] if len(mic[0]) else 0.0, speaker[0][-1] if len(speaker[0]) else 0.0))
        starts = [p.at for p in played]
        # Speech starts a few ms after its samples are handed over: events from just before count.
        talks_over = [p.turn.when == "barge_in" for p in played]
        seen = split_events(self.events.poll(), [s - 0.05 for s in starts], talks_over)
        results = []
        for index, (item, play) in enumerate(zip(spoken, played, strict=False)):
            window_end = starts[index + 1] if index + 1 < len(played) else end
            if index + 1 == len(played) and problem is not None:
                break  # the last turn was cut short by the problem: not judged on half a turn
            timing = measure_turn(mic, self.mic.default_samplerate, speaker, item.at_mic, play.at, window_end)
            next_talks_over = index + 1 < len(played) and talks_over[index + 1]
            verdicts = judge(item.turn, timing, seen[index], next_talks_over)
            result = TurnResult(item.turn, timing, seen[index], verdicts, play.at, window_end - play.at)
            if keep_audio is not None and not result.passed:
                result.audio_file = str(self._keep(keep_audio, item.turn, mic, speaker, play.at, window_end))
            results.append(result)
        return RunResult(self.scenario, results, problem=problem)

    def _keep(self, folder: Path, turn: Turn, mic: Any, speaker: Any, start: float, end: float) -> Path:
        """The turn's microphone (left) and speaker (right) as one WAV file, on the microphone's clock."""
        rate = int(self.mic.default_samplerate)
        grid = np.arange(start - 0.5, end, 1.0 / rate)
        channels = []
        for times, samples in (mic, speaker):
            t, s = window(times, samples, start - 0.6, end + 0.1)
            channels.append(
                np.interp(grid, t, s).astype(np.float32) if len(t) else np.zeros(len(grid), np.float32)
            )
        path = folder / f"{self.scenario.path.stem}-turn{turn.number}.wav"
        write_wav(path, channels, rate)
        return path


class _Voice:
    """The feed's callback: the turn being said, else silence. ``say`` hands it a new signal."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._player: SignalPlayer | None = None

    def say(self, signal: FloatArray) -> SignalPlayer:
        player = SignalPlayer(signal, self.rate)
        self._player = player  # one reference swap: the callback sees the old or the new player
        return player

    def callback(self, outdata: FloatArray, frames: int, time_info: Any, status: Any) -> None:
        player = self._player
        if player is None or player.finished.is_set():
            outdata.fill(0)
            return
        player.callback(outdata, frames, time_info, status)


def _device(name: str, direction: str, what: str) -> AudioDevice:
    try:
        return find_device(name, direction)  # type: ignore[arg-type]
    except Exception as exc:
        raise DriveError(f"{what} ({name}) is not there: {exc}") from None


@contextmanager
def started_app(
    devices: DriveDevices,
    env: dict[str, str],
    progress: Callable[[str], None],
    command: list[str] | None = None,
    extra_args: tuple[str, ...] = (),
) -> Iterator[AppProcess]:
    """The app started headless on ``devices``, listening, and stopped afterwards; ``extra_args``
    for its command line (``--verbose``)."""
    with tempfile.TemporaryDirectory(prefix="hv-drive-") as folder:
        app = AppProcess.start(devices, Path(folder) / "events.jsonl", env, command, extra_args)
        try:
            progress("starting the app (a first start loads the offline assistant's models)")
            app.wait_ready(READY_TIMEOUT_S, progress)
            yield app
        finally:
            app.stop()
