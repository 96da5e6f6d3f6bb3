"""Time to first audio with the embedded offline server, measured as a listener hears it.

The app runs headless with no endpoint configured, so it starts its embedded server as a user
would meet it, on the virtual devices, driven by the testers' driver (``bench/driven.py``, as
``helpdesk-voice drive``). Spoken requests (espeak-ng) go into the virtual microphone one at a time,
each 3 s after the last answer ended; the microphone and the speaker's monitor are recorded on one
monotonic clock. For each request: time from the end of the request in the microphone to the
first loud sample of the answer on the speaker; plus what the app heard (word error rate),
whether the answer gave the right article's first step (retrieval), and the server's own
breakdown of where the time went.

    python -m bench.ttfa [--requests 12] [--out bench/results/ttfa.json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.driven import drive
from bench.stats import machine, percentile

REQUESTS: list[tuple[str, str]] = [
    ("I forgot my password", "password-reset"),
    ("my VPN keeps dropping every few minutes", "vpn-connection-drops"),
    ("the printer on the third floor won't print", "printer-not-printing"),
    ("my account is locked out", "account-lockout"),
    ("Outlook is not getting any new email", "outlook-not-syncing"),
    ("my laptop is really slow today", "slow-laptop"),
    ("I can't connect to the Wi-Fi", "wifi-not-connecting"),
    ("my headset has no sound in Teams meetings", "meeting-audio-microphone"),
    ("I deleted a file by mistake and need it back", "restore-deleted-file"),
    ("I got a suspicious email asking for my password", "report-phishing-email"),
    ("my second monitor stays black on the docking station", "external-monitor-docking-station"),
    ("the disk on my laptop is full", "disk-full"),
]
TARGET_MEDIAN_MS = 700.0
TARGET_P95_MS = 1000.0
GOAL_MEDIAN_MS = 500.0
IDLE_FIRST_MS = 3000.0  # longer than the app's 2 s before it idles


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", " ")).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    ref, hyp = _words(reference), _words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[len(hyp)], len(ref)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=len(REQUESTS))
    parser.add_argument("--out", type=Path, default=Path("bench/results/ttfa.json"))
    args = parser.parse_args(argv)

    from app.testkit.scenario import Turn
    from app.tools.kb import load_articles

    chosen = REQUESTS[: args.requests]
    # Each request after a quiet spell longer than the app's idle switch, as a user comes back to it.
    turns = [Turn(number, text, after_ms=IDLE_FIRST_MS) for number, (text, _) in enumerate(chosen, 1)]
    driven = drive("ttfa", turns)
    steps = {a.id: a.steps[0] for a in load_articles()[0]}
    timings = [line.split("turn timing: ", 1)[1] for line in driven.app_log if "turn timing" in line]
    rows = [
        _row(text, article, steps, result, timings[index] if index < len(timings) else None)
        for index, ((text, article), result) in enumerate(zip(chosen, driven.run.turns, strict=False))
    ]
    ttfa = [r["ttfa_ms"] for r in rows if r["ttfa_ms"] is not None]
    errors = sum(r["word_errors"] for r in rows)
    words = sum(r["words"] for r in rows)
    result: dict[str, Any] = {
        "benchmark": "ttfa",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(driven.load_before),
        "measured_by": "the testers' driver (app.testkit.driver), as helpdesk-voice drive",
        "start_to_listening_s": driven.start_to_listening_s,
        "requests": len(rows),
        "answered": len(ttfa),
        "problem": driven.run.problem,
        "ttfa_ms": {
            "median": round(statistics.median(ttfa), 1) if ttfa else None,
            "p95": round(percentile(ttfa, 0.95), 1) if ttfa else None,
            "min": round(min(ttfa), 1) if ttfa else None,
            "max": round(max(ttfa), 1) if ttfa else None,
        },
        "app_reported_ttfa_ms": [ms for r in driven.run.turns for ms in r.events.app_ttfa_ms],
        "word_error_rate": round(errors / words, 3) if words else None,
        "retrieval_accuracy": round(sum(r["right_article"] for r in rows) / len(rows), 3) if rows else None,
        "targets": {"median_ms": TARGET_MEDIAN_MS, "p95_ms": TARGET_P95_MS, "goal_median_ms": GOAL_MEDIAN_MS},
        "rows": rows,
        "app_log_tail": [line for line in driven.app_log if "turn timing" not in line][-10:],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'request':<52} {'ttfa ms':>8} {'WER':>5} {'article':>8}  server breakdown")
    for r in rows:
        wer = r["word_errors"] / max(1, r["words"])
        print(
            f"{r['request'][:52]:<52} {r['ttfa_ms'] or '-':>8} {wer:>5.2f} "
            f"{'ok' if r['right_article'] else 'WRONG':>8}  {r['server_timing'] or ''}"
        )
    stats = result["ttfa_ms"]
    print(
        f"median {stats['median']} ms, p95 {stats['p95']} ms "
        f"(targets {TARGET_MEDIAN_MS:.0f}/{TARGET_P95_MS:.0f}); "
        f"WER {result['word_error_rate']}; retrieval {result['retrieval_accuracy']}; written to {args.out}"
    )
    return 0


def _row(
    text: str, article: str, steps: dict[str, str], result: Any, server_timing: str | None
) -> dict[str, Any]:
    heard = " ".join(result.events.heard)
    said = " ".join(result.events.answers)
    errors, words = word_errors(text, heard)
    step_words = _words(steps.get(article, ""))[:6]
    return {
        "request": text,
        "heard": heard,
        "answer": said,
        "expected_article": article,
        "right_article": bool(step_words) and " ".join(step_words) in " ".join(_words(said)),
        "ttfa_ms": result.timing.first_sound_ms,
        "cut_off": result.timing.cut_off,
        "word_errors": errors,
        "words": words,
        "server_timing": server_timing,
    }


if __name__ == "__main__":
    sys.exit(main())
