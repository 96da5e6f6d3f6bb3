"""The ticket system's knowledge base mirrored into a folder (app/tools/article_sync.py).

First against a small source in memory (what is written, kept, rewritten and removed, and that a
failure keeps the last copy), then against the real Request Tracker of the ``rt`` fixture: articles
made in RT through REST 2 are synced, found by the search tool with their title, link and steps,
changed, disabled, and kept when RT stops answering. ServiceNow's side is tested against recorded
contracts in tests/test_connector_servicenow.py.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import launch
from app.config import ConfigError, load_settings, save_user_setting
from app.core.actions import Notice, StateChanged, ToolActivity, Transcript, TurnCompleted
from app.ticket_systems import SECRET_ENV
from app.tools.article_sync import MANIFEST, ArticleSync, articles_folder, render_article
from app.tools.connectors.base import ArticleSource, ConnectorError, RemoteArticle
from app.tools.connectors.rt import RequestTrackerConnector
from app.tools.kb import search_knowledge_base_tool
from app.tools.kb_sources import KnowledgeBase, parse_document
from tests.rt_server import ARTICLE_CLASS, RtInstance, rest


class MemorySource:
    """A knowledge base in memory that fetches bodies one by one, as ServiceNow's does."""

    name = "Memory Desk"

    def __init__(self) -> None:
        self.articles: dict[str, RemoteArticle] = {}
        self.failure: ConnectorError | None = None
        self.fetched: list[str] = []

    def put(self, ref: str, title: str, body: str, updated: str, *, html: bool = False) -> None:
        url = f"https://desk.example.com/kb/{ref}"
        self.articles[ref] = RemoteArticle(ref, title, url, updated, body, html, summary="")

    def list_articles(self, known: Mapping[str, str] | None = None) -> list[RemoteArticle]:
        if self.failure is not None:
            raise self.failure
        known = known or {}
        listed = []
        for ref, article in self.articles.items():
            if known.get(ref) == article.updated_at:
                listed.append(replace(article, body=None))
            else:
                self.fetched.append(ref)
                listed.append(article)
        return listed


def sync_for(folder: Path, source: object, **options: Any) -> ArticleSync:
    return ArticleSync(folder, lambda client: source, **options)


def search(knowledge: KnowledgeBase, query: str) -> list[dict[str, Any]]:
    tool = search_knowledge_base_tool(knowledge.index)

    async def run() -> dict[str, Any]:
        return await tool.handler({"query": query, "limit": 3})

    results: list[dict[str, Any]] = asyncio.run(run())["results"]
    return results


VPN_HTML = (
    "<h1>VPN drops</h1><p>When the VPN disconnects every few minutes:</p>"
    "<ol><li>Quit the VPN client from the tray.</li><li>Start it again and sign in.</li></ol>"
)


def test_the_memory_source_is_an_article_source() -> None:
    assert isinstance(MemorySource(), ArticleSource)


def test_a_sync_writes_one_file_per_article_and_then_only_what_changed(tmp_path: Path) -> None:
    source = MemorySource()
    source.put("1", "VPN drops every few minutes", VPN_HTML, "2026-12-01 10:00:00", html=True)
    source.put("2", "Printer jam", "1. Open tray 2.\n2. Pull the paper out gently.", "2026-12-01 11:00:00")
    folder = tmp_path / "articles"
    sync = sync_for(folder, source)

    first = sync.sync()
    assert first.ok and first.problems == () and first.articles == 2
    assert sorted(first.written) == ["article-1.md", "article-2.md"]
    vpn = parse_document(
        (folder / "article-1.md").read_text(encoding="utf-8"), folder / "article-1.md", folder
    )
    assert vpn.title == "VPN drops every few minutes"
    assert vpn.link == "https://desk.example.com/kb/1"
    assert vpn.steps == ("Quit the VPN client from the tray.", "Start it again and sign in.")
    assert (folder / MANIFEST).is_file()

    stamps = {path.name: path.stat().st_mtime_ns for path in folder.glob("article-*.md")}
    source.fetched.clear()
    again = sync.sync()
    assert again.ok and again.written == () and again.removed == ()
    assert source.fetched == []  # unchanged stamps: no body fetched again
    assert {path.name: path.stat().st_mtime_ns for path in folder.glob("article-*.md")} == stamps

    source.put("2", "Printer jam", "1. Open tray 3.\n2. Pull the paper out gently.", "2026-12-02 09:00:00")
    del source.articles["1"]
    changed = sync.sync()
    assert changed.written == ("article-2.md",) and changed.removed == ("article-1.md",)
    assert not (folder / "article-1.md").exists()
    assert "Open tray 3." in (folder / "article-2.md").read_text(encoding="utf-8")


def test_a_refetched_article_with_the_same_text_is_not_rewritten(tmp_path: Path) -> None:
    source = MemorySource()
    source.put("7", "Wi-Fi", "1. Forget the network.\n2. Join it again.", "a")
    folder = tmp_path / "articles"
    sync = sync_for(folder, source)
    sync.sync()
    (folder / MANIFEST).unlink()  # as after a lost manifest: every body comes again
    before = (folder / "article-7.md").stat().st_mtime_ns
    report = sync.sync()
    assert source.fetched == ["7", "7"] and report.written == ()
    assert (folder / "article-7.md").stat().st_mtime_ns == before


def test_a_failing_source_keeps_the_last_copy_and_says_so_once(tmp_path: Path) -> None:
    source = MemorySource()
    source.put("1", "VPN drops", VPN_HTML, "x", html=True)
    heard: list[str] = []
    folder = tmp_path / "articles"
    sync = sync_for(folder, source, on_problem=heard.append)
    assert sync.sync().ok

    source.failure = ConnectorError("unavailable", "Memory Desk at desk.example.com failed with HTTP 503.")
    failed = sync.sync()
    assert not failed.ok and failed.written == failed.removed == ()
    (problem,) = failed.problems
    assert problem.startswith("Memory Desk's articles could not be updated: Memory Desk at desk.example.com")
    assert "the copy from 20" in problem and problem.endswith("is kept")
    assert (folder / "article-1.md").is_file()
    sync.sync()
    assert heard == [problem]  # said once, not at every try


@pytest.mark.parametrize(
    ("source", "said"),
    [
        (None, "has no knowledge base this app can read"),
        (object(), "has no knowledge base this app can read"),
    ],
)
def test_a_system_without_a_knowledge_base_is_reported(tmp_path: Path, source: object, said: str) -> None:
    report = sync_for(tmp_path / "a", source).sync()
    assert not report.ok and said in report.problems[0]


def test_a_connect_failure_and_a_bug_are_reported_not_raised(tmp_path: Path) -> None:
    def refuse(client: httpx.Client) -> object:
        raise ConnectorError("config", "no credential for Request Tracker is stored")

    report = ArticleSync(tmp_path / "a", refuse, system="Request Tracker").sync()
    assert report.problems == (
        "Request Tracker's articles could not be read: no credential for Request Tracker is stored",
    )

    class Broken(MemorySource):
        def list_articles(self, known: Mapping[str, str] | None = None) -> list[RemoteArticle]:
            raise RuntimeError("a bug")

    report = sync_for(tmp_path / "b", Broken()).sync()
    assert not report.ok and "the sync failed (RuntimeError)" in report.problems[0]


def test_an_article_without_text_is_left_out_with_a_problem(tmp_path: Path) -> None:
    source = MemorySource()
    source.put("1", "Empty one", "<p> </p>", "x", html=True)
    source.put("2", "Real one", "Restart the laptop.", "x")
    report = sync_for(tmp_path, source).sync()
    assert report.articles == 1 and report.problems == (
        "Memory Desk article 'Empty one' has no text this account can read; left out",
    )


def test_front_matter_survives_any_title() -> None:
    tricky = 'Quotes " and \\ back\\slash,\ttab and a control \x07 char'
    text = render_article(RemoteArticle("1", tricky, "https://x.example/a?b=1&c=2", None, "Do this."), "RT")
    assert text is not None
    article = parse_document(text, Path("/tmp/article-1.md"))
    assert article.title == " ".join(tricky.split()) and article.link == "https://x.example/a?b=1&c=2"


def test_files_the_sync_does_not_own_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("# Mine\n\nKeep me.\n", encoding="utf-8")
    source = MemorySource()
    source.put("1", "One", "Restart it.", "x")
    sync_for(tmp_path, source).sync()
    source.articles.clear()
    report = sync_for(tmp_path, source).sync()
    assert report.removed == ("article-1.md",) and (tmp_path / "notes.md").is_file()


def test_each_system_and_address_has_its_own_folder(tmp_path: Path) -> None:
    one = articles_folder("rt", "https://rt.example.com/", tmp_path)
    assert one == articles_folder("rt", "https://rt.example.com", tmp_path)
    assert one.parent == tmp_path / "ticket-system-articles" and one.name.startswith("rt-rt-example-com-")
    assert one != articles_folder("rt", "https://rt.example.com/other", tmp_path)
    assert one != articles_folder("servicenow", "https://rt.example.com", tmp_path)


def test_the_thread_syncs_at_start_and_stops(tmp_path: Path) -> None:
    source = MemorySource()
    source.put("1", "One", "Restart it.", "x")
    sync = sync_for(tmp_path, source, interval_s=3600)
    sync.start()
    sync.stop(timeout=5)
    assert sync.last_report is not None and sync.last_report.articles == 1


# ---------------------------------------------------------------------------------------------------
# The launch plan
# ---------------------------------------------------------------------------------------------------


def plan_with(env: dict[str, str], user_toml: str) -> launch.LaunchPlan:
    Path(env["HELPDESK_VOICE_CONFIG_DIR"], "settings.toml").write_text(user_toml, encoding="utf-8")
    return launch.plan_from_settings(load_settings(None, env), environ={})


def test_the_plan_adds_the_articles_folder_only_when_asked_and_possible(env: dict[str, str]) -> None:
    base = '[tickets]\nsystem = "rt"\nurl = "https://rt.example.com"\n[kb]\nfolders = ["/srv/kb"]\n'
    off = plan_with(env, base)
    assert off.articles_folder is None and off.kb_folders == ("/srv/kb",)

    on = plan_with(env, base + "ticket_system_articles = true\n")
    assert on.articles_folder == str(articles_folder("rt", "https://rt.example.com"))
    assert on.kb_folders == ("/srv/kb", on.articles_folder) and on.warnings == ()

    jira = plan_with(env, base.replace('"rt"', '"jsm"') + "ticket_system_articles = true\n")
    assert jira.articles_folder is None and jira.kb_folders == ("/srv/kb",)
    assert jira.warnings == (
        "kb.ticket_system_articles: Jira Service Management has no knowledge base this app can read "
        "(only Request Tracker and ServiceNow have one); its articles are not used",
    )


# ---------------------------------------------------------------------------------------------------
# Against the real Request Tracker
# ---------------------------------------------------------------------------------------------------


def create_article(rt: RtInstance, name: str, content: str, summary: str = "") -> str:
    made = rest(
        rt,
        "POST",
        "/article",
        json={"Class": ARTICLE_CLASS, "Name": name, "Summary": summary, "CustomFields": {"Content": content}},
    )
    return str(made["id"])


def rt_sync(rt: RtInstance, folder: Path, base_url: str | None = None, **options: Any) -> ArticleSync:
    def connect(client: httpx.Client) -> RequestTrackerConnector:
        return RequestTrackerConnector(client, base_url or rt.base_url, rt.queue, rt.token)

    return ArticleSync(folder, connect, system="Request Tracker", **options)


def results_titled(knowledge: KnowledgeBase, query: str, title: str) -> list[dict[str, Any]]:
    return [result for result in search(knowledge, query) if result["title"] == title]


def test_rt_articles_are_synced_found_changed_and_withdrawn(rt: RtInstance, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    vpn_title = f"VPN drops every few minutes {tag}"
    vpn_html = (
        "<p>When the VPN disconnects every few minutes, the client is stuck on an old gateway.</p>"
        "<ol><li>Quit the VPN client from the system tray.</li>"
        "<li>Start it again and choose the <b>Europe</b> gateway.</li>"
        "<li>Sign in with your badge PIN.</li></ol>"
    )
    vpn = create_article(rt, vpn_title, vpn_html, "The VPN keeps disconnecting")
    printer_title = f"Printer jam on the second floor {tag}"
    printer = create_article(rt, printer_title, "1. Open tray 2.\n2. Pull the jammed paper out gently.")
    folder = tmp_path / "rt-articles"
    sync = rt_sync(rt, folder)

    first = sync.sync()
    assert first.ok and first.problems == ()
    assert {f"article-{vpn}.md", f"article-{printer}.md"} <= set(first.written)
    knowledge = KnowledgeBase([folder], recheck_after=0.0)
    (found,) = results_titled(knowledge, "the vpn keeps disconnecting every few minutes", vpn_title)
    assert found["link"] == f"{rt.base_url}/SelfService/Article/Display.html?id={vpn}"
    assert found["steps"] == [
        "Quit the VPN client from the system tray.",
        "Start it again and choose the Europe gateway.",
        "Sign in with your badge PIN.",
    ]
    (jam,) = results_titled(knowledge, "paper jam in the printer", printer_title)
    assert jam["steps"][0] == "Open tray 2."
    # The link is one a person can open: signed in to RT, its self-service page shows the article.
    with httpx.Client(timeout=20) as browser:
        browser.post(f"{rt.base_url}/NoAuth/Login.html", data={"user": rt.user, "pass": rt.password})
        page = browser.get(found["link"])
    assert page.status_code == 200 and vpn_title in page.text and "Europe" in page.text

    reloads = knowledge.reloads
    assert sync.sync().written == ()  # nothing changed in RT: nothing rewritten, nothing re-read
    knowledge.index()
    assert knowledge.reloads == reloads

    rest(
        rt,
        "PUT",
        f"/article/{printer}",
        json={"CustomFields": {"Content": "1. Open tray 3.\n2. Pull it out."}},
    )
    changed = sync.sync()
    assert changed.written == (f"article-{printer}.md",)
    (jam,) = results_titled(knowledge, "paper jam in the printer", printer_title)
    assert jam["steps"][0] == "Open tray 3."

    httpx.delete(f"{rt.base_url}/REST/2.0/article/{vpn}", auth=("root", rt.root_password), timeout=20)
    assert rest(rt, "GET", f"/article/{vpn}")["Disabled"] == "1"
    withdrawn = sync.sync()
    assert withdrawn.removed == (f"article-{vpn}.md",)
    assert results_titled(knowledge, "the vpn keeps disconnecting every few minutes", vpn_title) == []


def test_rt_down_keeps_the_last_copy_and_says_why(rt: RtInstance, tmp_path: Path) -> None:
    title = f"Reset a voicemail PIN {uuid.uuid4().hex[:6]}"
    create_article(rt, title, "1. Dial 8000.\n2. Press star, then 4.\n3. Choose a new PIN.")
    folder = tmp_path / "rt-articles"
    assert rt_sync(rt, folder).sync().ok

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    heard: list[str] = []
    down = rt_sync(rt, folder, base_url=dead, on_problem=heard.append).sync()
    assert not down.ok
    (problem,) = heard
    assert problem.startswith(
        "Request Tracker's articles could not be updated: Could not reach Request Tracker"
    )
    assert problem.endswith("is kept")
    knowledge = KnowledgeBase([folder])
    assert results_titled(knowledge, "reset my voicemail pin", title)


def test_a_refused_token_is_reported_for_the_articles(rt: RtInstance, tmp_path: Path) -> None:
    def wrong(client: httpx.Client) -> RequestTrackerConnector:
        return RequestTrackerConnector(client, rt.base_url, rt.queue, "1-2-" + "0" * 32)

    report = ArticleSync(tmp_path, wrong, system="Request Tracker").sync()
    assert not report.ok and "refused the auth token" in report.problems[0]


class Notices:
    """An engine listener that keeps the notices (the only reports the article sync makes)."""

    def __init__(self) -> None:
        self.notices: list[Notice] = []

    def on_state(self, event: StateChanged) -> None: ...
    def on_transcript(self, event: Transcript) -> None: ...
    def on_tool(self, event: ToolActivity) -> None: ...
    def on_turn(self, event: TurnCompleted) -> None: ...

    def on_notice(self, event: Notice) -> None:
        self.notices.append(event)


def test_the_runner_syncs_rt_articles_into_the_plans_folder_with_the_stored_credential(
    rt: RtInstance, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    title = f"Conference room display stays black {uuid.uuid4().hex[:6]}"
    made = create_article(rt, title, "1. Press the Input button.\n2. Choose HDMI 1.")
    monkeypatch.setenv(SECRET_ENV, rt.token)
    plan = plan_with(
        env,
        f'[tickets]\nsystem = "rt"\nurl = "{rt.base_url}"\nqueue = "{rt.queue}"\n'
        "[kb]\nticket_system_articles = true\n",
    )
    assert plan.articles_folder is not None and plan.kb_folders == (plan.articles_folder,)
    listener = first_sync(plan)
    folder = Path(plan.articles_folder)
    assert (folder / f"article-{made}.md").is_file() and listener.notices == []
    (found,) = results_titled(KnowledgeBase(plan.kb_folders), "the conference room display is black", title)
    assert found["steps"] == ["Press the Input button.", "Choose HDMI 1."]


def first_sync(plan: launch.LaunchPlan) -> Notices:
    """Runs the runner's article sync once, as a conversation's start does, and what it said."""
    listener = Notices()
    runner = launch.ConversationRunner(plan, listener)
    runner._start_article_sync()
    try:
        runner._await_first_article_sync()
    finally:
        runner.stop()
    return listener


def test_the_runner_says_once_when_the_articles_cannot_be_read(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.setattr("app.ticket_systems.load_ticket_secret", lambda system: None)
    plan = plan_with(
        env,
        '[tickets]\nsystem = "servicenow"\nurl = "https://acme.service-now.com"\nuser = "hv"\n'
        "[kb]\nticket_system_articles = true\n",
    )
    listener = first_sync(plan)
    (notice,) = listener.notices
    assert notice.level == "warning"
    assert notice.message.startswith("Knowledge base: ServiceNow's articles could not be read: no credential")


def test_the_setting_is_off_by_default_and_a_policy_can_lock_it(env: dict[str, str]) -> None:
    assert load_settings(None, env).typed.kb.ticket_system_articles is False
    on = load_settings(None, {**env, "HELPDESK_VOICE_KB_TICKET_SYSTEM_ARTICLES": "yes"})
    assert on.typed.kb.ticket_system_articles is True and on.origin("kb.ticket_system_articles") == "env"

    Path(env["HELPDESK_VOICE_POLICY"]).write_text("[locked]\n[locked.kb]\nticket_system_articles = true\n")
    Path(env["HELPDESK_VOICE_CONFIG_DIR"], "settings.toml").write_text(
        "[kb]\nticket_system_articles = false\n"
    )
    locked = load_settings(None, env)
    assert locked.locked("kb.ticket_system_articles") and locked.typed.kb.ticket_system_articles is True
    with pytest.raises(ConfigError, match="locked"):
        save_user_setting("kb.ticket_system_articles", False, env)
