"""The offline assistant follows the company's article folders while it runs (WatchedRetriever)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from app.localmodel.brain import HelpdeskBrain
from app.localmodel.embed import EncoderError, MiniLMEncoder
from app.localmodel.retrieval import (
    ArticleRetriever,
    WatchedRetriever,
    article_texts,
    load_watched_retriever,
)
from app.tools.kb import Article

ARTICLE = """\
# The coffee machine in the kitchen shows an error

1. Empty the grounds drawer at the front of the coffee machine.
2. Fill the water tank at the back of the machine.
"""
EDITED = ARTICLE.replace("Empty the grounds drawer", "Descale the brewing unit")


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    # A second edit within the file system's time resolution must still look changed.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def _first_step(retriever: WatchedRetriever | ArticleRetriever, request: str) -> str:
    best = retriever.assess(request).matches[0]  # the best first
    return best.article.steps[0]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    company = tmp_path / "company"
    company.mkdir()
    _write(company / "coffee.md", ARTICLE)
    return company


REQUEST = "the coffee machine in the kitchen shows an error"


def test_an_edited_article_is_answered_from_its_new_text_within_a_look(folder: Path) -> None:
    watched = load_watched_retriever(folders=[folder], use_embeddings=False, recheck_after=0.1)
    try:
        assert _first_step(watched, REQUEST).startswith("Empty the grounds drawer")
        _write(folder / "coffee.md", EDITED)
        deadline = time.monotonic() + 30
        while watched.generation == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # no request needed: the thread looks by itself
        assert watched.generation == 1
        assert _first_step(watched, REQUEST).startswith("Descale the brewing unit")
    finally:
        watched.close()


def test_a_removed_article_is_gone_and_a_new_one_is_found(folder: Path) -> None:
    watched = load_watched_retriever(folders=[folder], use_embeddings=False, recheck_after=None)
    (folder / "coffee.md").unlink()
    _write(
        folder / "projector.md",
        "# The projector in room 4 shows no picture\n\n1. Press Input.\n2. Choose HDMI 1.\n",
    )
    watched.refresh()
    assert all(article.source != str(folder) or "coffee" not in article.id for article in watched.articles)
    assert _first_step(watched, "the projector in room 4 shows no picture") == "Press Input."


def test_nothing_is_rebuilt_while_the_folders_stay_the_same(folder: Path) -> None:
    builds: list[int] = []

    def build() -> ArticleRetriever:
        builds.append(1)
        return load_watched_retriever(folders=[folder], use_embeddings=False, recheck_after=None).current

    watched = WatchedRetriever(build, [folder], recheck_after=None)
    assert [watched.refresh() for _ in range(3)] == [False, False, False]
    assert len(builds) == 1 and watched.generation == 0


def test_a_failed_rebuild_keeps_the_articles_in_place(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = load_watched_retriever(folders=[folder], use_embeddings=False).current
    calls = [0]

    def build() -> ArticleRetriever:
        calls[0] += 1
        if calls[0] > 1:
            raise OSError("the share went away")
        return first

    watched = WatchedRetriever(build, [folder], recheck_after=None)
    _write(folder / "coffee.md", EDITED)
    with caplog.at_level(logging.WARNING):
        assert watched.refresh() is False
    assert "keeping the ones loaded" in caplog.text
    assert watched.current is first and _first_step(watched, REQUEST).startswith("Empty the grounds drawer")


def test_the_brain_answers_from_the_edited_article_once_it_changed(folder: Path) -> None:
    watched = load_watched_retriever(folders=[folder], use_embeddings=False, recheck_after=None)
    brain = HelpdeskBrain(watched)
    assert "grounds drawer" in brain.preview(REQUEST).text
    _write(folder / "coffee.md", EDITED)
    watched.refresh()
    # The same words again: what the brain kept for them belongs to the articles before the change.
    assert "Descale the brewing unit" in brain.preview(REQUEST).text


def test_only_the_changed_article_is_embedded_again(folder: Path, tmp_path: Path) -> None:
    try:
        MiniLMEncoder()
    except EncoderError as exc:
        pytest.skip(f"the MiniLM model is not available: {exc}")
    cache = tmp_path / "cache"
    watched = load_watched_retriever(folders=[folder], cache_dir=cache, recheck_after=None)
    assert watched.mode == "embedding"
    _write(folder / "coffee.md", EDITED)
    assert watched.refresh() is True
    (edited,) = [article for article in watched.articles if article.source == str(folder)]
    changed = set(article_texts(edited)) - set(article_texts(_article_of(ARTICLE, tmp_path)))
    assert 0 < watched.current.embedded_texts <= len(changed)
    assert _first_step(watched, REQUEST).startswith("Descale the brewing unit")


def _article_of(text: str, tmp_path: Path) -> Article:
    from app.tools.kb_sources import parse_document

    path = tmp_path / "before" / "coffee.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return parse_document(text, path)


def test_whoever_asked_hears_of_each_change(folder: Path) -> None:
    changes: list[ArticleRetriever] = []
    watched = load_watched_retriever(folders=[folder], use_embeddings=False, recheck_after=None)
    watched.on_change = changes.append
    assert watched.refresh() is False and changes == []
    _write(folder / "coffee.md", EDITED)
    assert watched.refresh() is True
    assert changes == [watched.current]
