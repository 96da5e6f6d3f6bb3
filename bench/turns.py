"""Turn-taking through the whole app: how soon it answers once the user has finished, and how often
it answers before they have.

The app runs headless with its embedded server on the virtual devices, as a user meets it. Each
request of the turn-taking set (``bench/data/turn_set.toml``, 60 requests, a third with a pause of
300-900 ms inside the sentence; ``bench/turn_set.py``) is played into the virtual microphone, and
the microphone and the speaker's monitor are recorded on one clock. Per request, from outside:

- the end of speech: the last loud sample of the request in the microphone;
- the answer's first sound: the first loud sample on the speaker after the request began;
- a premature cut-off when that first sound comes before the end of speech (the app answered
  into a pause, the user then talked over it);
- time to first sound = first sound - end of speech, for the others.

    python -m bench.turns [--requests N] [--turn-detection semantic_vad|server_vad|default]
                          [--out bench/results/turns.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.stats import machine, summary
from bench.ttfa import LOUD, Lines, headless_app
from bench.turn_set import load_set, render

TARGET_MEDIAN_MS = 300.0
TARGET_P95_MS = 500.0
TARGET_PREMATURE = 0.03
# An answer may come in two parts (cut off in a pause, then the real one after the request), so the
# next request waits for a longer quiet than one answer's pauses between clauses.
QUIET_AFTER_ANSWER_S = 2.5
ANSWER_WAIT_S = 25.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=0, help="the first N of the set (0: all)")
    parser.add_argument(
        "--turn-detection", choices=("default", "semantic_vad", "server_vad"), default="default"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/turns.json"))
    args = parser.parse_args(argv)

    chosen = load_set()
    if args.requests:
        # Spread over the set, so a short run still has paused requests and both kinds of voice.
        step = max(1, len(chosen) // args.requests)
        chosen = chosen[::step][: args.requests]
    rendered = [(request, *render(request, written)) for request, written in chosen]
    env = {} if args.turn_detection == "default" else {"HELPDESK_VOICE_TURN_DETECTION": args.turn_detection}

    from app.testkit.rig import VirtualAudioRig

    rig = VirtualAudioRig()
    rig.start()  # before PortAudio initialises in this process
    app = None
    rows: list[dict[str, Any]] = []
    server_log = Lines([])
    try:
        from app.audio.devices import find_device
        from app.audio.probe import SignalPlayer, TimedRecorder
        from app.audio.resample import StreamResampler
        from app.audio.streams import open_stream

        load_before = os.getloadavg()
        data_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"hv-turns-{os.getpid()}"
        app = headless_app(rig, data_dir, data_dir / "metrics.jsonl", env)
        app_out, server_log = Lines(app.stdout), Lines(app.stderr)
        app_out.wait_for("listening on", 180)
        mic = find_device(rig.mic, "input")
        feed = find_device(rig.mic_feed, "output")
        monitor = find_device(rig.speaker_monitor, "input")
        mic_rec = TimedRecorder(mic.default_samplerate)
        speaker_rec = TimedRecorder(monitor.default_samplerate)
        with open_stream("input", mic, mic_rec.callback), open_stream("input", monitor, speaker_rec.callback):
            time.sleep(1.0)
            for request, samples, rate in rendered:
                voice = StreamResampler(rate, feed.default_samplerate, "HQ").process(samples, last=True)
                # Each request starts into quiet: whatever the last one set off (an answer given
                # into a pause, then the real one) has finished.
                _wait_for_quiet(speaker_rec, time.monotonic() - QUIET_AFTER_ANSWER_S, need_sound=False)
                before_you = len(app_out.lines)
                begin = time.monotonic()
                player = SignalPlayer(voice, feed.default_samplerate)
                with open_stream("output", feed, player.callback):
                    player.finished.wait(len(voice) / feed.default_samplerate + 2)
                    time.sleep(0.1)
                _wait_for_quiet(speaker_rec, begin)
                rows.append(_measure(request, begin, mic_rec, speaker_rec, app_out, before_you))
                row = rows[-1]
                verdict = "CUT OFF" if row["premature"] else f"{row['first_sound_ms']} ms"
                print(f"{request.text!r}: {verdict}", file=sys.stderr, flush=True)
    finally:
        if app is not None:
            app.terminate()
            try:
                app.wait(5)
            except Exception:
                app.kill()
        rig.stop()

    result = summarise(rows, args.turn_detection, machine(load_before))
    result["judgements"] = [line for line in server_log.lines if "end of turn" in line]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, part in result["by"].items():
        print(f"{name:<22} {part}")
    first = result["first_sound_ms"]
    print(
        f"first sound median {first.get('p50')} ms, p95 {first.get('p95')} ms "
        f"(targets {TARGET_MEDIAN_MS:.0f}/{TARGET_P95_MS:.0f}); premature cut-offs "
        f"{result['premature']} of {result['requests']} (target at most {TARGET_PREMATURE:.0%}); "
        f"no answer {result['unanswered']}; written to {args.out}"
    )
    return 0


def _wait_for_quiet(speaker_rec: Any, begin: float, *, need_sound: bool = True) -> None:
    """Until the speaker has been quiet for a while since ``begin`` (after it made a sound, unless
    ``need_sound`` is off), or :data:`ANSWER_WAIT_S` passed."""
    deadline = time.monotonic() + ANSWER_WAIT_S
    while time.monotonic() < deadline:
        times, audio = speaker_rec.timeline()
        loud = times[(times > begin) & (abs(audio) > LOUD)]
        last = loud[-1] if len(loud) else (None if need_sound else begin)
        if last is not None and time.monotonic() - last > QUIET_AFTER_ANSWER_S:
            return
        time.sleep(0.1)


def _measure(
    request: Any, begin: float, mic_rec: Any, speaker_rec: Any, app_out: Lines, before_you: int
) -> dict[str, Any]:
    mic_times, mic_audio = mic_rec.timeline()
    spoken = mic_times[(mic_times > begin) & (abs(mic_audio) > LOUD)]
    speaker_times, speaker_audio = speaker_rec.timeline()
    speech_start = float(spoken[0]) if len(spoken) else begin
    answer = speaker_times[(speaker_times > speech_start) & (abs(speaker_audio) > LOUD)]
    speech_end = float(spoken[-1]) if len(spoken) else None
    onset = float(answer[0]) if len(answer) else None
    premature = speech_end is not None and onset is not None and onset < speech_end
    first_sound = None
    if speech_end is not None and onset is not None and not premature:
        first_sound = round((onset - speech_end) * 1000.0, 1)
    heard = [line[5:] for line in app_out.lines[before_you:] if line.startswith("you: ")]
    return {
        "request": request.text,
        "voice": request.voice,
        "speed": request.speed,
        "pauses_ms": list(request.pauses_ms),
        "premature": premature,
        "answered_early_by_ms": round((speech_end - onset) * 1000.0, 1) if premature else None,  # type: ignore[operator]
        "first_sound_ms": first_sound,
        "turns_heard": len(heard),  # more than one: the app took the pause for the end
        "heard": heard,
    }


def _figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    times = [r["first_sound_ms"] for r in rows if r["first_sound_ms"] is not None]
    return {"requests": len(rows), "premature": sum(r["premature"] for r in rows), "ms": summary(times)}


def summarise(rows: list[dict[str, Any]], turn_detection: str, where: dict[str, Any]) -> dict[str, Any]:
    times = [r["first_sound_ms"] for r in rows if r["first_sound_ms"] is not None]
    premature = sum(r["premature"] for r in rows)
    groups = {
        "paused in the sentence": [r for r in rows if r["pauses_ms"]],
        "without a pause": [r for r in rows if not r["pauses_ms"]],
        "espeak-ng voices": [r for r in rows if r["voice"] != "piper"],
        "Piper voice": [r for r in rows if r["voice"] == "piper"],
    }
    return {
        "benchmark": "turns",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": where,
        "turn_detection": turn_detection,
        "requests": len(rows),
        "premature": premature,
        "premature_rate": round(premature / len(rows), 3) if rows else None,
        "unanswered": sum(r["first_sound_ms"] is None and not r["premature"] for r in rows),
        "first_sound_ms": summary(times),
        "by": {name: _figures(part) for name, part in groups.items() if part},
        "targets": {
            "median_ms": TARGET_MEDIAN_MS,
            "p95_ms": TARGET_P95_MS,
            "premature_rate": TARGET_PREMATURE,
        },
        "rows": rows,
    }


if __name__ == "__main__":
    sys.exit(main())
