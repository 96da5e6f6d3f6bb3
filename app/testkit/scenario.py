"""Scenario files for ``helpdesk-voice drive``: a spoken conversation written down as TOML.

Pure: text in, a :class:`Scenario` out, or a :class:`ScenarioError` that names the file, the turn
and the field. The format (see ``docs/testing.md``)::

    name = "VPN troubleshooting with a barge-in"
    voice = "espeak:en-us"      # default for spoken text: espeak:VOICE, or piper (the app's voice)
    speed = 160                 # espeak-ng words a minute, or Piper's length scale (1.0)

    [[turn]]
    say = "My VPN |600| keeps dropping"   # |MS| is a pause inside the sentence (espeak-ng)
    expect = { heard = ["VPN"], answer_any = ["VPN", "connection"], first_sound_ms = 2000 }

    [[turn]]
    say = "Stop, I need to file a ticket"
    when = "barge_in"           # or "after_answer" (the default), or "at" (with at_ms)
    after_ms = 1500             # barge_in: this long after the previous answer began to sound;
                                # after_answer: this long after it ended
    expect = { halt_ms = 500 }
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

When: TypeAlias = Literal["after_answer", "barge_in", "at"]
WHENS: tuple[When, ...] = ("after_answer", "barge_in", "at")
PAUSE_MARK = re.compile(r"\s*\|(\d+)\|\s*")
MAX_PAUSE_MS = 5000
DEFAULT_TIMEOUT_S = 45.0


class ScenarioError(ValueError):
    """A scenario file that cannot be run, with where and why in one line."""


@dataclass(frozen=True)
class Expect:
    """What must hold for one turn; None (or empty) is not checked."""

    heard: tuple[str, ...] = ()  # each of these words or phrases is in what the app heard
    answer: tuple[str, ...] = ()  # each is in the answer as the user heard it
    answer_any: tuple[str, ...] = ()  # at least one is
    tools: tuple[str, ...] = ()  # each tool was called and finished
    ticket: bool | None = None  # a ticket was (True) or was not (False) created
    first_sound_ms: float | None = None  # the answer sounded within this long of the end of speech
    halt_ms: float | None = None  # the speaker went quiet within this long of the user's onset
    answered: bool = True  # an answer sounded at all
    no_cut_off: bool = True  # the answer did not start before the user finished
    no_self_interruption: bool = True  # the answer was not cut or paused while the user was quiet

    def names(self) -> list[str]:
        """The expectations that are checked, in report order."""
        checked = [
            ("heard", bool(self.heard)),
            ("answer", bool(self.answer)),
            ("answer_any", bool(self.answer_any)),
            ("tools", bool(self.tools)),
            ("ticket", self.ticket is not None),
            ("answered", True),
            ("no_cut_off", self.no_cut_off),
            ("first_sound_ms", self.first_sound_ms is not None),
            ("halt_ms", self.halt_ms is not None),
            ("no_self_interruption", self.no_self_interruption),
        ]
        return [name for name, on in checked if on]


@dataclass(frozen=True)
class Turn:
    number: int  # from 1
    say: str | None  # the text as written (pause marks and all), or None for a recording
    audio: Path | None = None  # a WAV file to play instead of speech
    voice: str = "espeak:en-us"  # espeak:VOICE or piper
    speed: float = 0.0  # espeak-ng words a minute or Piper's length scale; 0: the voice's own
    when: When = "after_answer"
    # after_answer: this long after the answer ended (the user's thinking time); barge_in: after
    # the previous answer's first sound; at: since the scenario began.
    after_ms: float = 0.0
    expect: Expect = field(default_factory=Expect)
    timeout_s: float = DEFAULT_TIMEOUT_S  # how long to wait for the answer

    @property
    def plain_text(self) -> str | None:
        """What is said, without pause marks."""
        return None if self.say is None else PAUSE_MARK.sub(" ", self.say).strip()

    @property
    def pauses_ms(self) -> tuple[int, ...]:
        return tuple(int(ms) for ms in PAUSE_MARK.findall(self.say or ""))

    @property
    def label(self) -> str:
        what = self.plain_text if self.say is not None else f"[{self.audio.name if self.audio else ''}]"
        return f"turn {self.number}: {what}"


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    turns: tuple[Turn, ...]
    description: str = ""
    settings: dict[str, str] = field(default_factory=dict)  # HELPDESK_VOICE_* for a started app


_TOP_KEYS = {"name", "description", "voice", "speed", "timeout_s", "settings", "turn"}
_TURN_KEYS = {"say", "audio", "voice", "speed", "when", "after_ms", "at_ms", "expect", "timeout_s"}
_EXPECT_KEYS = {
    "heard",
    "answer",
    "answer_any",
    "tools",
    "ticket",
    "first_sound_ms",
    "halt_ms",
    "answered",
    "no_cut_off",
    "no_self_interruption",
}


def load_scenario(path: Path) -> Scenario:
    """Read and check ``path``; relative audio paths are relative to the scenario file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such scenario file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read it ({exc})") from None
    return parse_scenario(text, path)


def parse_scenario(text: str, path: Path) -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    where = str(path)
    _no_unknown(data, _TOP_KEYS, where)
    voice = _text(data, "voice", where, "espeak:en-us")
    _check_voice(voice, where)
    speed = _number(data, "speed", where, 0.0)
    timeout = _number(data, "timeout_s", where, DEFAULT_TIMEOUT_S)
    if timeout <= 0:
        raise ScenarioError(f"{where}: timeout_s must be more than 0")
    settings = data.get("settings", {})
    if not isinstance(settings, dict) or not all(
        isinstance(v, str | int | float | bool) for v in settings.values()
    ):
        raise ScenarioError(
            f"{where}: settings is a table of names and values, like turn_detection = 'server_vad'"
        )
    raw_turns = data.get("turn")
    if not isinstance(raw_turns, list) or not raw_turns:
        raise ScenarioError(f'{where}: no turns: add at least one [[turn]] with say = "..."')
    turns = tuple(_turn(raw, number, path, voice, speed, timeout) for number, raw in enumerate(raw_turns, 1))
    if turns[0].when == "barge_in":
        raise ScenarioError(f"{where}: turn 1: when = 'barge_in' needs an answer before it to talk over")
    name = _text(data, "name", where, path.stem)
    return Scenario(
        name=name,
        path=path,
        turns=turns,
        description=_text(data, "description", where, ""),
        settings={str(key): _setting_text(value) for key, value in settings.items()},
    )


def _turn(raw: object, number: int, path: Path, voice: str, speed: float, timeout: float) -> Turn:
    where = f"{path}: turn {number}"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: a turn is a table ([[turn]])")
    _no_unknown(raw, _TURN_KEYS, where)
    say = raw.get("say")
    audio = raw.get("audio")
    if (say is None) == (audio is None):
        raise ScenarioError(f'{where}: give either say = "text" or audio = "file.wav", not both or neither')
    if say is not None and (not isinstance(say, str) or not PAUSE_MARK.sub(" ", say).strip()):
        raise ScenarioError(f"{where}: say is the text to speak, and it is empty")
    audio_path: Path | None = None
    if audio is not None:
        if not isinstance(audio, str) or not audio:
            raise ScenarioError(f"{where}: audio is the path of a WAV file")
        audio_path = (path.parent / audio) if not Path(audio).is_absolute() else Path(audio)
        if not audio_path.is_file():
            raise ScenarioError(f"{where}: no audio file at {audio_path}")
    turn_voice = _text(raw, "voice", where, voice)
    _check_voice(turn_voice, where)
    pauses = [int(ms) for ms in PAUSE_MARK.findall(say or "")]
    if any(ms > MAX_PAUSE_MS for ms in pauses):
        raise ScenarioError(f"{where}: a pause inside a sentence is at most {MAX_PAUSE_MS} ms")
    if pauses and not turn_voice.startswith("espeak:"):
        raise ScenarioError(f"{where}: only espeak-ng voices render a |MS| pause inside a sentence")
    when = _text(raw, "when", where, "after_answer")
    if when not in WHENS:
        raise ScenarioError(f"{where}: when is one of {', '.join(WHENS)}, not {when!r}")
    if when == "barge_in":
        after = _number(raw, "after_ms", where, 1000.0)
        if "at_ms" in raw:
            raise ScenarioError(f"{where}: at_ms goes with when = 'at'; a barge-in uses after_ms")
    elif when == "at":
        if "at_ms" not in raw:
            raise ScenarioError(f"{where}: when = 'at' needs at_ms, the time since the scenario began")
        after = _number(raw, "at_ms", where, 0.0)
    else:
        if "at_ms" in raw:
            raise ScenarioError(f"{where}: at_ms needs when = 'at'")
        after = _number(raw, "after_ms", where, 0.0)
    if after < 0:
        raise ScenarioError(f"{where}: times are not negative")
    turn_timeout = _number(raw, "timeout_s", where, timeout)
    if turn_timeout <= 0:
        raise ScenarioError(f"{where}: timeout_s must be more than 0")
    return Turn(
        number=number,
        say=say,
        audio=audio_path,
        voice=turn_voice,
        speed=_number(raw, "speed", where, speed),
        when=when,  # checked against WHENS above
        after_ms=after,
        expect=_expect(raw.get("expect", {}), f"{where}: expect", when),
        timeout_s=turn_timeout,
    )


def _expect(raw: object, where: str, when: str) -> Expect:
    if not isinstance(raw, dict):
        raise ScenarioError(f'{where}: expect is a table, like expect = {{ answer = ["password"] }}')
    _no_unknown(raw, _EXPECT_KEYS, where)
    limits = {key: _number(raw, key, where, -1.0) for key in ("first_sound_ms", "halt_ms")}
    for key, value in limits.items():
        if key in raw and value <= 0:
            raise ScenarioError(f"{where}: {key} is a time in ms, more than 0")
    if "halt_ms" in raw and when != "barge_in":
        raise ScenarioError(f"{where}: halt_ms is for a turn that talks over the answer (when = 'barge_in')")
    ticket = raw.get("ticket")
    if ticket is not None and not isinstance(ticket, bool):
        raise ScenarioError(f"{where}: ticket is true or false")
    return Expect(
        heard=_words(raw, "heard", where),
        answer=_words(raw, "answer", where),
        answer_any=_words(raw, "answer_any", where),
        tools=_words(raw, "tools", where),
        ticket=ticket,
        first_sound_ms=limits["first_sound_ms"] if "first_sound_ms" in raw else None,
        halt_ms=limits["halt_ms"] if "halt_ms" in raw else None,
        answered=_flag(raw, "answered", where, True),
        no_cut_off=_flag(raw, "no_cut_off", where, True),
        no_self_interruption=_flag(raw, "no_self_interruption", where, True),
    )


def _no_unknown(table: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ScenarioError(
            f"{where}: unknown {'keys' if len(unknown) > 1 else 'key'} {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )


def _text(table: dict[str, Any], key: str, where: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise ScenarioError(f"{where}: {key} is text, not {value!r}")
    return value


def _number(table: dict[str, Any], key: str, where: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScenarioError(f"{where}: {key} is a number, not {value!r}")
    return float(value)


def _flag(table: dict[str, Any], key: str, where: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ScenarioError(f"{where}: {key} is true or false, not {value!r}")
    return value


def _words(table: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(word, str) and word.strip() for word in value):
        raise ScenarioError(f'{where}: {key} is a list of words or phrases, like {key} = ["password"]')
    return tuple(word.strip() for word in value)


def _check_voice(voice: str, where: str) -> None:
    if voice != "piper" and not (voice.startswith("espeak:") and len(voice) > len("espeak:")):
        raise ScenarioError(f"{where}: voice is espeak:VOICE (like espeak:en-us) or piper, not {voice!r}")


def _setting_text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
