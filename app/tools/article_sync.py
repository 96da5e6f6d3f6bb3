"""The ticket system's own knowledge base, mirrored into a local folder of article files.

Request Tracker and ServiceNow keep knowledge articles of their own. :class:`ArticleSync` asks the
connector for the published ones (:class:`~app.tools.connectors.base.ArticleSource`) and keeps one
Markdown file per article in a folder under the app's cache (:func:`articles_folder`), each with TOML
front matter holding its title and ``url`` (the system's page for it), HTML bodies turned into the
same Markdown-like text the company folders get. That folder is then one more ``kb.folders`` folder:
:class:`~app.tools.kb_sources.KnowledgeBase` re-reads it when its files change, the offline server
gets it with the others, and its vectors are cached per folder like theirs. So the sync only has to
keep the folder true, and touch nothing that did not change:

- a file is written only when its text differs from what is on disk (atomically, so a reader never
  sees half an article), so sizes and modification times change only for changed articles, and
  only those are re-read and re-embedded;
- the files of articles that are no longer published are deleted;
- a manifest (``.articles.json``, hidden from the scan) remembers each article's last-updated stamp,
  which lets a system that needs a request per article body (ServiceNow) skip unchanged ones.

The credentials stay in the app process: the offline server only ever reads the files. A sync never
raises: when the system cannot be reached or refuses, the last good copy stays as it is and the
report says why in one line (:attr:`SyncReport.problems`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import httpx

from app.fileio import remove_stale_temp_files, write_atomically
from app.paths import default_cache_dir
from app.tools.connectors.base import ArticleSource, ConnectorError, RemoteArticle
from app.tools.kb_sources import MAX_FILE_BYTES, html_to_markdown

__all__ = [
    "FOLDER_NAME",
    "MANIFEST",
    "SYNC_INTERVAL_S",
    "ArticleSync",
    "SyncReport",
    "articles_folder",
    "render_article",
]

_log = logging.getLogger(__name__)

FOLDER_NAME: Final = "ticket-system-articles"
MANIFEST: Final = ".articles.json"
# Articles change over days, not seconds; every few minutes keeps a fix published this morning in
# reach without the sync being a noticeable load on the system (one request per 100 RT articles).
SYNC_INTERVAL_S: Final = 300.0
_TIMEOUT: Final = httpx.Timeout(20.0, connect=5.0)
_SUFFIX: Final = ".md"
_UNSAFE: Final = re.compile(r"[^a-z0-9]+")


def articles_folder(system: str, url: str, cache_dir: Path | None = None) -> Path:
    """Where the articles of the system at ``url`` are kept: one folder per system and address.

    Another system or address gets another folder, so articles of the old one are never mixed in,
    and each keeps its own vector cache.
    """
    host = _UNSAFE.sub("-", (urlsplit(url).hostname or "").lower()).strip("-") or "system"
    digest = hashlib.sha256(url.strip().rstrip("/").encode("utf-8")).hexdigest()[:10]
    return (cache_dir or default_cache_dir()) / FOLDER_NAME / f"{system}-{host[:60]}-{digest}"


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What one sync did. ``ok`` is False when the system's list could not be read at all."""

    ok: bool
    articles: int = 0  # files in the folder now
    written: tuple[str, ...] = ()  # file names written (new or changed)
    removed: tuple[str, ...] = ()  # file names deleted (articles no longer published)
    problems: tuple[str, ...] = ()


def _toml_string(text: str) -> str:
    out = ['"']
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def render_article(article: RemoteArticle, system: str) -> str | None:
    """The file text for ``article`` (front matter, then its body as Markdown); None when it has no text."""
    body = article.body or ""
    if article.body_is_html:
        body, _ = html_to_markdown(body)
    body = body.replace("\r\n", "\n").replace("\r", "\n").strip()
    if not any(char.isalnum() for char in body):
        return None
    meta = [("title", article.title), ("url", article.url)]
    if article.summary:
        meta.append(("summary", article.summary))
    meta.append(("source", system))
    meta.append(("ref", article.ref))
    if article.number:
        meta.append(("number", article.number))
    if article.updated_at:
        meta.append(("updated", article.updated_at))
    lines = ["+++", *(f"{key} = {_toml_string(value)}" for key, value in meta), "+++", "", body, ""]
    return "\n".join(lines)


def _file_name(ref: str) -> str:
    safe = _UNSAFE.sub("-", ref.lower()).strip("-")[:80]
    if safe != ref:
        # Two refs that differ only in what is not safe in a file name must not share a file.
        safe = f"{safe}-{hashlib.sha256(ref.encode('utf-8')).hexdigest()[:8]}".lstrip("-")
    return f"article-{safe or 'x'}{_SUFFIX}"


@dataclass(frozen=True, slots=True)
class _Entry:
    file: str
    updated: str | None


def _read_manifest(folder: Path) -> tuple[dict[str, _Entry], str | None]:
    """The articles the folder holds by ref, and when the last good sync was; empty when unreadable."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}, None
    if not isinstance(data, dict) or not isinstance(data.get("articles"), dict):
        return {}, None
    entries: dict[str, _Entry] = {}
    for ref, raw in data["articles"].items():
        # A hand-edited or stale entry naming another file is not trusted: the name follows the ref.
        if isinstance(raw, dict) and raw.get("file") == _file_name(ref):
            updated = raw.get("updated")
            entries[ref] = _Entry(raw["file"], updated if isinstance(updated, str) else None)
    synced = data.get("synced_at")
    return entries, synced if isinstance(synced, str) else None


def _manifest_text(entries: Mapping[str, _Entry], synced_at: str) -> str:
    articles = {ref: {"file": entry.file, "updated": entry.updated} for ref, entry in sorted(entries.items())}
    return json.dumps({"version": 1, "synced_at": synced_at, "articles": articles}, indent=1) + "\n"


def _unchanged(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


class ArticleSync:
    """Keeps ``folder`` a copy of the published articles of the ticket system ``connect`` reaches.

    ``connect(client)`` makes the connector over an HTTP client the sync owns for one run (and
    closes after it); it may return None or a connector without a knowledge base, or raise
    :class:`ConnectorError` (a missing credential), which is reported like any other failure.
    :meth:`sync` runs once, on the calling thread; :meth:`start` runs it at once and then every
    ``interval_s`` on a thread of its own. ``on_problem`` hears each new problem line once.
    """

    def __init__(
        self,
        folder: Path,
        connect: Callable[[httpx.Client], object | None],
        *,
        system: str = "the ticket system",
        interval_s: float = SYNC_INTERVAL_S,
        on_problem: Callable[[str], None] | None = None,
        client_factory: Callable[[], httpx.Client] | None = None,
    ) -> None:
        self.folder = folder
        self._connect = connect
        self._system = system
        self._interval_s = interval_s
        self._on_problem = on_problem
        self._client_factory = client_factory or (
            lambda: httpx.Client(timeout=_TIMEOUT, follow_redirects=False)
        )
        self._lock = threading.Lock()  # one sync at a time: the thread's and a caller's
        self._stop = threading.Event()
        self._first_done = threading.Event()  # the thread's first sync ended (or it was stopped)
        self._thread: threading.Thread | None = None
        self._said: tuple[str, ...] = ()
        self.last_report: SyncReport | None = None

    # -- the thread ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="article-sync", daemon=True)
        self._thread.start()

    def wait_first(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for the thread's first sync; True when it has ended."""
        return self._first_done.wait(timeout)

    def stop(self, timeout: float = 1.0) -> None:
        """Asks the thread to end; a request in flight finishes on its own (bounded by the timeout)."""
        self._stop.set()
        self._first_done.set()  # nobody keeps waiting for a sync that will not come
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sync()
            self._first_done.set()
            self._stop.wait(self._interval_s)

    # -- one sync --------------------------------------------------------------------------------

    def sync(self) -> SyncReport:
        """Brings the folder up to date with the system, or keeps it as it is and says why. Never raises."""
        with self._lock:
            try:
                report = self._sync()
            except Exception as exc:  # a bug here must not end the thread or reach the caller
                _log.exception("the article sync failed")
                report = SyncReport(False, problems=(self._kept(f"the sync failed ({type(exc).__name__})"),))
            self.last_report = report
            self._tell(report.problems)
            return report

    def _sync(self) -> SyncReport:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return SyncReport(
                False, problems=(f"{self.folder}: cannot make the articles folder: {exc.strerror or exc}",)
            )
        entries, synced_at = _read_manifest(self.folder)
        held = {ref: entry for ref, entry in entries.items() if (self.folder / entry.file).is_file()}
        known = {ref: entry.updated for ref, entry in held.items() if entry.updated}
        client = self._client_factory()
        try:
            try:
                source = self._connect(client)
                if not isinstance(source, ArticleSource):
                    what = getattr(source, "name", None) or self._system
                    return SyncReport(
                        False,
                        problems=(f"{what} has no knowledge base this app can read: no articles are synced",),
                    )
                self._system = source.name
                listed = source.list_articles(known)
            except ConnectorError as error:
                return SyncReport(False, problems=(self._kept(error.message, synced_at),))
        finally:
            client.close()
        return self._mirror(listed, held)

    def _mirror(self, listed: list[RemoteArticle], held: Mapping[str, _Entry]) -> SyncReport:
        wanted: dict[str, _Entry] = {}
        written: list[str] = []
        problems: list[str] = []
        for article in listed:
            name = _file_name(article.ref)
            if article.ref in wanted:
                continue  # the system listed it twice (its list moved under the paging)
            if article.body is None:
                if article.ref in held:
                    wanted[article.ref] = held[article.ref]
                continue
            text = render_article(article, self._system)
            if text is None:
                problems.append(
                    f"{self._system} article {article.title!r} has no text this account can read; left out"
                )
                continue
            data = text.encode("utf-8")
            if len(data) > MAX_FILE_BYTES:
                problems.append(f"{self._system} article {article.title!r} is too long to read out; left out")
                continue
            path = self.folder / name
            if not _unchanged(path, data):
                try:
                    write_atomically(path, data)
                except OSError as exc:
                    problems.append(f"{path}: cannot write the article: {exc.strerror or exc}")
                    if not path.is_file():
                        continue
                    # The older copy stays; its stamp is not recorded, so the next sync fetches it again.
                    wanted[article.ref] = _Entry(name, None)
                    continue
                written.append(name)
            wanted[article.ref] = _Entry(name, article.updated_at)
        removed = self._remove_others({entry.file for entry in wanted.values()}, problems)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            write_atomically(self.folder / MANIFEST, _manifest_text(wanted, now))
        except OSError as exc:
            problems.append(f"{self.folder / MANIFEST}: cannot write: {exc.strerror or exc}")
        with contextlib.suppress(OSError):
            remove_stale_temp_files(self.folder)
        if written or removed:
            _log.info(
                "%s articles: %d written, %d removed, %d in all",
                self._system,
                len(written),
                len(removed),
                len(wanted),
            )
        return SyncReport(True, len(wanted), tuple(written), tuple(removed), tuple(problems))

    def _remove_others(self, keep: set[str], problems: list[str]) -> list[str]:
        removed: list[str] = []
        try:
            names = sorted(os.listdir(self.folder))
        except OSError as exc:
            problems.append(f"{self.folder}: cannot read the folder: {exc.strerror or exc}")
            return removed
        for name in names:
            # Only the sync's own files: the folder is the app's, but a stray file is not worth guessing at.
            if (
                name in keep
                or name.startswith(".")
                or not (name.startswith("article-") and name.endswith(_SUFFIX))
            ):
                continue
            try:
                (self.folder / name).unlink()
                removed.append(name)
            except FileNotFoundError:
                continue
            except OSError as exc:
                problems.append(
                    f"{self.folder / name}: cannot delete the withdrawn article: {exc.strerror or exc}"
                )
        return removed

    def _kept(self, reason: str, synced_at: str | None = None) -> str:
        reason = reason.rstrip(". ")
        if synced_at:
            return (
                f"{self._system}'s articles could not be updated: {reason}; the copy from {synced_at} is kept"
            )
        return f"{self._system}'s articles could not be read: {reason}"

    def _tell(self, problems: tuple[str, ...]) -> None:
        if problems == self._said:
            return  # the same trouble every few minutes is said once
        self._said = problems
        for problem in problems:
            _log.warning("knowledge base: %s", problem)
            if self._on_problem is not None:
                try:
                    self._on_problem(problem)
                except Exception:
                    _log.exception("reporting an article sync problem failed")
