"""What the end-of-turn judge is given at a pause, and what it makes of it, request by request.

``bench/turns.py`` measures turn-taking through the whole app; this one takes its judge apart,
offline, on the same 60 requests (``bench/data/turn_set.toml``). Each request is rendered as the
driver speaks it and cut where the judge first looks at it: at the first pause inside the sentence
(a paused request) or at its end (a finished one), with 70 ms of silence after (``semantic_vad``'s
look). Then, as the embedded server judges a pause:

- the words the recogniser hears (Whisper tiny.en with the server's prompt), Smart Turn's
  probability, and ``judge_turn``'s verdict on both;
- the verdict on the words as written (the text up to the pause), with no voice: what the rules
  would decide if every word were heard right.

A paused request judged complete is answered into its pause (a cut-off); a finished one judged
unfinished waits for the fallback pause (the slow tail of the time to first sound). The two
verdicts side by side show how much of each comes from hearing and how much from the rules.

``--model DIR`` judges with another CTranslate2 Whisper model (a multilingual one too): its
directory needs ``model.bin``, ``config.json``, ``tokenizer.json`` and the vocabulary.

    python -m bench.turn_words [--model DIR] [--out bench/results/turn_words.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.stats import machine
from bench.turn_set import load_set, render

LOOK_S = 0.07  # semantic_vad's first look at a pause (app/localmodel/session.py)
PAUSE_FRAMES = 25  # 250 ms below the speech level inside a sentence: the inserted pause
FRAME_S = 0.01
SPEECH_DBFS = -45.0
LEAD_S = 0.25  # silence before the speech, as the server's prefix padding gives the decoder


def first_cut(samples: np.ndarray, rate: int, paused: bool) -> tuple[int, int]:
    """Where the speech starts, and where the judge first looks: its first inner pause or its end."""
    frame = int(rate * FRAME_S)
    count = len(samples) // frame
    levels = np.sqrt(np.mean(samples[: count * frame].reshape(count, frame) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(levels > 10 ** (SPEECH_DBFS / 20))
    first, last = int(loud[0]), int(loud[-1])
    end = last + 1
    if paused:
        quiet = 0
        for index in range(first, last):
            quiet = 0 if levels[index] > 10 ** (SPEECH_DBFS / 20) else quiet + 1
            if quiet >= PAUSE_FRAMES:
                end = index - quiet + 1
                break
    return first * frame, end * frame


def written_before_pause(written: str) -> str:
    """The request as written, up to its first pause mark (all of it when it has none)."""
    return written.split("|", 1)[0].strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="another CTranslate2 Whisper model")
    parser.add_argument("--out", type=Path, default=Path("bench/results/turn_words.json"))
    args = parser.parse_args(argv)

    import soxr

    from app.localmodel.asr import SAMPLE_RATE, SpeechRecognizer
    from app.localmodel.turn_end import TurnEndModel
    from app.localmodel.turn_text import judge_turn

    load_before = os.getloadavg()
    recognizer = SpeechRecognizer(args.model)
    recognizer.load()
    voice = TurnEndModel()
    rows: list[dict[str, Any]] = []
    decode_ms: list[float] = []
    for request, written in load_set():
        samples, rate = render(request, written)
        audio = soxr.resample(samples, rate, SAMPLE_RATE).astype(np.float32)
        start, end = first_cut(audio, SAMPLE_RATE, request.paused)
        heard_audio = np.concatenate(
            [
                np.zeros(int(LEAD_S * SAMPLE_RATE), np.float32),
                audio[start:end],
                np.zeros(int(LOOK_S * SAMPLE_RATE), np.float32),
            ]
        )
        began = time.perf_counter()
        heard = recognizer.transcribe(heard_audio)
        decode_ms.append((time.perf_counter() - began) * 1000.0)
        probability = voice.probability(heard_audio)
        verdict = judge_turn(heard.text, probability)
        words = written_before_pause(written)
        by_words = judge_turn(words, None)
        rows.append(
            {
                "request": request.text,
                "voice": request.voice,
                "paused": request.paused,
                "before_the_pause": words,
                "heard": heard.text,
                "avg_logprob": round(heard.avg_logprob, 2),
                "smart_turn": round(probability, 2),
                "judged_complete": verdict.complete,
                "why": verdict.why,
                "written_judged_complete": by_words.complete,
            }
        )
        mark = "WRONG" if verdict.complete == request.paused else "     "
        print(f"{mark} {words!r}: heard {heard.text!r}, {verdict.why}", file=sys.stderr)

    result = summarise(rows)
    result.update(
        benchmark="turn_words",
        when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        machine=machine(load_before),
        model=str(args.model) if args.model else "Whisper tiny.en (the server's)",
        decode_ms_median=round(float(np.median(decode_ms)), 1),
        rows=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name in ("as_heard", "as_written"):
        part = result[name]
        print(
            f"{name.replace('_', ' ')}: {part['paused_judged_complete']} of {result['paused']} paused "
            f"requests judged complete (cut off), {part['finished_judged_unfinished']} of "
            f"{result['finished']} finished ones judged unfinished (wait for the fallback)"
        )
    print(f"-> {args.out}")
    return 0


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of the two mistakes, on the words as heard (with the voice) and as written."""
    paused = [r for r in rows if r["paused"]]
    finished = [r for r in rows if not r["paused"]]
    return {
        "paused": len(paused),
        "finished": len(finished),
        "as_heard": {
            "paused_judged_complete": sum(r["judged_complete"] for r in paused),
            "finished_judged_unfinished": sum(not r["judged_complete"] for r in finished),
        },
        "as_written": {
            "paused_judged_complete": sum(r["written_judged_complete"] for r in paused),
            "finished_judged_unfinished": sum(not r["written_judged_complete"] for r in finished),
        },
    }


if __name__ == "__main__":
    raise SystemExit(main())
