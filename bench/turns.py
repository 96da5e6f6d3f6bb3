"""Turn-taking through the whole app: how soon it answers once the user has finished, and how often
it answers before they have.

The app runs headless with its embedded server on the virtual devices, as a user meets it, driven
by the testers' driver (``bench/driven.py``, as ``helpdesk-voice drive``). Each request of the
turn-taking set (``bench/data/turn_set.toml``, 60 requests, a third with a pause of
300-900 ms inside the sentence; ``bench/turn_set.py``) is played into the virtual microphone, and
the microphone and the speaker's monitor are recorded on one clock. Per request, from outside:

- the end of speech: the request's last audible sample, found in the microphone by its shape;
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
import sys
import time
from pathlib import Path
from typing import Any

from bench.driven import drive
from bench.stats import machine, summary
from bench.turn_set import load_set

TARGET_MEDIAN_MS = 300.0
TARGET_P95_MS = 500.0
TARGET_PREMATURE = 0.03
# Each request begins this long after the last answer ended (the driver's own wait for the end of an
# answer included): whatever a request set off, an answer given into a pause and then the real one,
# has finished.
QUIET_BEFORE_MS = 1500.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=0, help="the first N of the set (0: all)")
    parser.add_argument(
        "--turn-detection", choices=("default", "semantic_vad", "server_vad"), default="default"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/turns.json"))
    args = parser.parse_args(argv)

    from app.testkit.scenario import Turn

    chosen = load_set()
    if args.requests:
        # Spread over the set, so a short run still has paused requests and both kinds of voice.
        step = max(1, len(chosen) // args.requests)
        chosen = chosen[::step][: args.requests]
    env = {} if args.turn_detection == "default" else {"HELPDESK_VOICE_TURN_DETECTION": args.turn_detection}
    turns = [
        Turn(number, written, voice=request.voice, speed=request.speed, after_ms=QUIET_BEFORE_MS)
        for number, (request, written) in enumerate(chosen, 1)
    ]
    driven = drive("turns", turns, env)
    rows = [_row(request, result) for (request, _), result in zip(chosen, driven.run.turns, strict=False)]
    for row in rows:
        verdict = "CUT OFF" if row["premature"] else f"{row['first_sound_ms']} ms"
        print(f"{row['request']!r}: {verdict}", file=sys.stderr)

    result = summarise(rows, args.turn_detection, machine(driven.load_before))
    result["problem"] = driven.run.problem
    result["judgements"] = [line for line in driven.app_log if "end of turn" in line]
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


def _row(request: Any, result: Any) -> dict[str, Any]:
    timing = result.timing
    premature = timing.cut_off
    return {
        "request": request.text,
        "voice": request.voice,
        "speed": request.speed,
        "pauses_ms": list(request.pauses_ms),
        "premature": premature,
        "answered_early_by_ms": round((timing.speech_end - timing.answer_at) * 1000.0, 1)
        if premature
        else None,
        "first_sound_ms": timing.first_sound_ms,
        "turns_heard": len(result.events.heard),  # more than one: the app took the pause for the end
        "heard": result.events.heard,
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
