"""Client-added latency: microphone to the wire, and the wire to the speaker, excluding the model.

The app's engine talks to a scripted realtime server on loopback (the test suite's peer) through
the PulseAudio virtual devices; everything runs on one monotonic clock. Each trial a short tone
is played into the virtual microphone, and the server answers with a tone once the user is quiet.

- capture to wire: the tone's first loud sample in the microphone (a recorder on the virtual
  source) to the arrival, at the server, of the ``input_audio_buffer.append`` that carries it;
- wire to speaker: the server sending the answer's first ``response.output_audio.delta`` to its
  first loud sample on the speaker's monitor.

Both include what the path inherently holds: the capture block and the 20 ms wire frame going
out, the output device's buffer coming back.

    python -m bench.client_latency [--trials 20] [--out bench/results/client_latency.json]
                                   [--echo-cancellation | --no-echo-cancellation]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.audio.resample import pcm16_to_float
from bench.stats import machine, percentile, summary
from tests.scripted_peer import ScriptedPeer

if TYPE_CHECKING:  # importing sounddevice must wait for the virtual devices
    from app.audio.probe import TimedRecorder

GOAL_MS = 40.0  # each way (docs: figures we hold ourselves to)
LOUD = 0.05  # a sample above this is the tone, not silence or hiss
TONE_S = 0.4


class _Listener:
    """The engine's listener: only whether it is listening matters here."""

    def __init__(self) -> None:
        self.listening = threading.Event()

    def on_state(self, event: Any) -> None:
        if getattr(event.state, "value", "") == "listening":
            self.listening.set()

    def on_transcript(self, event: Any) -> None:
        pass

    on_tool = on_turn = on_notice = on_transcript


def _first_loud(recorder: TimedRecorder, after: float) -> float | None:
    from app.testkit.bargein_bench import first_time_above

    return first_time_above(recorder, after, math.inf, LOUD)


class TimedPeer(ScriptedPeer):
    """The scripted peer, noting when audio arrives and when answer audio leaves."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: list[tuple[float, bytes]] = []
        self.first_deltas: list[float] = []
        self._responses_seen: set[str] = set()

    async def _on_audio(self, session: Any, audio: bytes) -> None:
        self.arrivals.append((time.monotonic(), audio))
        await super()._on_audio(session, audio)

    async def _send(self, session: Any, event: dict[str, Any]) -> None:
        if event.get("type") == "response.output_audio.delta":
            response = str(event.get("response_id"))
            if response not in self._responses_seen:
                self._responses_seen.add(response)
                self.first_deltas.append(time.monotonic())
        await super()._send(session, event)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/results/client_latency.json"))
    parser.add_argument("--echo-cancellation", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)

    from app.testkit.rig import VirtualAudioRig

    rig = VirtualAudioRig()
    rig.start()  # before sounddevice initialises PortAudio, which fixes the device list
    load_before = os.getloadavg()
    rows: list[dict[str, float | None]] = []
    try:
        from app.audio.devices import find_device
        from app.audio.pipeline import AudioSettings
        from app.audio.probe import SignalPlayer, TimedRecorder
        from app.audio.streams import open_stream
        from app.defaults import session_config
        from app.engine import Engine, EngineConfig
        from app.realtime import custom_endpoint
        from app.tools.registry import ToolRegistry
        from tests.scripted_peer import Answer
        from tests.server_events import pcm

        mic = find_device(rig.mic, "input")
        speaker = find_device(rig.speaker, "output")
        feed = find_device(rig.mic_feed, "output")
        monitor = find_device(rig.speaker_monitor, "input")
        mic_recorder = TimedRecorder(mic.default_samplerate)
        speaker_recorder = TimedRecorder(monitor.default_samplerate)
        streams = [
            open_stream("input", mic, mic_recorder.callback),
            open_stream("input", monitor, speaker_recorder.callback),
        ]
        for stream in streams:
            stream.start()
        rate = feed.default_samplerate
        t = np.arange(int(rate * TONE_S)) / rate
        tone = (0.3 * np.sin(2 * np.pi * 440 * t) * np.minimum(1.0, t / 0.005)).astype(np.float32)
        answer = Answer("Here is the answer.", pcm(800, amplitude=0.3, freq=330))
        peer = TimedPeer([answer], answer_delay_s=0.0)
        with peer:
            config = EngineConfig(
                endpoint=custom_endpoint(peer.url, None),
                session=session_config(),
                input_device=mic,
                output_device=speaker,
                tools=ToolRegistry(),
                audio=AudioSettings(echo_cancellation=args.echo_cancellation),
                cue_after_s=30.0,  # no earcon: the answer's first sound is the answer
            )
            listener = _Listener()
            engine = Engine(config, listener)
            engine.start()
            try:
                if not listener.listening.wait(15):
                    raise RuntimeError("the engine did not start listening")
                time.sleep(1.0)  # the detector learns the (silent) room
                for number in range(args.trials):
                    started = time.monotonic()
                    deltas_before = len(peer.first_deltas)
                    player = SignalPlayer(tone, rate)
                    feed_stream = open_stream("output", feed, player.callback)
                    feed_stream.start()
                    deadline = time.monotonic() + 6.0
                    while len(peer.first_deltas) == deltas_before and time.monotonic() < deadline:
                        time.sleep(0.02)
                    time.sleep(1.3)  # the answer plays out
                    feed_stream.close()
                    rows.append(_trial(started, peer, deltas_before, mic_recorder, speaker_recorder))
                    row = rows[-1]
                    print(
                        f"trial {number + 1:>2}: capture to wire {_ms(row['capture_to_wire_ms'])}, "
                        f"wire to speaker {_ms(row['wire_to_speaker_ms'])}",
                        file=sys.stderr,
                        flush=True,
                    )
            finally:
                engine.stop()
        for stream in streams:
            stream.close()
    finally:
        rig.stop()

    def column(name: str) -> list[float]:
        return [value for row in rows if (value := row[name]) is not None]

    up, down = column("capture_to_wire_ms"), column("wire_to_speaker_ms")
    result: dict[str, Any] = {
        "benchmark": "client_latency",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(load_before),
        "trials": args.trials,
        "echo_cancellation": args.echo_cancellation,
        "capture_to_wire_ms": summary(up),
        "wire_to_speaker_ms": summary(down),
        "missed": sum(1 for row in rows if None in row.values()),
        "goal_ms_each_way": GOAL_MS,
        "meets_goal_median": bool(up and down)
        and percentile(up, 0.5) <= GOAL_MS
        and percentile(down, 0.5) <= GOAL_MS,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'figure':<24} {'p50':>7} {'p95':>7} {'max':>7}  (ms, {len(rows)} trials)")
    for label, key in [("capture to wire", "capture_to_wire_ms"), ("wire to speaker", "wire_to_speaker_ms")]:
        stats = result[key]
        print(f"{label:<24} {stats.get('p50', '-'):>7} {stats.get('p95', '-'):>7} {stats.get('max', '-'):>7}")
    print(f"goal {GOAL_MS:.0f} ms each way (median): {'met' if result['meets_goal_median'] else 'MISSED'}")
    return 0


def _trial(
    started: float,
    peer: TimedPeer,
    deltas_before: int,
    mic_recorder: TimedRecorder,
    speaker_recorder: TimedRecorder,
) -> dict[str, float | None]:
    onset = _first_loud(mic_recorder, started)
    arrival = None
    if onset is not None:
        for at, audio in list(peer.arrivals):
            if at < onset:
                continue
            samples = pcm16_to_float(audio)
            if len(samples) and float(np.max(np.abs(samples))) > LOUD:
                arrival = at
                break
    sent = peer.first_deltas[deltas_before] if len(peer.first_deltas) > deltas_before else None
    heard = _first_loud(speaker_recorder, sent) if sent is not None else None
    return {
        "capture_to_wire_ms": None if onset is None or arrival is None else (arrival - onset) * 1000.0,
        "wire_to_speaker_ms": None if sent is None or heard is None else (heard - sent) * 1000.0,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


if __name__ == "__main__":
    sys.exit(main())
