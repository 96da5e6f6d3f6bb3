"""Article retrieval for spoken requests: accuracy on tests/data/kb_requests.jsonl, and fallbacks.

The requests file holds paraphrases written before any tuning, each labelled with the article it
should reach (or null for requests no article covers), and split in two: ``dev`` (used to choose the
keyword weight and the thresholds in app/localmodel/retrieval.py) and ``heldout`` (never used for
tuning). Both figures are checked and printed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from app.localmodel.embed import EncoderError, MiniLMEncoder
from app.localmodel.retrieval import (
    EMBEDDING_THRESHOLDS,
    KEYWORD_THRESHOLDS,
    ArticleRetriever,
    Decision,
    Match,
    article_texts,
    judge,
    load_retriever,
)
from app.tools.kb import Article, KeywordIndex, default_kb_dir, load_articles

DATA = Path(__file__).parent / "data" / "kb_requests.jsonl"
ARTICLES, PROBLEMS = load_articles(default_kb_dir())
BY_ID = {article.id: article for article in ARTICLES}
ROWS: list[dict[str, str | None]] = [
    json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()
]


def _report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():  # figures worth seeing in every run, not only with -s
        print(f"\n{line}")


@pytest.fixture(scope="module")
def encoder() -> Iterator[MiniLMEncoder]:
    try:
        yield MiniLMEncoder()
    except EncoderError as exc:
        pytest.skip(f"the MiniLM model is not available: {exc}")


@pytest.fixture(scope="module")
def retriever(encoder: MiniLMEncoder) -> ArticleRetriever:
    built = ArticleRetriever(ARTICLES, encoder, KeywordIndex(ARTICLES))
    assert built.mode == "embedding"
    return built


@pytest.fixture(scope="module")
def keyword_retriever() -> ArticleRetriever:
    return ArticleRetriever(ARTICLES, None, KeywordIndex(ARTICLES))


@dataclass(frozen=True)
class Score:
    """How one retriever did on one split."""

    correct: int
    labelled: int
    nulls_rejected: int
    nulls: int
    confident_wrong: int
    misses: tuple[str, ...]

    @property
    def accuracy(self) -> float:
        return self.correct / self.labelled

    def line(self, name: str) -> str:
        return (
            f"{name}: top-1 {self.correct}/{self.labelled} = {self.accuracy:.1%}, "
            f"null requests judged none {self.nulls_rejected}/{self.nulls}, confident but wrong "
            f"{self.confident_wrong}"
        )


@dataclass(frozen=True)
class Outcome:
    """What a retriever made of one request."""

    row: dict[str, str | None]
    top: str | None
    kind: str


def _outcomes(retriever: ArticleRetriever) -> list[Outcome]:
    outcomes = []
    for row in ROWS:
        matches = retriever.retrieve(str(row["text"]), limit=3)  # one encoding: judge the same list
        decision = judge(matches, retriever.thresholds)
        outcomes.append(Outcome(row, matches[0].article.id if matches else None, decision.kind))
    return outcomes


def _score(outcomes: Sequence[Outcome], splits: Sequence[str]) -> Score:
    correct = labelled = rejected = nulls = confident_wrong = 0
    misses: list[str] = []
    for outcome in outcomes:
        row = outcome.row
        if row["split"] not in splits:
            continue
        text = row["text"]
        if row["article"] is None:
            nulls += 1
            rejected += outcome.kind == "none"
            if outcome.kind != "none":
                misses.append(f"null {text!r} -> {outcome.kind} {outcome.top}")
        else:
            labelled += 1
            if outcome.top == row["article"]:
                correct += 1
            else:
                misses.append(f"{text!r} -> {outcome.top}, expected {row['article']}")
                confident_wrong += outcome.kind == "confident"
    return Score(correct, labelled, rejected, nulls, confident_wrong, tuple(misses))


# ---------------------------------------------------------------------------------------------------
# The data set itself
# ---------------------------------------------------------------------------------------------------


def test_the_request_set_covers_every_article_with_paraphrases() -> None:
    assert PROBLEMS == []
    labelled = [row for row in ROWS if row["article"] is not None]
    nulls = [row for row in ROWS if row["article"] is None]
    assert len(labelled) >= 48 and len(nulls) >= 6
    assert {row["article"] for row in labelled} == set(BY_ID), "every article at least once, no unknown ids"
    assert {row["split"] for row in ROWS} == {"dev", "heldout"}
    for split in ("dev", "heldout"):
        rows = [row for row in ROWS if row["split"] == split]
        assert {row["article"] for row in rows if row["article"]} == set(BY_ID), split
        assert sum(row["article"] is None for row in rows) >= 6, split
    copied = {text.lower() for article in ARTICLES for text in (*article.phrasings, article.title)}
    texts = [str(row["text"]) for row in ROWS]
    assert not [text for text in texts if text.lower() in copied], "requests must be paraphrases"
    assert len(set(texts)) == len(texts)


# ---------------------------------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------------------------------


def test_embedding_retrieval_accuracy(
    retriever: ArticleRetriever, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes = _outcomes(retriever)
    everything = _score(outcomes, ("dev", "heldout"))
    dev = _score(outcomes, ("dev",))
    heldout = _score(outcomes, ("heldout",))
    _report(
        capsys,
        "\n".join(
            [
                everything.line("embedding+keyword, all"),
                dev.line("embedding+keyword, dev (tuned on)"),
                heldout.line("embedding+keyword, held-out"),
                *(f"  miss: {miss}" for miss in everything.misses),
            ]
        ),
    )
    assert everything.accuracy >= 0.90, everything.line("all") + "; " + "; ".join(everything.misses)
    assert heldout.accuracy >= 0.90, heldout.line("held-out") + "; " + "; ".join(heldout.misses)
    assert everything.nulls_rejected == everything.nulls, (
        everything.line("all") + "; " + "; ".join(everything.misses)
    )
    assert everything.confident_wrong <= 1, everything.line("all")


def test_keyword_only_fallback_accuracy(
    keyword_retriever: ArticleRetriever, capsys: pytest.CaptureFixture[str]
) -> None:
    assert keyword_retriever.mode == "keyword" and keyword_retriever.thresholds == KEYWORD_THRESHOLDS
    outcomes = _outcomes(keyword_retriever)
    everything = _score(outcomes, ("dev", "heldout"))
    heldout = _score(outcomes, ("heldout",))
    _report(capsys, everything.line("keyword only, all") + "\n" + heldout.line("keyword only, held-out"))
    # Worse than with embeddings, but a usable fallback (measured 90/96 = 93.8 %, 11/12 nulls).
    assert everything.accuracy >= 0.85, everything.line("keyword only") + "; " + "; ".join(everything.misses)
    assert everything.nulls_rejected >= everything.nulls - 2, everything.line("keyword only")


def test_embeddings_help_where_keywords_fail(retriever: ArticleRetriever) -> None:
    # No shared keyword with the article: only the meaning connects them.
    assert (
        retriever.retrieve("i knocked a cup of tea all over my laptop", 1)[0].article.id
        == "broken-screen-keyboard"
    )
    assert retriever.decide("how do i get to the moon").kind == "none"


# ---------------------------------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------------------------------


def test_decisions(retriever: ArticleRetriever) -> None:
    sure = retriever.decide("my vpn keeps disconnecting every ten minutes")
    assert sure.kind == "confident" and sure.best is not None
    assert sure.best.article.id == "vpn-connection-drops"
    assert sure.best.similarity is not None and 0.0 <= sure.best.score <= 1.0

    unsure = retriever.decide("I can't connect to the network")
    assert unsure.kind == "ambiguous" and unsure.best is not None and unsure.runner_up is not None
    assert {unsure.best.article.id, unsure.runner_up.article.id} == {
        "wifi-not-connecting",
        "vpn-connection-drops",
    }

    nothing = retriever.decide("book me a flight to berlin")
    assert nothing == Decision("none", None, None)
    assert retriever.decide("").kind == "none" and retriever.decide("?!").kind == "none"


def test_judge_rules() -> None:
    article_a, article_b = ARTICLES[0], ARTICLES[1]
    thresholds = EMBEDDING_THRESHOLDS

    def matches(a: float, b: float) -> list[Match]:
        return [Match(article_a, a, a, 0.0), Match(article_b, b, b, 0.0)]

    assert judge(matches(0.9, 0.2), thresholds).kind == "confident"
    assert judge(matches(0.9, 0.2), thresholds).runner_up is None  # too weak to offer as an alternative
    assert judge(matches(0.6, 0.58), thresholds).kind == "ambiguous"
    assert judge(matches(0.38, 0.1), thresholds).kind == "ambiguous"
    assert judge(matches(0.2, 0.1), thresholds).kind == "none"
    assert judge([], thresholds).kind == "none"


def test_rank_among_two(retriever: ArticleRetriever) -> None:
    pair = [BY_ID["wifi-not-connecting"], BY_ID["vpn-connection-drops"]]
    assert retriever.rank("the vpn", pair)[0].article.id == "vpn-connection-drops"
    assert retriever.rank("wireless", pair)[0].article.id == "wifi-not-connecting"
    assert len(retriever.rank("the vpn", pair)) == 2


@pytest.mark.parametrize("mode", ["embedding", "keyword"])
def test_assess_is_decide_plus_every_score(
    retriever: ArticleRetriever, keyword_retriever: ArticleRetriever, mode: str
) -> None:
    chosen = retriever if mode == "embedding" else keyword_retriever
    for query in ("my vpn keeps dropping", "I can't connect to the network", "book me a flight", ""):
        assessment = chosen.assess(query)
        assert assessment.decision == chosen.decide(query)
        assert assessment.thresholds == chosen.thresholds
        if not query:
            assert assessment.matches == ()
            continue
        assert len(assessment.matches) == len(ARTICLES)
        scores = [match.score for match in assessment.matches]
        assert scores == sorted(scores, reverse=True)
        pair = [BY_ID["wifi-not-connecting"], BY_ID["vpn-connection-drops"]]
        for match in chosen.rank(query, pair):
            assert assessment.score(match.article.id) == pytest.approx(match.score)
    assert chosen.assess("my vpn").score("no-such-article") == 0.0


def test_every_article_is_embedded_from_all_its_texts() -> None:
    article = BY_ID["password-reset"]
    texts = article_texts(article)
    assert texts[0] == article.title and texts[1] == article.summary
    assert len(texts) == 3 + len(article.phrasings)


# ---------------------------------------------------------------------------------------------------
# Fallbacks: never a crash
# ---------------------------------------------------------------------------------------------------


class _BrokenEncoder:
    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        raise RuntimeError("model exploded")


class _FlakyEncoder:
    """Works for the articles, then fails on every request."""

    def __init__(self, inner: MiniLMEncoder) -> None:
        self.inner = inner
        self.calls = 0

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        if self.calls > 1:
            raise MemoryError("out of memory")
        return self.inner.encode(texts)


class _WrongShapeEncoder:
    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return np.zeros((1, 3), dtype=np.float32)


@pytest.mark.parametrize("encoder_factory", [_BrokenEncoder, _WrongShapeEncoder])
def test_an_encoder_failing_on_the_articles_means_keyword_mode(encoder_factory: type) -> None:
    retriever = ArticleRetriever(ARTICLES, encoder_factory(), KeywordIndex(ARTICLES))
    assert retriever.mode == "keyword"
    decision = retriever.decide("my vpn keeps dropping")
    assert decision.best is not None and decision.best.article.id == "vpn-connection-drops"
    assert decision.best.similarity is None


def test_an_encoder_failing_on_a_request_falls_back_for_that_request(encoder: MiniLMEncoder) -> None:
    two = [BY_ID["bluetooth-headset"], BY_ID["printer-not-printing"]]
    retriever = ArticleRetriever(two, _FlakyEncoder(encoder), KeywordIndex(two))
    assert retriever.mode == "embedding"
    matches = retriever.retrieve("my bluetooth headset will not pair", 2)
    assert matches and matches[0].article.id == "bluetooth-headset" and matches[0].similarity is None
    assert retriever.decide("bluetooth headset").best is not None


def test_load_retriever_without_a_model_uses_keywords(tmp_path: Path) -> None:
    retriever = load_retriever(model_dir=tmp_path)  # an empty folder: no model
    assert retriever.mode == "keyword" and len(retriever.articles) == len(ARTICLES)
    assert load_retriever(use_embeddings=False).mode == "keyword"


def test_no_articles_means_no_match(encoder: MiniLMEncoder, tmp_path: Path) -> None:
    empty: list[Article] = []
    retriever = ArticleRetriever(empty, encoder, KeywordIndex(empty))
    assert retriever.retrieve("my vpn", 3) == [] and retriever.decide("my vpn").kind == "none"
    assert load_retriever(tmp_path, use_embeddings=False).decide("my vpn").kind == "none"


class _CountingEncoder:
    """The real encoder, counting the texts it embeds, with the identity the cache keys on."""

    def __init__(self, inner: MiniLMEncoder, identity: str | None) -> None:
        self.inner = inner
        self.identity = identity
        self.texts = 0

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.texts += len(texts)
        return self.inner.encode(texts)


def test_article_vectors_are_cached_on_disk_and_reused(encoder: MiniLMEncoder, tmp_path: Path) -> None:
    assert encoder.identity is not None and "model.safetensors" not in encoder.identity
    first = _CountingEncoder(encoder, encoder.identity)
    built = ArticleRetriever(ARTICLES, first, KeywordIndex(ARTICLES), tmp_path)
    (cached,) = tmp_path.glob("kb-vectors-*.npy")
    embedded = first.texts
    assert embedded > len(ARTICLES)  # every article's texts were embedded once
    second = _CountingEncoder(encoder, encoder.identity)
    again = ArticleRetriever(ARTICLES, second, KeywordIndex(ARTICLES), tmp_path)
    assert second.texts == 0 and again.mode == "embedding"
    request = "my vpn keeps dropping every few minutes"
    assert [m.article.id for m in again.retrieve(request)] == [m.article.id for m in built.retrieve(request)]
    assert again.retrieve(request)[0].score == pytest.approx(built.retrieve(request)[0].score)

    cached.write_bytes(b"\x93NUMPY torn")  # a crash mid-write elsewhere, or another program
    third = _CountingEncoder(encoder, encoder.identity)
    assert ArticleRetriever(ARTICLES, third, KeywordIndex(ARTICLES), tmp_path).mode == "embedding"
    assert third.texts == embedded
    assert np.load(cached).shape[0] == embedded  # rewritten whole

    fewer = ARTICLES[:3]
    ArticleRetriever(fewer, _CountingEncoder(encoder, encoder.identity), KeywordIndex(fewer), tmp_path)
    assert [p.name for p in tmp_path.glob("kb-vectors-*.npy")] != [cached.name]  # the old one is gone
    assert len(list(tmp_path.glob("kb-vectors-*.npy"))) == 1


def test_an_encoder_without_identity_is_never_cached(encoder: MiniLMEncoder, tmp_path: Path) -> None:
    ArticleRetriever(ARTICLES[:2], _CountingEncoder(encoder, None), KeywordIndex(ARTICLES[:2]), tmp_path)
    assert list(tmp_path.iterdir()) == []
