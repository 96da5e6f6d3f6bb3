"""The company's own articles (``kb.folders``): loading, step splitting, refreshing, and both paths.

A temporary folder holds one article of each kind an admin might drop in: Markdown with a
``## Steps`` list, free-form Markdown, an HTML page and a plain-text file, plus unusable files. The
search tool must find each; the free-form ones must come out as steps a person can follow; a file
changed or added later must be found (and embedded alone); the offline brain must walk a user
through one of them, and the folders must reach the offline server process.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from app.core.actions import Notice
from app.localmodel.brain import HelpdeskBrain
from app.localmodel.embed import EncoderError, MiniLMEncoder
from app.localmodel.retrieval import ArticleRetriever, article_texts, load_retriever
from app.tools.kb import Article, KeywordIndex, default_kb_dir, load_articles, search_knowledge_base_tool
from app.tools.kb_sources import (
    KB_FOLDERS_ENV,
    MAX_FILE_BYTES,
    STEP_CHARS,
    KnowledgeBase,
    folders_from_env,
    folders_to_env,
    html_to_markdown,
    load_folder,
    load_knowledge_base,
    split_steps,
)

SHIPPED, _ = load_articles(default_kb_dir())

WITH_STEPS = """\
---
title: Request access to the Finance share
url: https://intranet.example.com/kb/finance-share
keywords: [finance share, shared drive access, permissions]
---

# Finance share access

Staff outside Finance need approval before they can open the Finance share.

## Steps

1. Open the Access Portal from the Start menu.
2. Choose **Request access**, then pick Finance share from the list.
3. Type why you need it and press Submit; your manager gets an e-mail to approve.

## Escalate when

Your manager approved it more than a day ago and the share still says access denied.
"""

FREE_MARKDOWN = """\
# Badge printing on the third floor copier

The copier on the third floor only prints once you badge in. Walk up to the copier and tap your \
badge on the reader beside the screen. Wait until your name appears, then choose Print All.

If nothing is listed, send the job again from your computer and make sure you picked the printer \
called Floor3-Copier in the print dialog, not the old Floor3-Laser which was removed last year and \
no longer takes jobs from anyone.

Jobs wait for twelve hours. After that they are deleted and you have to send them again.
"""

HTML_PAGE = """\
<!doctype html>
<html><head><title>Intranet | Conference room display</title>
<style>li { color: red }</style><script>document.write("<li>Never a step</li>")</script></head>
<body><nav><ul><li>Home</li><li>IT help</li></ul></nav>
<h1>Conference room display stays black</h1>
<p>The meeting room screens use the Barco ClickShare button &amp; its base unit.</p>
<ol>
  <li>Plug the <b>ClickShare</b> button into a USB port on your laptop.</li>
  <li>Wait for the button's light to turn steady white.</li>
  <li>Press the button once; your screen appears on the room display.</li>
</ol>
<footer>Intranet footer, copyright</footer>
</body></html>
"""

PLAIN_TEXT = """\
Voicemail PIN reset

To reset your desk phone voicemail PIN, lift the handset and dial star 98. The system asks for \
your extension number. Enter it and press the hash key. Then choose option 4 for personal \
options and option 3 to set a new PIN. Say the new PIN aloud to check it.
"""


def _company_folder(root: Path) -> Path:
    folder = root / "company-kb"
    (folder / "facilities").mkdir(parents=True)
    (folder / "finance-share.md").write_text(WITH_STEPS, encoding="utf-8")
    (folder / "facilities" / "copier-badge.md").write_text(FREE_MARKDOWN, encoding="utf-8")
    (folder / "facilities" / "room-display.html").write_text(HTML_PAGE, encoding="utf-8")
    (folder / "voicemail.txt").write_text(PLAIN_TEXT, encoding="utf-8")
    return folder


def _add_bad_files(folder: Path) -> None:
    (folder / "logo.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (folder / "latin1.txt").write_bytes("Caf\xe9 Wi-Fi password: ask at the desk.".encode("latin-1"))
    (folder / "huge.txt").write_text("Restart it. " * (MAX_FILE_BYTES // 12 + 10), encoding="utf-8")
    (folder / "empty.md").write_text("# Only a heading\n", encoding="utf-8")
    (folder / "picture.png").write_bytes(b"\x89PNG not an article")  # not an article suffix at all


def _search(tool_index: Any, query: str) -> list[dict[str, Any]]:
    tool = search_knowledge_base_tool(tool_index)

    async def run() -> dict[str, Any]:
        return await tool.handler({"query": query, "limit": 3})

    output = asyncio.run(run())
    results: list[dict[str, Any]] = output["results"]
    return results


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return _company_folder(tmp_path)


# ---------------------------------------------------------------------------------------------------
# Loading: every format, titles, links, steps
# ---------------------------------------------------------------------------------------------------


def test_every_format_loads_with_title_link_and_steps(folder: Path) -> None:
    articles, problems = load_folder(folder)
    assert problems == []
    by_title = {article.title: article for article in articles}
    assert set(by_title) == {
        "Request access to the Finance share",  # the front matter's title beats the heading
        "Badge printing on the third floor copier",  # the first heading
        "Conference room display stays black",  # <h1> beats <title>
        "Voicemail PIN reset",  # a text file's lone first line
    }
    share = by_title["Request access to the Finance share"]
    assert share.link == "https://intranet.example.com/kb/finance-share"
    assert share.steps == (
        "Open the Access Portal from the Start menu.",
        "Choose Request access, then pick Finance share from the list.",
        "Type why you need it and press Submit; your manager gets an e-mail to approve.",
    )
    assert share.escalate.startswith("Your manager approved it")
    assert "finance share" in share.keywords
    display = by_title["Conference room display stays black"]
    assert display.link == (folder / "facilities" / "room-display.html").resolve().as_uri()
    assert display.steps[0] == "Plug the ClickShare button into a USB port on your laptop."
    assert len(display.steps) == 3  # the navigation list, script and footer are not steps
    assert display.summary == "The meeting room screens use the Barco ClickShare button & its base unit."
    assert {article.source for article in articles} == {str(folder)}
    assert all(article.category == "other" and article.escalate for article in articles)
    assert len({article.id for article in articles}) == 4


def test_free_form_text_becomes_steps_a_person_can_follow(folder: Path) -> None:
    articles, _ = load_folder(folder)
    copier = next(article for article in articles if "copier" in article.title)
    assert copier.steps == (
        "The copier on the third floor only prints once you badge in.",
        "Walk up to the copier and tap your badge on the reader beside the screen.",
        "Wait until your name appears, then choose Print All.",
        "If nothing is listed, send the job again from your computer and make sure you picked the "
        "printer called Floor3-Copier in the print dialog,",
        "not the old Floor3-Laser which was removed last year and no longer takes jobs from anyone.",
        "Jobs wait for twelve hours. After that they are deleted and you have to send them again.",
    )
    voicemail = next(article for article in articles if "Voicemail" in article.title)
    assert voicemail.steps[0].startswith("To reset your desk phone voicemail PIN, lift the handset")
    assert any("option 4" in step for step in voicemail.steps)
    for article in articles:
        for step in article.steps:
            assert 10 <= len(step) <= STEP_CHARS, step
            assert "**" not in step and "<" not in step and "](" not in step


def test_lists_win_over_paragraphs_and_numbers_over_bullets() -> None:
    text = (
        "# VPN on a hotel network\n\nSymptoms:\n\n- the client spins\n- no error is shown\n\n"
        "1. Open the hotel's login page first.\n2. Accept its terms.\n3. Then connect the VPN.\n"
    )
    assert split_steps(text) == [
        "Open the hotel's login page first.",
        "Accept its terms.",
        "Then connect the VPN.",
    ]
    bullets = "Intro paragraph that explains things.\n\n* Restart the dock.\n* Reseat the cable.\n"
    assert split_steps(bullets) == ["Restart the dock.", "Reseat the cable."]
    long_item = "1. " + "Open the settings and look for the option named Sync, " * 8 + "\n2. Done.\n"
    steps = split_steps(long_item)
    assert len(steps) > 2 and all(len(step) <= STEP_CHARS for step in steps)


def test_html_conversion_drops_scripts_and_styles() -> None:
    text, title = html_to_markdown(HTML_PAGE)
    assert title == "Intranet | Conference room display"
    assert "Never a step" not in text and "color" not in text and "footer" not in text
    assert "# Conference room display stays black" in text
    assert "1. Press the button once; your screen appears on the room display." in text


def test_bad_files_are_reported_and_skipped(folder: Path) -> None:
    _add_bad_files(folder)
    articles, problems = load_folder(folder)
    assert len(articles) == 4
    reasons = {Path(problem.split(": ", 1)[0]).name: problem for problem in problems}
    assert set(reasons) == {"logo.md", "latin1.txt", "huge.txt", "empty.md"}, problems
    assert "binary" in reasons["logo.md"]
    assert "UTF-8" in reasons["latin1.txt"]
    assert "MB" in reasons["huge.txt"]
    assert "no text" in reasons["empty.md"]
    missing, trouble = load_folder(folder / "no-such-folder")
    assert missing == [] and "not a folder" in trouble[0]


def test_shipped_articles_stay_beside_the_companys(folder: Path) -> None:
    (folder / "password-reset.md").write_text(
        "# Our password rules\n\n1. Call us.\n2. Wait.\n", encoding="utf-8"
    )
    articles, problems = load_knowledge_base([folder])
    assert problems == []
    assert [article.id for article in articles[: len(SHIPPED)]] == [article.id for article in SHIPPED]
    ids = [article.id for article in articles]
    assert len(ids) == len(set(ids)) == len(SHIPPED) + 5
    assert "password-reset-2" in ids  # the company's file with a shipped article's name


# ---------------------------------------------------------------------------------------------------
# The search tool (cloud models)
# ---------------------------------------------------------------------------------------------------


def test_the_tool_finds_each_company_article_with_title_and_link(folder: Path) -> None:
    knowledge = KnowledgeBase([folder])
    cases = {
        "I need access to the finance shared drive": "Request access to the Finance share",
        "the third floor copier wont print after I tap my badge": "Badge printing on the third floor copier",
        "the conference room display is black with clickshare": "Conference room display stays black",
        "how do I reset my voicemail pin": "Voicemail PIN reset",
    }
    for query, title in cases.items():
        results = _search(knowledge.index, query)
        assert results and results[0]["title"] == title, (query, results)
        assert results[0]["link"].startswith(("https://", "file://")) and results[0]["steps"]
    shipped = _search(knowledge.index, "my vpn keeps dropping")
    assert shipped[0]["id"] == "vpn-connection-drops" and "link" not in shipped[0]


def test_a_changed_or_added_file_is_found_at_the_next_search(folder: Path) -> None:
    now = [0.0]
    knowledge = KnowledgeBase([folder], recheck_after=5.0, clock=lambda: now[0])
    assert _search(knowledge.index, "the parking garage gate will not open") == []
    (folder / "parking.md").write_text(
        "# Parking garage gate\n\n1. Hold your badge flat on the gate reader.\n2. Wait for the beep.\n",
        encoding="utf-8",
    )
    now[0] = 1.0  # within the recheck interval: no stat of the folder yet
    assert _search(knowledge.index, "the parking garage gate will not open") == []
    now[0] = 6.0
    (found,) = [
        r
        for r in _search(knowledge.index, "the parking garage gate will not open")
        if "Parking" in r["title"]
    ]
    assert found["steps"][0] == "Hold your badge flat on the gate reader."
    assert knowledge.reloads == 1

    copier = folder / "facilities" / "copier-badge.md"
    copier.write_text(FREE_MARKDOWN.replace("third floor", "fourth floor"), encoding="utf-8")
    os.utime(copier, ns=(copier.stat().st_atime_ns, copier.stat().st_mtime_ns + 2_000_000_000))
    now[0] = 12.0
    assert _search(knowledge.index, "fourth floor copier badge")[0]["title"].endswith("fourth floor copier")
    assert knowledge.reloads == 2
    now[0] = 18.0
    knowledge.index()
    assert knowledge.reloads == 2  # nothing changed: the folder is not read again


# ---------------------------------------------------------------------------------------------------
# The offline brain and its vector cache
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder() -> Iterator[MiniLMEncoder]:
    try:
        yield MiniLMEncoder()
    except EncoderError as exc:
        pytest.skip(f"the MiniLM model is not available: {exc}")


class _CountingEncoder:
    """The real encoder, counting the texts it embeds, with the identity the cache keys on."""

    def __init__(self, inner: MiniLMEncoder) -> None:
        self.inner = inner
        self.identity = inner.identity
        self.texts = 0

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.texts += len(texts)
        return self.inner.encode(texts)


def _retriever(
    encoder: MiniLMEncoder, folder: Path, cache: Path
) -> tuple[ArticleRetriever, _CountingEncoder]:
    articles, problems = load_knowledge_base([folder])
    assert problems == []
    counting = _CountingEncoder(encoder)
    return ArticleRetriever(articles, counting, KeywordIndex(articles), cache), counting


def test_the_cache_is_kept_per_source_and_re_embeds_only_what_changed(
    encoder: MiniLMEncoder, folder: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first, counting = _retriever(encoder, folder, cache)
    shipped_texts = sum(len(article_texts(article)) for article in SHIPPED)
    company_texts = sum(len(article_texts(a)) for a in first.articles if a.source)
    assert counting.texts == shipped_texts + company_texts
    assert len(list(cache.glob("kb-vectors-*.npy"))) == 2  # the shipped set and the folder

    again, counting = _retriever(encoder, folder, cache)
    assert counting.texts == 0 and again.embedded_texts == 0 and again.mode == "embedding"

    (folder / "parking.md").write_text(
        "# Parking garage gate\n\nIf the gate does not open, hold your badge flat on the reader.\n",
        encoding="utf-8",
    )
    added, counting = _retriever(encoder, folder, cache)
    parking = next(article for article in added.articles if article.title == "Parking garage gate")
    assert counting.texts == len(article_texts(parking)) == 2  # title and summary: the new file alone
    assert added.embedded_texts == 2
    assert len(list(cache.glob("kb-vectors-*.npy"))) == 2  # the folder's old file was replaced
    request = "the parking garage gate will not open"
    best = added.decide(request).best
    assert best is not None and best.article is parking

    edited = folder / "voicemail.txt"
    edited.write_text(PLAIN_TEXT.replace("star 98", "star 99"), encoding="utf-8")
    _, counting = _retriever(encoder, folder, cache)
    assert counting.texts == 1  # only the changed summary; the title is unchanged text


class _DiesAfterOneBatch(_CountingEncoder):
    """Stands for a server killed mid-embedding (the launcher's start timeout, a crash)."""

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if self.texts:
            raise MemoryError("killed")
        return super().encode(texts)


def test_an_interrupted_first_embedding_carries_on_at_the_next_start(
    encoder: MiniLMEncoder, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.localmodel import retrieval

    cache = tmp_path / "cache"
    monkeypatch.setattr(retrieval, "EMBED_BATCH", 5)
    articles, _ = load_knowledge_base([folder])
    company = [article for article in articles if article.source]
    total = sum(len(article_texts(article)) for article in company)
    dying = _DiesAfterOneBatch(encoder)
    assert ArticleRetriever(company, dying, KeywordIndex(company), cache).mode == "keyword"
    assert dying.texts == 5
    counting = _CountingEncoder(encoder)
    resumed = ArticleRetriever(company, counting, KeywordIndex(company), cache)
    assert resumed.mode == "embedding" and counting.texts == total - 5


def test_the_offline_brain_walks_a_user_through_a_company_article(
    encoder: MiniLMEncoder, folder: Path
) -> None:
    articles, _ = load_knowledge_base([folder])
    retriever = ArticleRetriever(articles, encoder, KeywordIndex(articles))
    assert retriever.mode == "embedding"
    brain = HelpdeskBrain(retriever, can_create_tickets=True)
    display: Article = next(article for article in articles if "display" in article.title)
    first = brain.reply("The screen in the conference room stays black.")
    assert first.article_id == display.id and first.step == 1, first
    assert first.text.startswith("Okay, let's look at conference room display stays black.")
    assert display.steps[0] in first.text and f"Step 1 of {len(display.steps)}" in first.text
    second = brain.reply("done")
    assert second.article_id == display.id and second.step == 2 and display.steps[1] in second.text

    # A company article and a shipped one can both fit: the brain asks, naming the company's by title.
    brain = HelpdeskBrain(retriever, can_create_tickets=True)
    copier: Article = next(article for article in articles if "copier" in article.title)
    question = brain.reply("The copier on the third floor won't print my documents.")
    assert question.article_id is None and "badge printing on the third floor copier" in question.text
    chosen = brain.reply("the third floor copier")
    assert chosen.article_id == copier.id and chosen.step == 1 and copier.steps[0] in chosen.text
    assert brain.reply("done").step == 2
    third = brain.reply("ok, next")
    assert third.step == 3 and copier.steps[2] in third.text
    back = brain.reply("go back")
    assert back.step == 2 and copier.steps[1] in back.text


def test_load_retriever_reads_the_folders(folder: Path) -> None:
    retriever = load_retriever(use_embeddings=False, folders=[folder])
    decision = retriever.decide("how do I reset my voicemail pin")
    assert decision.best is not None and decision.best.article.title == "Voicemail PIN reset"


# ---------------------------------------------------------------------------------------------------
# How the folders reach the offline server
# ---------------------------------------------------------------------------------------------------


def test_the_folders_survive_the_environment() -> None:
    folders = ["/srv/kb", "C:\\KB; Smith, John", "/with:colon"]
    assert folders_from_env({KB_FOLDERS_ENV: folders_to_env(folders)}) == tuple(folders)
    assert folders_from_env({KB_FOLDERS_ENV: os.pathsep.join(["/a", "/b"])}) == ("/a", "/b")
    assert folders_from_env({KB_FOLDERS_ENV: "[]"}) == ()
    assert folders_from_env({}) is None


class _Started(Exception):
    pass


def test_the_launcher_hands_the_folders_to_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.localmodel import launcher

    seen: dict[str, Any] = {}

    def fake_popen(command: list[str], **options: Any) -> subprocess.Popen[str]:
        seen["command"], seen["env"] = command, options["env"]
        raise _Started

    monkeypatch.setattr(subprocess, "Popen", fake_popen)
    with pytest.raises(_Started):
        launcher.EmbeddedServerProcess(kb_folders=["/srv/kb", "/home/it/articles"]).start()
    assert seen["command"][2:4] == ["app", "serve"]
    assert json.loads(seen["env"][KB_FOLDERS_ENV]) == ["/srv/kb", "/home/it/articles"]
    monkeypatch.setenv(KB_FOLDERS_ENV, "")  # recorded, so the variable is gone again afterwards
    monkeypatch.delenv(KB_FOLDERS_ENV)
    with pytest.raises(_Started):
        launcher.EmbeddedServerProcess().start()
    assert KB_FOLDERS_ENV not in seen["env"]  # the child then reads the setting itself


def test_serve_alone_reads_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from app import cli
    from app.localmodel import serve

    monkeypatch.setenv("HELPDESK_VOICE_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("HELPDESK_VOICE_POLICY", str(tmp_path / "no-policy.toml"))
    monkeypatch.setenv("HELPDESK_VOICE_KB_FOLDERS", "/srv/kb")  # the setting, as the settings read it
    monkeypatch.setenv(KB_FOLDERS_ENV, "")  # recorded: serve_main sets it in os.environ itself
    monkeypatch.delenv(KB_FOLDERS_ENV)

    def stop_before_loading(arenas: int) -> None:
        raise _Started

    monkeypatch.setattr(serve, "limit_malloc_arenas", stop_before_loading)
    assert cli.main(["serve"]) != 0  # stopped right before the models load
    assert folders_from_env() == ("/srv/kb",)  # what load_models will read
    monkeypatch.setenv(KB_FOLDERS_ENV, folders_to_env(["/from/the/app"]))
    assert cli.main(["serve"]) != 0
    assert folders_from_env() == ("/from/the/app",)  # the app's word wins over the settings


def test_the_tools_line_in_the_transcript_cites_title_and_link(folder: Path) -> None:
    tool = search_knowledge_base_tool(KnowledgeBase([folder]).index)

    async def run() -> dict[str, Any]:
        return await tool.handler({"query": "I need access to the finance shared drive", "limit": 1})

    assert asyncio.run(run())["message"] == (
        "Found: Request access to the Finance share (https://intranet.example.com/kb/finance-share)"
    )


def test_an_answer_naming_a_company_article_cites_it_and_only_it(folder: Path) -> None:
    knowledge = KnowledgeBase([folder])
    said = "Okay, let's look at voicemail PIN reset. Step 1 of 3: Open the phone's settings."
    (cited,) = knowledge.cited_in(said)
    assert cited.title == "Voicemail PIN reset" and cited.link
    # A shipped article has no link to give, and a title must be named whole.
    assert knowledge.cited_in("Let's look at VPN disconnects, then the voicemail PIN.") == []


def test_the_runner_adds_each_cited_articles_link_to_the_transcript_once(folder: Path) -> None:
    from app.core.actions import StateChanged, ToolActivity, Transcript, TurnCompleted
    from app.core.metrics import TurnMetrics
    from app.launch import CitingListener

    class Heard:
        def __init__(self) -> None:
            self.events: list[object] = []

        def on_state(self, event: StateChanged) -> None:
            self.events.append(event)

        def on_transcript(self, event: Transcript) -> None:
            self.events.append(event)

        def on_tool(self, event: ToolActivity) -> None:
            self.events.append(event)

        def on_turn(self, event: TurnCompleted) -> None:
            self.events.append(event)

        def on_notice(self, event: Notice) -> None:
            self.events.append(event)

    heard = Heard()
    listener = CitingListener(heard, KnowledgeBase([folder]))
    walked = TurnCompleted(
        TurnMetrics(1, "test"), "my voicemail pin", "Okay, let's look at voicemail PIN reset."
    )
    listener.on_turn(walked)
    listener.on_turn(replace(walked, assistant_text="Back to voicemail PIN reset: step 2 of 3."))
    listener.on_turn(replace(walked, assistant_text="Glad to hear it's working."))
    notices = [event for event in heard.events if isinstance(event, Notice)]
    assert len(notices) == 1 and notices[0].message.startswith("Article: Voicemail PIN reset - ")
    assert heard.events[0] is walked and heard.events[1] is notices[0]  # right after the answer
