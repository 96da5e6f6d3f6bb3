"""Echo through the whole loop: the real app, its embedded server, and laptop-speaker echo.

The app runs as a user runs it (``helpdesk-voice --headless``, no endpoint, so the embedded
offline server answers in its own voice) on the virtual devices, and a PulseAudio loopback feeds
what the speaker plays back into the microphone, at a given level and delay. Spoken requests
(espeak-ng) go into the microphone; the microphone and the speaker's monitor are recorded on one
monotonic clock. For each echo setting:

- **uninterrupted answers**: a request, then nobody speaks until the answer ends. A
  self-interruption is an answer the app halted although nobody spoke over it (the app's per-turn
  metrics: ``barge_in`` or ``false_interruptions``). Turns the app started without a request
  (the server answering its own echo) are counted too.
- **real interruptions**: the user speaks over an answer 1.5 s after its first sound. Measured
  from outside: the user's first sample in the microphone (matched filter, so the echo does not
  count) to the assistant's last loud sample on the speaker before it falls silent.
- **coughs**: 150 ms of noise over an answer. It should halt the speaker and the answer should
  resume within 1.5 s: measured on the speaker as the gap's start and the first sound after it.

    python -m bench.echo_loop [--answers 10] [--interruptions 5] [--coughs 3]
        [--levels 0,-10,-20,-36] [--latencies 20,80] [--out bench/results/echo_loop.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.driven import Lines, headless_app
from bench.stats import machine, summary

REQUESTS = [
    "I forgot my password",
    "my VPN keeps dropping every few minutes",
    "the printer on the third floor won't print",
    "my account is locked out",
    "Outlook is not getting any new email",
    "my laptop is really slow today",
    "I can't connect to the Wi-Fi",
    "my headset has no sound in Teams meetings",
    "I deleted a file by mistake and need it back",
    "the disk on my laptop is full",
]
INTERRUPTION = "wait, actually my printer is not working either"
LOUD = 0.01  # a speaker sample louder than this is the assistant talking
ANSWER_QUIET_S = 1.5  # the speaker silent this long: the answer is over
GAP_S = 0.25  # a silence this long on the speaker after a user onset: the assistant was halted
TARGET_P95_MS = {0: 250.0, -10: 150.0}  # at -10 dB and below: 150 ms
RESUME_WITHIN_S = 1.5


class LoopRun:
    """One app on the rig with one echo setting, and recorders of its microphone and speaker."""

    def __init__(self, rig: Any, data_dir: Path) -> None:
        from app.audio.devices import find_device
        from app.audio.probe import TimedRecorder

        self.rig = rig
        self.data_dir = data_dir
        self.feed = find_device(rig.mic_feed, "output")
        mic = find_device(rig.mic, "input")
        monitor = find_device(rig.speaker_monitor, "input")
        self.mic = TimedRecorder(mic.default_samplerate)
        self.speaker = TimedRecorder(monitor.default_samplerate)
        self._devices = (mic, monitor)
        self._streams: list[Any] = []
        self.app: subprocess.Popen[str] | None = None
        self.out: Lines | None = None
        self.log: Lines | None = None

    @property
    def metrics_file(self) -> Path:
        return self.data_dir / "metrics.jsonl"

    def start(self) -> float:
        from app.audio.streams import open_stream

        started = time.monotonic()
        self.app = headless_app(self.rig, self.data_dir, self.metrics_file)
        self.out, self.log = Lines(self.app.stdout), Lines(self.app.stderr)
        self.out.wait_for("listening on", 180)
        for device, recorder in zip(self._devices, (self.mic, self.speaker), strict=True):
            stream = open_stream("input", device, recorder.callback)
            stream.start()
            self._streams.append(stream)
        time.sleep(1.0)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.log is not None:
            (self.data_dir / "app.log").write_text("\n".join(self.log.lines) + "\n")
        for stream in self._streams:
            stream.close()
        self._streams.clear()
        if self.app is not None:
            self.app.terminate()
            try:
                self.app.wait(5)
            except subprocess.TimeoutExpired:
                self.app.kill()
                self.app.wait()

    def metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.exists():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def say(self, samples: np.ndarray[Any, Any], at: float | None = None) -> float:
        """Play ``samples`` (feed rate) into the microphone, starting at ``at``; returns when it ends."""
        from app.audio.probe import SignalPlayer
        from app.audio.streams import open_stream

        if at is not None:
            time.sleep(max(0.0, at - time.monotonic()))
        player = SignalPlayer(samples, self.feed.default_samplerate)
        begin = time.monotonic()
        with open_stream("output", self.feed, player.callback):
            player.finished.wait(len(samples) / self.feed.default_samplerate + 2)
            time.sleep(0.05)
        return begin

    def loud_times(self, since: float) -> np.ndarray[Any, Any]:
        times, audio = self.speaker.timeline(since)
        keep = times > since
        return times[keep][np.abs(audio[keep]) > LOUD]

    def first_sound_after(self, since: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            loud = self.loud_times(since)
            if len(loud):
                return float(loud[0])
            time.sleep(0.02)
        return None

    def when_talking(self, not_before: float, timeout: float = 10.0) -> float | None:
        """The first moment from ``not_before`` on when the assistant has been loud for 100 ms."""
        time.sleep(max(0.0, not_before - time.monotonic()))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            loud = self.loud_times(time.monotonic() - 0.3)
            # the recorder lags by a few blocks: loud over 100 ms of what it has, and lately
            if len(loud) and loud[-1] - loud[0] >= 0.1 and time.monotonic() - loud[-1] < 0.1:
                return time.monotonic()
            time.sleep(0.005)
        return None

    def into_answer(self, text: str, after_s: float) -> tuple[float, float | None]:
        """Ask ``text``, then wait until the assistant has talked ``after_s`` and is talking now.

        Returns when the request began, and the answer's first sound (None: no answer).
        """
        self.settle()
        begin = self.say(speech(text, self.feed.default_samplerate))
        first = self.first_sound_after(begin, 15.0)
        if first is None or self.when_talking(first + after_s) is None:
            return begin, None
        return begin, first

    def settle(self) -> None:
        """Wait until the speaker has been quiet for ANSWER_QUIET_S: no answer in flight."""
        self.wait_answer_end(time.monotonic() - 60.0, timeout=30.0)

    def wait_turn(self, after: float, timeout: float = 40.0) -> None:
        """Wait until the app has completed a turn whose user spoke after ``after``, and is quiet."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.turns_between(after, math.inf):
            time.sleep(0.1)
        self.settle()

    def turns_between(self, start: float, end: float) -> list[dict[str, Any]]:
        """The app's turns whose user's speech ended within [start, end] (its own clock is ours)."""
        return [t for t in self.metrics() if start <= (t.get("user_speech_end") or 0.0) <= end]

    def wait_answer_end(self, since: float, timeout: float = 40.0) -> float | None:
        """The speaker's last loud sample once it has been quiet for ANSWER_QUIET_S."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            loud = self.loud_times(since)
            if len(loud) and time.monotonic() - loud[-1] > ANSWER_QUIET_S:
                return float(loud[-1])
            time.sleep(0.1)
        return None


def speech(text: str, rate: float) -> np.ndarray[Any, Any]:
    from app.audio.probe import espeak_speech
    from app.audio.resample import StreamResampler

    samples, source_rate = espeak_speech(text)
    return StreamResampler(source_rate, rate, "HQ").process(samples, last=True)


def cough(rate: float, seconds: float = 0.15, level: float = 0.3) -> np.ndarray[Any, Any]:
    """A cough-length burst: band-limited noise with a fast attack and decay."""
    rng = np.random.default_rng(7)
    n = int(rate * seconds)
    noise = rng.standard_normal(n).astype(np.float32)
    noise = np.convolve(noise, np.ones(8, np.float32) / 8.0, mode="same")  # duller, like a cough
    envelope = np.minimum(1.0, np.linspace(0.0, 8.0, n)) * np.minimum(1.0, np.linspace(4.0, 0.0, n))
    burst: np.ndarray[Any, Any] = (level * noise / np.max(np.abs(noise)) * envelope).astype(np.float32)
    return burst


def gaps(loud: np.ndarray[Any, Any], min_gap_s: float) -> list[tuple[float, float]]:
    """(last loud sample before, first loud sample after) for every silence of at least ``min_gap_s``."""
    if len(loud) < 2:
        return []
    steps = np.diff(loud)
    return [(float(loud[i]), float(loud[i + 1])) for i in np.flatnonzero(steps >= min_gap_s)]


def uninterrupted(run: LoopRun, text: str) -> dict[str, Any]:
    assert run.out is not None
    run.settle()
    before_lines = len(run.out.lines)
    begin = run.say(speech(text, run.feed.default_samplerate))
    first = run.first_sound_after(begin, 15.0)
    end = run.wait_answer_end(begin) if first is not None else None
    run.wait_turn(begin)
    turns = run.turns_between(begin, time.monotonic())
    halted = [t for t in turns if t.get("barge_in")]
    resumed = sum(int(t.get("false_interruptions") or 0) for t in turns)
    heard = [line[5:] for line in run.out.lines[before_lines:] if line.startswith("you: ")]
    return {
        "request": text,
        "answered": first is not None,
        "answer_s": None if first is None or end is None else round(end - first, 2),
        "turns": len(turns),
        "self_interruptions": len(halted) + resumed,
        "halted": len(halted),
        "resumed": resumed,
        "heard": heard,
        "extra_turns": max(0, len(heard) - 1),
        "halt_ms": [t.get("halt_ms") for t in halted],
    }


def interruption(run: LoopRun, text: str, after_s: float = 1.5) -> dict[str, Any]:
    from app.testkit.bargein_bench import user_onset

    user = speech(INTERRUPTION, run.feed.default_samplerate)
    _, first = run.into_answer(text, after_s)
    if first is None:
        return {"request": text, "answered": False}
    spoke = run.say(user)
    ended = time.monotonic()
    run.wait_turn(spoke)  # the answer to the interruption
    onset = user_onset(run.mic, spoke - 0.2, ended + 0.5, user, 0.002)
    if onset is None:
        return {"request": text, "answered": True, "onset_found": False}
    loud = run.loud_times(first)
    before_onset_end = loud[loud < onset]
    halted = [g for g in gaps(loud, GAP_S) if g[0] >= onset - 0.02]
    silent_at = halted[0][0] if halted else None
    return {
        "request": text,
        "answered": True,
        "onset_found": True,
        # plain bools: numpy's do not go into JSON
        "assistant_talking_at_onset": bool(len(before_onset_end) and onset - before_onset_end[-1] < GAP_S),
        "halted": silent_at is not None and silent_at - onset < 2.0,
        "halt_ms": None if silent_at is None else round((silent_at - onset) * 1000.0, 1),
    }


def cough_trial(run: LoopRun, text: str, after_s: float = 1.5) -> dict[str, Any]:
    begin, first = run.into_answer(text, after_s)
    if first is None:
        return {"request": text, "answered": False}
    burst_at = run.say(cough(run.feed.default_samplerate))
    run.wait_turn(begin)
    loud = run.loud_times(first)
    # the longest silence on the speaker starting around the burst: the pause, if there was one
    after = [g for g in gaps(loud, 0.1) if burst_at - 0.05 <= g[0] <= burst_at + 0.6]
    gap = max(after, key=lambda g: g[1] - g[0]) if after else None
    turns = run.turns_between(begin, time.monotonic())
    paused = sum(int(t.get("false_interruptions") or 0) for t in turns)
    cancelled = any(t.get("barge_in") for t in turns)
    gap_s = None if gap is None else round(gap[1] - gap[0], 3)
    # Passing: the answer went on, either unbroken or resumed within RESUME_WITHIN_S.
    outcome = "cancelled" if cancelled else ("resumed" if paused else "not paused")
    return {
        "request": text,
        "answered": True,
        "outcome": outcome,
        "gap_s": gap_s,
        "resumed": outcome == "resumed" and gap_s is not None and gap_s <= RESUME_WITHIN_S,
        "passed": outcome == "not paused" or (gap_s is not None and gap_s <= RESUME_WITHIN_S),
    }


def run_setting(
    rig: Any, level_db: float, latency_ms: int, args: argparse.Namespace, index: int
) -> dict[str, Any]:
    rig.set_echo(True, latency_ms=latency_ms, gain_db=level_db)
    data_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"hv-echo-loop-{os.getpid()}-{index}"
    run = LoopRun(rig, data_dir)
    try:
        start_s = run.start()
        answers = [uninterrupted(run, REQUESTS[i % len(REQUESTS)]) for i in range(args.answers)]
        for a in answers:
            print(f"  {level_db:+} dB {latency_ms} ms answer: {a}", file=sys.stderr, flush=True)
        interruptions = [interruption(run, REQUESTS[i % len(REQUESTS)]) for i in range(args.interruptions)]
        for i in interruptions:
            print(f"  {level_db:+} dB {latency_ms} ms interruption: {i}", file=sys.stderr, flush=True)
        coughs = [cough_trial(run, REQUESTS[(i + 3) % len(REQUESTS)]) for i in range(args.coughs)]
        for c in coughs:
            print(f"  {level_db:+} dB {latency_ms} ms cough: {c}", file=sys.stderr, flush=True)
        log_tail = (run.log.lines if run.log else [])[-15:]
    finally:
        run.stop()
        rig.set_echo(False)
    measured = [i for i in interruptions if i.get("onset_found") and i.get("assistant_talking_at_onset")]
    halt_ms = [i["halt_ms"] for i in measured if i["halted"]]
    return {
        "level_db": level_db,
        "latency_ms": latency_ms,
        "start_s": round(start_s, 1),
        "answers": len([a for a in answers if a["answered"]]),
        "self_interruptions": sum(a["self_interruptions"] for a in answers),
        "extra_turns": sum(a["extra_turns"] for a in answers),
        "interruptions": len(measured),
        "interruptions_missed": len(measured) - len(halt_ms),
        "interruption_halt_ms": summary(halt_ms),
        "coughs": len(coughs),
        "coughs_resumed": sum(1 for c in coughs if c.get("resumed")),
        "coughs_passed": sum(1 for c in coughs if c.get("passed")),
        "answer_rows": answers,
        "interruption_rows": interruptions,
        "cough_rows": coughs,
        "app_log_tail": log_tail,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=10, help="uninterrupted answers per setting")
    parser.add_argument("--interruptions", type=int, default=5, help="real interruptions per setting")
    parser.add_argument("--coughs", type=int, default=3, help="cough bursts per setting")
    parser.add_argument("--levels", default="0,-10,-20,-36", help="echo levels in dB, comma-separated")
    parser.add_argument("--latencies", default="20,80", help="loopback latencies in ms, comma-separated")
    parser.add_argument("--out", type=Path, default=Path("bench/results/echo_loop.json"))
    args = parser.parse_args(argv)
    levels = [float(x) for x in args.levels.split(",")]
    latencies = [int(x) for x in args.latencies.split(",")]

    from app.testkit.rig import VirtualAudioRig

    load_before = os.getloadavg()
    rig = VirtualAudioRig()
    rig.start()  # before PortAudio initialises in this process
    settings: list[dict[str, Any]] = []
    try:
        for latency in latencies:
            for level in levels:
                print(f"echo {level:+} dB, {latency} ms", file=sys.stderr, flush=True)
                settings.append(run_setting(rig, level, latency, args, len(settings)))
                s = settings[-1]
                print(
                    f"  -> {s['self_interruptions']} self-interruptions in {s['answers']} answers, "
                    f"{s['extra_turns']} extra turns; interruptions {s['interruptions']} "
                    f"missed {s['interruptions_missed']} {s['interruption_halt_ms']}; "
                    f"coughs resumed {s['coughs_resumed']}/{s['coughs']}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        rig.stop()

    result: dict[str, Any] = {
        "benchmark": "echo_loop",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(load_before),
        "targets": {
            "self_interruptions": 0,
            "interruption_p95_ms": {"0 dB": 250.0, "-10 dB and below": 150.0},
            "cough_resumes_within_s": RESUME_WITHIN_S,
        },
        "settings": settings,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    header = ("echo", "delay", "answers", "self-int", "extra", "int p95", "missed", "coughs")
    print(" ".join(f"{h:>9}" for h in header))
    for s in settings:
        print(
            f"{s['level_db']:>+7.0f}dB {s['latency_ms']:>4}ms {s['answers']:>8} {s['self_interruptions']:>9} "
            f"{s['extra_turns']:>6} {s['interruption_halt_ms'].get('p95', '-'):>8} "
            f"{s['interruptions_missed']:>7} {s['coughs_resumed']:>3}/{s['coughs']}"
        )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
