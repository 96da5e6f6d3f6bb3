"""The recogniser's prompt built from the knowledge base's vocabulary (app.localmodel.asr).

The vocabulary tests count tokens with Whisper's own tokenizer file (no model is run); the last test
decodes espeak-ng speech with the real tiny.en model.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from app.localmodel.asr import (
    CORE_TERMS,
    HELPDESK_PROMPT,
    PROMPT_BUDGET_TOKENS,
    PROMPT_OPENING,
    PROMPT_TAIL,
    SpeechRecognizer,
    kb_vocabulary,
    vocabulary_prompt,
    whisper_token_counter,
)
from app.tools.kb import Article, load_articles
from app.tools.kb_sources import load_knowledge_base

COMPANY_ARTICLE = """\
# Okta Verify push notifications not arriving

If the Okta Verify app shows no push when you sign in to Workday, the phone has lost its link.

## Steps

1. Open Okta Verify on your phone and check that the account for Workday is listed.
2. Turn notifications for Okta Verify back on in the phone's settings.
3. Sign in to Workday again and approve the push in Okta Verify.
"""


@pytest.fixture(scope="module")
def count() -> Callable[[str], int]:
    return whisper_token_counter()


@cache
def shipped() -> tuple[Article, ...]:
    articles, problems = load_articles()
    assert not problems
    return tuple(articles)


def texts(articles: tuple[Article, ...], count: Callable[[str], int]) -> list[str]:
    return [term.text for term in kb_vocabulary(articles, count)]


def test_vocabulary_has_the_acronyms_names_and_jargon_of_the_articles(count: Callable[[str], int]) -> None:
    terms = {term.text: term for term in kb_vocabulary(shipped(), count)}
    for acronym in ("VPN", "MFA", "SSID"):  # "mfa" and "ssid" are lower-case keywords, spelt out
        assert terms[acronym].kind == "acronym"
    for name in ("Outlook", "Teams", "Zoom", "SharePoint", "Wi-Fi"):
        assert terms[name].kind == "name"
    for rare in ("phishing", "authenticator"):
        assert terms[rare].kind == "rare"
    # Words the model has a token for are left to it, as are function words and button labels.
    for common in ("printer", "password", "email", "the", "can't", "Report"):
        assert common not in terms


def test_the_most_used_terms_come_first(count: Callable[[str], int]) -> None:
    order = texts(shipped(), count)
    top = order[:8]
    for term in ("Wi-Fi", "Outlook", "VPN", "authenticator", "Teams"):
        assert term in top, (term, top)
    assert order.index("VPN") < order.index("dongle")


def test_prompt_is_one_spoken_sentence_within_the_budget(count: Callable[[str], int]) -> None:
    prompt = vocabulary_prompt(shipped(), count)
    assert prompt.startswith(PROMPT_OPENING + " ") and prompt.endswith(", " + PROMPT_TAIL)
    assert prompt.count(".") == 1
    assert count(" " + prompt) <= PROMPT_BUDGET_TOKENS
    # The words are all there: the core ones and the knowledge base's own, then the
    # everyday words (the authenticator among them) that keep general requests heard well.
    listed = _names(prompt)
    assert set(CORE_TERMS) <= listed and "phishing" in listed
    assert "authenticator" not in {name.lower() for name in listed}  # the everyday part has it
    # Within a dozen tokens of the static prompt it replaces (each costs the decoder about 0.3 ms).
    assert count(" " + prompt) <= count(" " + HELPDESK_PROMPT) + 12


def _names(prompt: str) -> set[str]:
    return set(prompt.removeprefix(PROMPT_OPENING + " ").removesuffix(", " + PROMPT_TAIL).split(", "))


@pytest.mark.parametrize("budget", [32, 40, 64, 100])
def test_every_budget_is_respected_and_a_larger_one_only_adds(
    count: Callable[[str], int], budget: int
) -> None:
    prompt = vocabulary_prompt(shipped(), count, budget, core=())
    assert count(" " + prompt) <= budget
    smaller = vocabulary_prompt(shipped(), count, budget - 8, core=())
    assert _names(smaller) <= _names(prompt) or smaller == f"{PROMPT_OPENING} {PROMPT_TAIL}"


def test_no_terms_fit_gives_the_everyday_sentence(count: Callable[[str], int]) -> None:
    plain = f"{PROMPT_OPENING} {PROMPT_TAIL}"
    assert vocabulary_prompt(shipped(), count, budget_tokens=3, core=()) == plain
    assert vocabulary_prompt((), count, core=()) == plain


def test_vocabulary_and_prompt_do_not_depend_on_the_order_of_articles(count: Callable[[str], int]) -> None:
    articles = list(shipped())
    expected = (kb_vocabulary(articles, count), vocabulary_prompt(articles, count))
    for seed in range(3):
        shuffled = articles[:]
        random.Random(seed).shuffle(shuffled)
        assert (kb_vocabulary(shuffled, count), vocabulary_prompt(shuffled, count)) == expected


def test_company_articles_bring_their_own_terms(count: Callable[[str], int], tmp_path: Path) -> None:
    (tmp_path / "okta.md").write_text(COMPANY_ARTICLE)
    articles, problems = load_knowledge_base([tmp_path])
    assert not problems and any(article.source for article in articles)
    terms = {term.text: term for term in kb_vocabulary(articles, count)}
    assert terms["Okta Verify"].kind == "name"
    # Only what the title, keywords and phrasings are about: Workday is named in the steps alone.
    assert "Workday" not in terms
    prompt = vocabulary_prompt(articles, count)
    assert "Okta Verify" in prompt
    assert count(" " + prompt) <= PROMPT_BUDGET_TOKENS
    assert "Okta" not in vocabulary_prompt(shipped(), count)


def test_title_case_titles_do_not_make_every_word_a_name(count: Callable[[str], int], tmp_path: Path) -> None:
    (tmp_path / "printer.md").write_text(
        "# How To Replace The Toner In The Printer\n\n1. Open the front door.\n2. Pull out the toner.\n"
    )
    articles, _ = load_knowledge_base([tmp_path], kb_dir=tmp_path / "none")
    terms = {term.text.lower(): term for term in kb_vocabulary(articles, count)}
    assert "replace" not in terms and "printer" not in terms
    assert terms["toner"].text == "toner" and terms["toner"].kind == "rare"


# -- with the model ----------------------------------------------------------------------------------

PHISHING = [
    ("I got a phishing email", "en-gb"),
    ("I got a phishing email", "en-us+f3"),
    ("I think I clicked a phishing link", "en-us"),
    ("I think I clicked a phishing link", "en-gb"),
]


def test_the_loaded_recognizer_counts_tokens_as_the_tokenizer_file_does(count: Callable[[str], int]) -> None:
    recognizer = SpeechRecognizer()  # loads on first use, as the server's loader uses it
    for text in (" VPN", " SharePoint", " Okta Verify", " phishing", "Wi-Fi", " naïve café", ""):
        assert recognizer.count_tokens(text) == count(text), text
    assert recognizer.loaded
    assert vocabulary_prompt(shipped(), recognizer.count_tokens) == vocabulary_prompt(shipped(), count)


def test_phishing_is_heard_with_the_knowledge_base_prompt(count: Callable[[str], int]) -> None:
    from app.audio.probe import espeak_speech
    from app.audio.resample import StreamResampler

    recognizer = SpeechRecognizer(prompt=vocabulary_prompt(shipped(), count))
    recognizer.load()
    rng = np.random.default_rng(0)
    heard = []
    for text, voice in PHISHING:
        try:
            samples, rate = espeak_speech(text, voice=voice)
        except FileNotFoundError as exc:
            pytest.skip(str(exc))
        speech = StreamResampler(rate, 16000, "HQ").process(samples, last=True)
        # As the server hands a turn over: padding before, end-of-turn silence after, a quiet hiss.
        turn = np.concatenate([np.zeros(4800, np.float32), speech, np.zeros(8000, np.float32)])
        turn = turn + rng.normal(0.0, 1e-3, len(turn)).astype(np.float32)
        heard.append(recognizer.transcribe(turn).text)
    # With the static prompt tiny.en wrote "fishy", "fish in" and "fishing" for three of these four.
    assert all("phishing" in re.findall(r"[a-z]+", text.lower()) for text in heard), heard
