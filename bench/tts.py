"""Local voice speed: time to the first streamed chunk, real-time factor and load time, per voice.

Each typical helpdesk reply is spoken through :class:`~app.localmodel.tts.SpeechStream` as the
embedded server does, with Piper (one and two onnxruntime threads) and with espeak-ng. Time to first
chunk runs from the start of synthesis to the first PCM16 chunk; the real-time factor is synthesis
time over audio time, per clause. "Stalls" counts clauses that were not ready when a listener playing
from the first chunk on would have needed them. For Piper the first clause is also taken apart:
phonemes (espeak-ng inside piper), the ONNX model, and resampling and trimming.

    python -m bench.tts [--repeats 3] [--out bench/results/tts.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.audio.resample import FloatArray
from app.localmodel.components import Speech
from app.localmodel.tts import OUTPUT_RATE, EspeakVoice, PiperVoice, SpeechStream, Voice, split_clauses
from bench.stats import machine, percentile, summary

REPLIES = [
    "Okay, let's reset your password. First, open the self-service portal at portal.example.com.",
    "Sure. I've created ticket HD-1042 for your printer, and a technician will contact you within "
    "four business hours.",
    "Your VPN profile looks outdated. Open the Company Portal app, find the VPN profile, and choose "
    "reinstall; then restart your laptop.",
    "No problem, I can help with that. Is the laptop connected to the office Wi-Fi or to your home network?",
    "Got it. Outlook keeps asking for your password because the saved credentials expired. Let's clear "
    "them in the Credential Manager.",
    "That sounds like a full mailbox. You are at 49.8 of 50 gigabytes, so please archive older mail.",
    "Alright, your account was locked after five failed sign-ins. It unlocks by itself at 9:30, or I "
    "can unlock it now after a quick identity check.",
    "Let me check the status page. Teams has a known outage in Europe since 8:15, and Microsoft expects "
    "a fix within the hour.",
    "To connect the second monitor, plug the cable into the dock, e.g. the HDMI port at the back, then "
    "press Windows and P.",
    "I'm sorry, I couldn't find an article about that. Would you like me to open a ticket so a "
    "technician can call you back?",
    "Thanks for waiting. Your new badge is ready at the front desk on the second floor.",
    "Please save your work first. The update needs a restart and takes about ten minutes.",
]
TARGET_FIRST_AUDIO_S = 0.4
GOAL_FIRST_AUDIO_S = 0.2


class TimedVoice:
    """A voice that notes each clause's synthesis time and audio length."""

    def __init__(self, voice: Voice) -> None:
        self.voice = voice
        self.name = voice.name
        self.sample_rate = voice.sample_rate
        self.clauses: list[tuple[str, float, float]] = []  # text, synthesis s, audio s

    def synthesize(self, text: str) -> FloatArray:
        started = time.perf_counter()
        audio = self.voice.synthesize(text)
        self.clauses.append((text, time.perf_counter() - started, len(audio) / OUTPUT_RATE))
        return audio


async def speak(voice: Voice, text: str) -> dict[str, Any]:
    """One reply through the streamer, consumed as fast as it comes (like the server's sender)."""
    timed = TimedVoice(voice)
    stream = SpeechStream(timed, text)
    speech: Speech = stream  # the server's interface, checked by mypy
    started = time.perf_counter()
    ready_at: list[float] = []  # when each clause's first chunk arrived
    async for chunk in speech:
        if chunk.first_of_clause:
            ready_at.append(time.perf_counter() - started)
    total_s = time.perf_counter() - started
    # A listener starting at the first chunk: clause n must be there when clause n-1 has played out.
    durations = [audio_s for _, _, audio_s in timed.clauses]
    stalls = 0
    play_at = ready_at[0] if ready_at else 0.0
    for index, ready in enumerate(ready_at):
        if index and ready > play_at:
            stalls += 1
            play_at = ready
        play_at += durations[index] + (0.12 if index + 1 < len(ready_at) else 0.0)
    synth_s = sum(seconds for _, seconds, _ in timed.clauses)
    audio_s = sum(durations)
    return {
        "text": text,
        "clauses": len(stream.clauses),
        "first_clause_words": len(stream.clauses[0].split()) if stream.clauses else 0,
        "first_audio_s": stream.first_audio_s,
        "first_clause_synthesis_s": timed.clauses[0][1] if timed.clauses else None,
        "first_clause_audio_s": timed.clauses[0][2] if timed.clauses else None,
        "synthesis_s": synth_s,
        "audio_s": audio_s,
        "rtf": synth_s / audio_s if audio_s else None,
        "stream_s": total_s,
        "stalls": stalls,
    }


def piper_breakdown(voice: PiperVoice, repeats: int) -> dict[str, dict[str, float]]:
    """Where a Piper first clause's time goes: phonemes, the ONNX model, resampling and trimming."""
    engine = voice.engine
    parts: dict[str, list[float]] = {"phonemize_s": [], "onnx_s": [], "resample_trim_s": []}
    for _ in range(repeats):
        for reply in REPLIES:
            clause = split_clauses(reply)[0]
            started = time.perf_counter()
            sentences = engine.phonemize(clause)
            phonemized = time.perf_counter()
            for phonemes in sentences:
                engine.phoneme_ids_to_audio(engine.phonemes_to_ids(phonemes))
            inferred = time.perf_counter()
            voice.synthesize_raw(clause)
            raw_done = time.perf_counter()
            voice.synthesize(clause)
            full_done = time.perf_counter()
            parts["phonemize_s"].append(phonemized - started)
            parts["onnx_s"].append(inferred - phonemized)
            # synthesize() is synthesize_raw() plus resampling and trimming: the difference is those.
            parts["resample_trim_s"].append(max(0.0, (full_done - raw_done) - (raw_done - inferred)))
    return {name: summary(values, 4) for name, values in parts.items()}


def bench_voice(label: str, voice: Voice, load: dict[str, float], repeats: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for _ in range(repeats):
        for reply in REPLIES:
            rows.append(asyncio.run(speak(voice, reply)))
        print(f"{label}: {len(rows)} replies", file=sys.stderr, flush=True)
    synth = sum(row["synthesis_s"] for row in rows)
    audio = sum(row["audio_s"] for row in rows)
    firsts = [row["first_audio_s"] for row in rows if row["first_audio_s"] is not None]
    overhead = [
        row["first_audio_s"] - row["first_clause_synthesis_s"]
        for row in rows
        if row["first_audio_s"] is not None
    ]
    return {
        "voice": voice.name,
        "load": {name: round(value, 3) for name, value in load.items()},
        "first_audio_s": summary(firsts, 3),
        "first_clause_synthesis_s": summary([row["first_clause_synthesis_s"] for row in rows], 3),
        "first_clause_audio_s": summary([row["first_clause_audio_s"] for row in rows], 3),
        "first_clause_words": summary([float(row["first_clause_words"]) for row in rows], 1),
        "stream_overhead_s": summary(overhead, 4),
        "rtf": round(synth / audio, 4) if audio else None,
        "rtf_per_reply": summary([row["rtf"] for row in rows if row["rtf"] is not None], 4),
        "stalls": sum(row["stalls"] for row in rows),
        "meets_target": bool(firsts) and percentile(firsts, 0.95) <= TARGET_FIRST_AUDIO_S,
        "replies": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/tts.json"))
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    breakdown: dict[str, dict[str, float]] = {}

    started = time.perf_counter()
    import piper  # noqa: F401  -- timed on its own: the module import is part of a cold start

    import_s = time.perf_counter() - started
    for threads in (1, 2):
        voice = PiperVoice(threads=threads)
        load = {"import_s": import_s, "load_s": voice.load_s, "warm_up_s": voice.warm_up_s}
        import_s = 0.0  # only the first load pays for the import
        results[f"piper_{threads}_thread{'s' if threads > 1 else ''}"] = bench_voice(
            f"piper {threads} thread(s)", voice, load, args.repeats
        )
        if threads == 1:
            breakdown = piper_breakdown(voice, 1)
    espeak = EspeakVoice()
    results["espeak_ng"] = bench_voice("espeak-ng", espeak, {"load_s": espeak.load_s}, args.repeats)

    piper_result = results["piper_1_thread"]
    limits = (
        f"Piper (1 thread): the first chunk waits for the whole first clause "
        f"(p50 {piper_result['first_clause_words']['p50']:.0f} words, "
        f"{piper_result['first_clause_audio_s']['p50']:.2f} s of audio); of that clause's time the ONNX "
        f"model takes p50 {breakdown['onnx_s']['p50'] * 1000:.0f} ms, phonemes "
        f"{breakdown['phonemize_s']['p50'] * 1000:.0f} ms, resampling and trimming "
        f"{breakdown['resample_trim_s']['p50'] * 1000:.0f} ms; the streamer adds "
        f"{piper_result['stream_overhead_s']['p50'] * 1000:.1f} ms (thread hand-off, chunking). So first "
        f"audio scales with the first clause's length times the RTF, which CPU contention raises "
        f"(load average {load_before[0]:.1f} on {os.cpu_count()} cores at the start). "
        f"espeak-ng: process start-up dominates."
    )
    result: dict[str, Any] = {
        "benchmark": "tts",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(load_before, numpy=np.__version__),
        "settings": {"repeats": args.repeats, "replies": len(REPLIES), "chunk_ms": 100},
        "target_first_audio_p95_s": TARGET_FIRST_AUDIO_S,
        "goal_first_audio_p95_s": GOAL_FIRST_AUDIO_S,
        "piper_first_clause_breakdown": breakdown,
        "limits": limits,
        "voices": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"{'voice':<18} {'load s':>7} {'first chunk s p50/p95/max':>26} {'1st clause s':>12} "
        f"{'RTF':>6} {'stalls':>6}"
    )
    for label, row in results.items():
        first = row["first_audio_s"]
        load_total = sum(row["load"].values())
        print(
            f"{label:<18} {load_total:>7.2f} {first['p50']:>10.3f} / {first['p95']:.3f} / {first['max']:.3f} "
            f"{row['first_clause_synthesis_s']['p50']:>12.3f} {row['rtf']:>6.3f} {row['stalls']:>6}"
        )
    print(limits)
    print(f"target: first chunk p95 <= {TARGET_FIRST_AUDIO_S} s; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
