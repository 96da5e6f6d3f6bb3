"""Whether the words of a turn so far read as a finished request, from the transcript alone (pure).

The end-of-turn model (:mod:`turn_end`) listens to intonation, which synthetic voices and flat
talkers do not carry well: it calls "the update is stuck at" finished and "nothing happens when I
press the power button" unfinished. Grammar catches what intonation misses. A turn reads as
unfinished when its last word cannot end an English sentence (an article, a preposition, a
conjunction, an auxiliary: "... because", "... stuck at", "my account is") or it opens a relative
clause ("an email from the bank that"), when it is only a noun phrase with no verb in it ("the
printer on the second floor", "my VPN"), when it is only a subordinate clause still waiting for its
main one ("when I open Outlook", "since yesterday"), or when the recogniser itself wrote it as going
on: Whisper's punctuation follows the voice, and it ends on a comma or an ellipsis where the
sentence did not ("my headset works in music,").

Wrong in both directions sometimes (a terse "VPN problems" has no verb and is finished): the cost
of "unfinished" is only the longer pause before the answer, so the rules lean that way.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

__all__ = ["AUDIO_VETO", "Judgement", "judge_turn", "unfinished_because"]


def _set(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Words after which an English sentence goes on. Not the particles that end phrasal verbs ("log
# in", "over and over", "back up") nor demonstratives ("repeat that").
_DANGLING: Final = _set(
    """
    a an the my your our their his her its every each no
    to of at by for with from into onto under than as via per between without within during
    against toward towards upon
    and or but so because although though while whereas if unless whether when where which
    who whom whose what why how then also plus nor yet
    is are was were am be been being have has had can could will would shall
    should may might must can't couldn't won't wouldn't isn't aren't wasn't weren't don't
    doesn't didn't haven't hasn't hadn't i i'm i've i'd i'll we you they he she it's there's
    just really very quite more most less least too not
    um uh er erm
    """
)
# A short reply that is a whole turn: "yes please", "thanks", "no", "done".
_REPLIES: Final = _set(
    """
    yes yeah yep no nope ok okay thanks thank please sure done right correct great fine bye
    goodbye hello hi hey perfect cool alright repeat stop cancel
    """
)
# Phrases that open a subordinate clause: alone, it waits for its main clause.
_SUBORDINATE: Final = (
    "when",
    "whenever",
    "if",
    "because",
    "although",
    "though",
    "while",
    "once",
    "every time",
    "each time",
    "as soon as",
)
# "the bank that", "an email that": a determiner and a noun, then "that", opens a relative clause
# ("... that looks like a scam"); after a verb "that" is an object and ends a sentence ("repeat that").
_DETERMINERS: Final = _set("a an the my your our their his her its this these those some any every each")
_NOUN_PHRASE_START: Final = _set(
    """
    a an the my your our their his her its this that these those some any every each since
    after before during in on at for from with about
    """
)
# Verbs that need an object: "I can't find" is not finished, "I can't print" is.
_TRANSITIVE: Final = _set(
    """
    find need want get check open reset access install use take give bring put send make tell buy
    remove restore recover share set keep change update delete
    """
)
_BEFORE_BASE_FORM: Final = _set(
    """
    to can can't cannot could couldn't will won't would wouldn't should i you we they please
    don't didn't doesn't need want let's
    """
)

# Verbs, so a request with none is known to be a bare noun phrase: auxiliaries and modals, the
# irregular past forms, and the lexical verbs helpdesk requests use, with -s, -ed and -ing forms
# made by rule below. A base form counts only where a verb can stand (see _verbs): "display" in
# "the meeting room display" is a noun.
_AUXILIARIES: Final = _set(
    """
    is are was were am be been being do does did have has had can could will would shall should
    may might must can't cannot couldn't won't wouldn't isn't aren't wasn't weren't don't doesn't
    didn't haven't hasn't hadn't i'm i've i'd i'll you're we're they're it's that's there's
    what's he's she's let's
    """
)
_VERB_STEMS: Final = _set(
    """
    access add allow appear ask beep block boot break bring buy buzz call change charge check click
    close come connect copy crash create delete die disappear display download drain drop eat enter
    expire fail fall find fix flicker forget freeze get give go hang happen hear help install jam
    join jump keep know lag launch leave let load lock log look lose make mean move need open order
    overheat play pop print press pull put reach read reboot receive record recover refuse reject
    remember remove renew reply report request reset respond restart restore ring run say scan see
    seem send set share show shut sign slow sound spill start stay stop switch sync take talk tell
    think try turn type unlock update upgrade use wait walk want work write
    """
)
_IRREGULAR: Final = _set(
    """
    broke broken bought came done drank drunk fell forgot forgotten froze frozen gave given gone
    went heard hung kept knew known left lost made meant ran said saw seen sent shown
    spilt stuck took taken told thought tried wrote written
    """
)


def _inflected(stem: str) -> set[str]:
    if stem.endswith("e"):
        return {stem + "s", stem + "d", stem[:-1] + "ing"}
    if stem.endswith("y") and stem[-2] not in "aeiou":
        return {stem[:-1] + "ies", stem[:-1] + "ied", stem + "ing"}
    if stem.endswith(("s", "sh", "ch", "x", "o")):
        return {stem + "es", stem + "ed", stem + "ing"}
    forms = {stem + "s", stem + "ed", stem + "ing"}
    if re.fullmatch(r"[^aeiou]*[aeiou][bdglmnprt]", stem):  # drop -> dropped, stop -> stopping
        forms |= {stem + stem[-1] + "ed", stem + stem[-1] + "ing"}
    return forms


_BASE_FORMS: Final = _VERB_STEMS
_FINITE: Final = frozenset(
    _AUXILIARIES | _IRREGULAR | {form for stem in _VERB_STEMS for form in _inflected(stem)}
)
_PRONOUNS: Final = _set("i you we they he she")
# Whisper ends a sentence it heard finish with a full stop or a question mark, and what it heard go
# on (the voice still up, a word cut off) with a comma, a dash or an ellipsis.
_HEARD_GO_ON: Final = "the recogniser heard it go on"
_GOES_ON: Final = (",", "...", "\u2026", "-", "\u2014", ";", ":")
_WORD: Final = re.compile(r"[a-z]+(?:'[a-z]+)?")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def _verbs(words: list[str]) -> int:
    """How many words stand as verbs: inflected forms anywhere, base forms at the start (an
    imperative) or after a modal or "to", and whatever word follows a subject pronoun ("I feel",
    "I accidentally clicked": the recogniser's words are not always in the lists)."""
    count = 0
    for index, word in enumerate(words):
        before = words[index - 1] if index else ""
        if (
            word in _FINITE
            or before in _PRONOUNS
            or (word in _BASE_FORMS and (index == 0 or before in _BEFORE_BASE_FORM))
        ):
            count += 1
    return count


def unfinished_because(text: str) -> str | None:
    """Why ``text`` reads as a request its speaker has not finished, or None when it reads as done.

    Empty text is None: with no words, only the audio can tell.
    """
    words = _words(text)
    if not words:
        return None
    if len(words) <= 3 and words[0] in _REPLIES:
        return None
    trailing = text.rstrip()
    for mark in _GOES_ON:
        if trailing.endswith(mark):
            return f"{_HEARD_GO_ON} ({mark!r})"
    last, before = words[-1], words[-2] if len(words) > 1 else ""
    if last in _DANGLING:
        return f"it ends on {last!r}"
    if last in _TRANSITIVE and before in _BEFORE_BASE_FORM:
        return f"{last!r} still needs its object"
    if last == "that" and len(words) >= 3 and words[-3] in _DETERMINERS:
        return f"a clause about {' '.join(words[-3:-1])!r} has only begun"
    verbs = _verbs(words)
    if not verbs and (words[0] in _NOUN_PHRASE_START or len(words) >= 4):
        return "it has no verb yet"
    joined = " ".join(words)
    for opener in _SUBORDINATE:
        if joined.startswith(opener + " ") and verbs < 2:
            return f"it is only a clause starting with {opener!r}"
    return None


# Below this, the end-of-turn model is sure enough the voice is mid-sentence to outweigh words that
# read as finished ("I need a new charger" said with the pitch still up before "because ...").
AUDIO_VETO: Final = 0.02


class Judgement(NamedTuple):
    complete: bool
    why: str  # for the log
    # Unfinished on evidence a longer pause may change: no words yet, the voice's veto, or the
    # recogniser's punctuation. Words that cannot end a sentence stay unfinished however long the
    # pause; a new decode of them that reads finished is more likely misheard than finished.
    unsure: bool = False


def judge_turn(text: str, probability: float | None) -> Judgement:
    """Whether a pause ends the turn, from its words so far and the end-of-turn model's
    ``probability`` (None: no model), with the reason for the log."""
    unfinished = unfinished_because(text)
    if unfinished is not None:
        unsure = unfinished.startswith(_HEARD_GO_ON)
        return Judgement(False, f"the words are unfinished: {unfinished}", unsure)
    if not _words(text):
        # Nothing the recogniser was sure of yet (a short "done" decoded as an unsure "And"): ending
        # now would drop the turn, while a longer pause gives a new decode more to go on.
        return Judgement(False, "no words yet", unsure=True)
    if probability is not None and probability < AUDIO_VETO:
        vetoed = f"the words read as finished but the voice says {probability:.2f}"
        return Judgement(False, vetoed, unsure=True)
    return Judgement(
        True, "the words read as finished" + ("" if probability is None else f" ({probability:.2f})")
    )
