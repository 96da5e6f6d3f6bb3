"""The helpdesk knowledge base: article files, a keyword index, and the ``search_knowledge_base`` tool.

Articles live in ``assets/kb/<slug>.md``: TOML front matter between ``+++`` lines, then a Markdown
body with a numbered ``## Steps`` list and an ``## Escalate when`` paragraph. The model speaks the
steps, so the loader keeps them as plain sentences. The company's own articles, in looser formats,
are loaded by :mod:`app.tools.kb_sources` into the same :class:`Article`.

Retrieval is BM25F over the article fields with field weights (title, keywords and the spoken
phrasings count most). Queries come from a voice model summarising what the user said, so the
tokenizer is forgiving: lowercase, apostrophes and in-word hyphens dropped ("can't" -> "cant",
"wi-fi" -> "wifi"), a small stop-word list, and light suffix stripping so "dropping", "drops" and
"dropped" meet. Scores are normalised to 0..1 against what the query could score at best, so a
score means the same across queries and a threshold can tell "no article" from "weak article".
"""

from __future__ import annotations

import asyncio
import math
import re
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from app.paths import assets_dir
from app.tools.registry import Tool
from app.tools.tickets import CATEGORIES

__all__ = [
    "FIELD_WEIGHTS",
    "MIN_SCORE",
    "Article",
    "KeywordIndex",
    "default_kb_dir",
    "load_articles",
    "parse_article",
    "search_knowledge_base_tool",
    "tokenize",
]

_SLUG: Final = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_FENCE: Final = "+++"
_HEADING: Final = re.compile(r"^##\s+(.+?)\s*#*\s*$")
_NUMBERED: Final = re.compile(r"^\s*\d+[.)]\s+(.*)$")
_MARKUP: Final = re.compile(r"\*\*|__|`")

# BM25F: how much an occurrence in each field counts, and its own length normalisation.
FIELD_WEIGHTS: Final[Mapping[str, float]] = {
    "title": 3.0,
    "keywords": 3.0,
    "phrasings": 2.0,
    "summary": 1.5,
    "steps": 0.5,  # steps mention many things in passing (Wi-Fi, Outlook, passwords)
}
_FIELD_B: Final[Mapping[str, float]] = {
    "title": 0.5,
    "keywords": 0.5,
    "phrasings": 0.75,
    "summary": 0.75,
    "steps": 0.75,
}
_TOPIC_FIELDS: Final = ("title", "keywords", "phrasings", "summary")
_K1: Final = 2.0  # a little slower saturation than usual: a term repeated across fields counts
# Below this normalised score a hit rests on one common word and would mislead the model.
MIN_SCORE: Final = 0.12

# Function words and conversational filler; negations go too, as nearly every complaint has one.
_STOP_WORDS_TEXT: Final = """
    a about after again all also am an and any are as at be been before being but by can cant could
    did didnt do does doesnt dont for from get gets getting got had has have having he her here hi
    hello him his how i id im ive if in into is isnt it its itll just keep keeps know like me might
    more my myself need no not now of off on once one only or our out over please really same she
    should so some still than that thats the their them then there these they this those through to
    too trying try up us very want was wasnt way we well were what when where which while who why
    will with wont would yes yet you your youre every few something anything someone anyone lot bit today
"""
_STOP_WORDS: Final = frozenset(_STOP_WORDS_TEXT.split())
_APOSTROPHE: Final = re.compile(r"['\u2019]")
_INNER_HYPHEN: Final = re.compile(r"(?<=[a-z0-9])-(?=[a-z0-9])")
_WORD: Final = re.compile(r"[a-z0-9]+")
_DOUBLE_END: Final = re.compile(r"([b-df-hj-km-np-rtv-z])\1$")  # doubled consonant, except l, s, z


def _stem(word: str) -> str:
    """Light suffix stripping: enough to join plural, -ing and -ed forms, cheap and predictable."""
    if len(word) <= 3 or word.isdigit():
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("ing") and len(word) >= 6:
        word = word[:-3]
        word = word[:-1] if _DOUBLE_END.search(word) else word
    elif word.endswith("ed") and len(word) >= 6:
        word = word[:-2]
        word = word[:-1] if _DOUBLE_END.search(word) else word
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    # "delete", "deleted" and "deleting" all end up as "delet".
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Index terms of ``text``: lowercased, stop words removed, lightly stemmed."""
    text = _INNER_HYPHEN.sub("", _APOSTROPHE.sub("", text.lower()))
    return [_stem(word) for word in _WORD.findall(text) if word not in _STOP_WORDS]


# ---------------------------------------------------------------------------------------------------
# Articles
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Article:
    id: str
    title: str
    summary: str
    keywords: tuple[str, ...]
    phrasings: tuple[str, ...]
    category: str
    steps: tuple[str, ...]
    escalate: str
    path: Path
    # Where a company article can be read (its file:// URL or the page it was published at); the
    # shipped demo articles have none. ``source`` names the set it came from ("" the shipped one, else
    # the folder), so their embeddings can be cached and refreshed set by set.
    link: str = ""
    source: str = ""


def default_kb_dir() -> Path:
    return assets_dir() / "kb"


def _plain(text: str) -> str:
    # The model reads these aloud: Markdown emphasis would only be noise.
    return " ".join(_MARKUP.sub("", text).split())


def _sections(body: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in body.splitlines():
        heading = _HEADING.match(line)
        if heading:
            name = heading.group(1).strip().lower()
            if name in sections:
                raise ValueError(f"section '## {heading.group(1)}' appears twice")
            current = sections[name] = []
        elif current is not None:
            current.append(line)
    return sections


def _steps(lines: Sequence[str]) -> list[str]:
    steps: list[str] = []
    for line in lines:
        numbered = _NUMBERED.match(line)
        if numbered:
            steps.append(numbered.group(1))
        elif line.strip() and steps and line[:1].isspace():
            steps[-1] += " " + line.strip()  # an indented continuation of the previous step
        elif line.strip():
            raise ValueError(f"'## Steps' holds a line that is not a numbered step: {line.strip()[:60]!r}")
    return [_plain(step) for step in steps if _plain(step)]


def _string_list(meta: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = meta.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise ValueError(f"'{key}' must be a non-empty list of strings")
    items = tuple(" ".join(item.split()) for item in value)
    if not all(items):
        raise ValueError(f"'{key}' has an empty entry")
    return items


def _string(meta: Mapping[str, Any], key: str) -> str:
    value = meta.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{key}' must be a non-empty string")
    return " ".join(value.split())


def parse_article(text: str, path: Path) -> Article:
    """One article from its file text; ValueError says what is malformed."""
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != _FENCE:
        raise ValueError("does not start with a '+++' front matter line")
    try:
        end = next(index for index in range(1, len(lines)) if lines[index].strip() == _FENCE)
    except StopIteration:
        raise ValueError("front matter is not closed with a '+++' line") from None
    try:
        meta = tomllib.loads("\n".join(lines[1:end]))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"front matter is not valid TOML: {exc}") from None
    article_id = _string(meta, "id")
    if not _SLUG.fullmatch(article_id):
        raise ValueError(f"id {article_id!r} is not a slug (lowercase words joined by '-')")
    if article_id != path.stem:
        raise ValueError(f"id {article_id!r} does not match the file name {path.name!r}")
    category = _string(meta, "category")
    if category not in CATEGORIES:
        raise ValueError(f"category {category!r} is not one of {', '.join(CATEGORIES)}")
    sections = _sections("\n".join(lines[end + 1 :]))
    if "steps" not in sections:
        raise ValueError("has no '## Steps' section")
    steps = _steps(sections["steps"])
    if not steps:
        raise ValueError("'## Steps' has no numbered steps")
    escalate = _plain(" ".join(sections.get("escalate when", [])))
    if not escalate:
        raise ValueError("has no '## Escalate when' text")
    return Article(
        id=article_id,
        title=_string(meta, "title"),
        summary=_string(meta, "summary"),
        keywords=_string_list(meta, "keywords"),
        phrasings=_string_list(meta, "phrasings"),
        category=category,
        steps=tuple(steps),
        escalate=escalate,
        path=path,
    )


def load_articles(directory: Path | None = None) -> tuple[list[Article], list[str]]:
    """Every well-formed ``*.md`` article in ``directory``, by id, and a problem line per bad file."""
    directory = Path(directory) if directory is not None else default_kb_dir()
    try:
        paths = sorted(path for path in directory.iterdir() if path.suffix == ".md" and path.is_file())
    except OSError as exc:
        return [], [f"{directory}: cannot read the knowledge base folder: {exc}"]
    articles: list[Article] = []
    problems: list[str] = []
    for path in paths:
        if path.name.lower() == "readme.md":
            continue
        try:
            articles.append(parse_article(path.read_text(encoding="utf-8"), path))
        except (OSError, ValueError) as exc:  # ValueError covers bad UTF-8
            problems.append(f"{path.name}: {exc}")
    return articles, problems


# ---------------------------------------------------------------------------------------------------
# Keyword index
# ---------------------------------------------------------------------------------------------------


def _fields(article: Article) -> dict[str, list[str]]:
    return {
        "title": tokenize(article.title),
        "keywords": tokenize(" ".join(article.keywords)),
        "phrasings": tokenize(" ".join(article.phrasings)),
        "summary": tokenize(article.summary),
        "steps": tokenize(" ".join(article.steps)),
    }


class KeywordIndex:
    """BM25F over the articles' fields, with scores normalised to 0..1."""

    def __init__(self, articles: Iterable[Article]) -> None:
        self._articles = list(articles)
        self._counts: list[dict[str, Counter[str]]] = []
        self._lengths: list[dict[str, int]] = []
        topic_frequency: Counter[str] = Counter()
        any_frequency: Counter[str] = Counter()
        for article in self._articles:
            fields = _fields(article)
            self._counts.append({name: Counter(tokens) for name, tokens in fields.items()})
            self._lengths.append({name: len(tokens) for name, tokens in fields.items()})
            any_frequency.update({term for tokens in fields.values() for term in tokens})
            topic_frequency.update({term for name in _TOPIC_FIELDS for term in fields[name]})
        count = len(self._articles)
        self._average = {
            name: max(1.0, sum(lengths[name] for lengths in self._lengths) / count) if count else 1.0
            for name in FIELD_WEIGHTS
        }
        # Rarity is judged on what articles are about, not on what their steps mention in passing:
        # steps say "Wi-Fi" or "password" in many articles, which must not make those words weak.
        self._idf = {term: self._idf_of(topic_frequency[term] or df) for term, df in any_frequency.items()}
        self._unseen_idf = self._idf_of(0)

    def _idf_of(self, document_frequency: int) -> float:
        count = len(self._articles)
        return math.log(1.0 + (count - document_frequency + 0.5) / (document_frequency + 0.5))

    @property
    def articles(self) -> list[Article]:
        return list(self._articles)

    def __len__(self) -> int:
        return len(self._articles)

    def _score(self, index: int, terms: Counter[str]) -> float:
        counts, lengths = self._counts[index], self._lengths[index]
        total = 0.0
        for term, repeats in terms.items():
            idf = self._idf.get(term)
            if idf is None:
                continue
            weighted = 0.0
            for name, weight in FIELD_WEIGHTS.items():
                frequency = counts[name][term]
                if frequency:
                    b = _FIELD_B[name]
                    weighted += weight * frequency / (1.0 - b + b * lengths[name] / self._average[name])
            total += repeats * idf * weighted / (_K1 + weighted)
        return total

    def search(self, query: str, limit: int = 3) -> list[tuple[Article, float]]:
        """The best ``limit`` articles with a score above zero, best first; scores are in 0..1.

        The normaliser is the score of an article matching every query term with unbounded
        frequency; a query word no article uses counts there too, so off-topic words lower the score.
        """
        terms = Counter(tokenize(query))
        if not terms or limit < 1:
            return []
        best = sum(repeats * self._idf.get(term, self._unseen_idf) for term, repeats in terms.items())
        scored = [(self._score(index, terms) / best, index) for index in range(len(self._articles))]
        ranked = sorted(
            ((score, index) for score, index in scored if score > 0.0),
            key=lambda pair: (-pair[0], self._articles[pair[1]].id),  # ties in a stable, readable order
        )
        return [(self._articles[index], min(1.0, score)) for score, index in ranked[:limit]]


# ---------------------------------------------------------------------------------------------------
# The tool
# ---------------------------------------------------------------------------------------------------

MAX_LIMIT: Final = 5

SEARCH_PARAMETERS: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "query": {
            "type": "string",
            "description": "The user's problem in a few plain words, e.g. 'vpn keeps disconnecting'.",
            "minLength": 1,
            "maxLength": 500,
        },
        "limit": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_LIMIT,
            "default": 3,
            "description": "How many articles to return.",
        },
    },
    "required": ["query"],
    "additionalProperties": False,
}


def _result(article: Article, score: float) -> dict[str, Any]:
    result: dict[str, Any] = {
        "id": article.id,
        "title": article.title,
        "summary": article.summary,
        "steps": list(article.steps),
        "escalate": article.escalate,
        "score": round(score, 2),
    }
    if article.link:
        result["link"] = article.link
    return result


def _found(hits: Sequence[tuple[Article, float]]) -> str:
    """The articles found, by title and link: the transcript's tool line, so the user can find them
    again after the call."""
    cited = [f"{article.title} ({article.link})" if article.link else article.title for article, _ in hits]
    return "Found: " + "; ".join(cited)


def search_knowledge_base_tool(
    index: KeywordIndex | Callable[[], KeywordIndex], *, min_score: float = MIN_SCORE
) -> Tool:
    """The ``search_knowledge_base`` tool over ``index``, or over what ``index()`` returns at each call.

    A callable is how the company's folders stay current: it may look at the folders and re-read
    what changed, so it runs in a worker thread rather than on the event loop.
    """

    async def handler(arguments: dict[str, Any]) -> dict[str, Any]:
        query = arguments["query"]
        current = index if isinstance(index, KeywordIndex) else await asyncio.to_thread(index)
        # Searching a few hundred articles takes about a millisecond: no thread needed for that.
        hits = [(a, s) for a, s in current.search(query, int(arguments.get("limit", 3))) if s >= min_score]
        if not hits:
            return {
                "results": [],
                "message": f"No article matches {query!r}. Ask the user for more detail, or offer a ticket.",
            }
        return {"results": [_result(article, score) for article, score in hits], "message": _found(hits)}

    return Tool(
        name="search_knowledge_base",
        description=(
            "Search the company IT helpdesk knowledge base for step-by-step fixes. Call it before "
            "troubleshooting from memory. Walk the user through the steps one at a time, and follow the "
            "article's escalation advice. When a result has a link, name the article's title so the "
            "user can find it again."
        ),
        parameters=SEARCH_PARAMETERS,
        handler=handler,
    )
