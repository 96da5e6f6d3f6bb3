"""Time to first audio with the embedded offline server, measured as a listener hears it.

The app runs headless with no endpoint configured, so it starts its embedded server as a user
would meet it, on the virtual devices. Spoken requests (espeak-ng) go into the virtual microphone
one at a time; the microphone and the speaker's monitor are recorded on one monotonic clock. For each request:
time from the last loud sample of the request in the microphone to the first loud sample of the
answer on the speaker; plus what the app heard (word error rate), whether the answer gave the
right article's first step (retrieval), and the server's own breakdown of where the time went.

    python -m bench.ttfa [--requests 12] [--out bench/results/ttfa.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

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
LOUD = 0.02


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
    """The app as a user runs it on the rig's devices (no endpoint: its embedded server), verbose;
    ``env``: settings for this run (``HELPDESK_VOICE_...``)."""
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=len(REQUESTS))
    parser.add_argument("--out", type=Path, default=Path("bench/results/ttfa.json"))
    args = parser.parse_args(argv)

    from app.testkit.rig import VirtualAudioRig

    rig = VirtualAudioRig()
    rig.start()  # before PortAudio initialises in this process
    processes: list[subprocess.Popen[str]] = []
    try:
        from app.audio.devices import find_device
        from app.audio.probe import SignalPlayer, TimedRecorder, espeak_speech
        from app.audio.resample import StreamResampler
        from app.audio.streams import open_stream
        from app.tools.kb import load_articles

        load_before = os.getloadavg()
        started = time.monotonic()
        data_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"hv-bench-{os.getpid()}"
        # The app as a user runs it: no endpoint, so it starts its own embedded server.
        app = headless_app(rig, data_dir, data_dir / "metrics.jsonl")
        processes.append(app)
        app_out, server_log = Lines(app.stdout), Lines(app.stderr)
        app_out.wait_for("listening on", 180)
        load_s = time.monotonic() - started
        mic = find_device(rig.mic, "input")
        feed = find_device(rig.mic_feed, "output")
        monitor = find_device(rig.speaker_monitor, "input")
        mic_rec, speaker_rec = (
            TimedRecorder(mic.default_samplerate),
            TimedRecorder(monitor.default_samplerate),
        )
        steps = {a.id: a.steps[0] for a in load_articles()[0]}
        rows: list[dict[str, Any]] = []
        with open_stream("input", mic, mic_rec.callback), open_stream("input", monitor, speaker_rec.callback):
            time.sleep(1.0)
            for text, article in REQUESTS[: args.requests]:
                samples, rate = espeak_speech(text)
                voice = StreamResampler(rate, feed.default_samplerate, "HQ").process(samples, last=True)
                before_you = len(app_out.lines)
                before_log = len(server_log.lines)
                begin = time.monotonic()
                player = SignalPlayer(voice, feed.default_samplerate)
                with open_stream("output", feed, player.callback):
                    player.finished.wait(len(voice) / feed.default_samplerate + 2)
                    time.sleep(0.1)
                # Wait for the answer to finish: the speaker silent for 1.2 s.
                deadline = time.monotonic() + 25
                while time.monotonic() < deadline:
                    times, audio = speaker_rec.timeline()
                    loud = times[(times > begin) & (abs(audio) > LOUD)]
                    if len(loud) and time.monotonic() - loud[-1] > 1.2:
                        break
                    time.sleep(0.1)
                rows.append(
                    _measure(
                        text,
                        article,
                        steps,
                        begin,
                        mic_rec,
                        speaker_rec,
                        app_out,
                        before_you,
                        server_log,
                        before_log,
                    )
                )
                print(f"{text!r}: {rows[-1]['ttfa_ms']} ms", file=sys.stderr, flush=True)
        app_metrics = []
        metrics_file = data_dir / "metrics.jsonl"
        if metrics_file.exists():
            app_metrics = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
        rig.stop()

    ttfa = [r["ttfa_ms"] for r in rows if r["ttfa_ms"] is not None]
    errors = sum(r["word_errors"] for r in rows)
    words = sum(r["words"] for r in rows)
    result: dict[str, Any] = {
        "benchmark": "ttfa",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(load_before),
        "start_to_listening_s": round(load_s, 1),
        "requests": len(rows),
        "answered": len(ttfa),
        "ttfa_ms": {
            "median": round(statistics.median(ttfa), 1) if ttfa else None,
            "p95": round(percentile(ttfa, 0.95), 1) if ttfa else None,
            "min": round(min(ttfa), 1) if ttfa else None,
            "max": round(max(ttfa), 1) if ttfa else None,
        },
        "app_reported_ttfa_ms": [m.get("ttfa_ms") for m in app_metrics],
        "word_error_rate": round(errors / words, 3) if words else None,
        "retrieval_accuracy": round(sum(r["right_article"] for r in rows) / len(rows), 3) if rows else None,
        "targets": {"median_ms": TARGET_MEDIAN_MS, "p95_ms": TARGET_P95_MS, "goal_median_ms": GOAL_MEDIAN_MS},
        "rows": rows,
        "app_log_tail": [line for line in server_log.lines if "turn timing" not in line][-10:],
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


def _measure(
    text: str,
    article: str,
    steps: dict[str, str],
    begin: float,
    mic_rec: Any,
    speaker_rec: Any,
    app_out: Lines,
    before_you: int,
    server_log: Lines,
    before_log: int,
) -> dict[str, Any]:
    mic_times, mic_audio = mic_rec.timeline()
    spoken = mic_times[(mic_times > begin) & (abs(mic_audio) > LOUD)]
    speaker_times, speaker_audio = speaker_rec.timeline()
    ttfa = None
    if len(spoken):
        speech_end = spoken[-1]
        answer = speaker_times[(speaker_times > speech_end) & (abs(speaker_audio) > LOUD)]
        ttfa = round((answer[0] - speech_end) * 1000.0, 1) if len(answer) else None
    you = next((line[5:] for line in app_out.lines[before_you:] if line.startswith("you: ")), "")
    said = " ".join(line for line in app_out.lines[before_you:] if line.startswith("assistant: "))
    errors, words = word_errors(text, you)
    step_words = _words(steps.get(article, ""))[:6]
    timing = next(
        (
            line.split("turn timing: ", 1)[1]
            for line in server_log.lines[before_log:]
            if "turn timing" in line
        ),
        None,
    )
    return {
        "request": text,
        "heard": you,
        "answer": said,
        "expected_article": article,
        "right_article": bool(step_words) and " ".join(step_words) in " ".join(_words(said)),
        "ttfa_ms": ttfa,
        "word_errors": errors,
        "words": words,
        "server_timing": timing,
    }


if __name__ == "__main__":
    sys.exit(main())
