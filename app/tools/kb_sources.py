"""The company's own articles: folders of Markdown, HTML and plain-text files beside the shipped ones.

Admins list folders in the ``kb.folders`` setting. Their files are written for people reading a
page, not for this app, so loading is forgiving: front matter is optional (TOML between ``+++``
lines, or simple ``key: value`` lines between ``---``), the title is the front matter's, else the
first ``# `` heading (HTML: the first ``<h1>``, else ``<title>``), else the file name, and the link
is the front matter's ``url`` (or ``link``), else the file's ``file://`` URL.

Every article must still be spoken one step at a time. A ``## Steps`` list is used as it is; else
numbered list items become the steps (bulleted ones when there are no numbered ones); else the
paragraphs do, each cut at sentence ends into steps short enough to say in one breath. HTML is first
turned into the same Markdown-like text with :mod:`html.parser`, scripts, styles and page chrome
(navigation, header, footer) dropped.

Loading is bounded (files over :data:`MAX_FILE_BYTES` are skipped, at most :data:`MAX_FILES` per
folder) and never raises: each unusable file becomes a problem line and is left out.
:class:`KnowledgeBase` keeps the articles current for the search tool by comparing each folder's
file names, sizes and modification times at most every few seconds, re-reading only a folder that
changed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Final, Literal

from app.tools.kb import Article, KeywordIndex, load_articles
from app.tools.tickets import CATEGORIES

__all__ = [
    "KB_FOLDERS_ENV",
    "MAX_FILES",
    "MAX_FILE_BYTES",
    "MAX_STEPS",
    "STEP_CHARS",
    "SUFFIXES",
    "KnowledgeBase",
    "folders_from_env",
    "folders_signature",
    "folders_to_env",
    "html_to_markdown",
    "load_folder",
    "load_knowledge_base",
    "parse_document",
    "split_steps",
]

_log = logging.getLogger(__name__)

# How the app hands ``kb.folders`` to the offline server it starts: a JSON list of paths (a plain
# os.pathsep-separated list, like PATH, is accepted too, for people starting a server by hand). Set
# but empty means "no company folders", which differs from unset. Not the setting's own variable
# (HELPDESK_VOICE_KB_FOLDERS, comma-separated): a folder's name may hold a comma.
KB_FOLDERS_ENV: Final = "HELPDESK_VOICE_SERVER_KB_FOLDERS"
SUFFIXES: Final = frozenset({".md", ".markdown", ".html", ".htm", ".txt"})
MAX_FILE_BYTES: Final = 1_000_000
MAX_FILES: Final = 2000
# About 35 spoken words: longer than that and a listener loses the start before the end. Short
# sentences are joined into one step only up to about 20 words, so each step stays one action or two.
STEP_CHARS: Final = 220
PACK_CHARS: Final = 120
# A walk-through longer than this is a manual, not a fix; the rest stays readable via the link.
MAX_STEPS: Final = 40
_SUMMARY_CHARS: Final = 240
DEFAULT_ESCALATE: Final = "If these steps do not fix it, the helpdesk can take it from here with a ticket."
# A title shorter than this ("VPN", "Printers") is too likely to be said about something else.
_MIN_CITED_TITLE: Final = 12
_IGNORED_HEADINGS: Final = frozenset({"steps", "escalate when", "when to escalate", "escalation", "contents"})
_ESCALATE_HEADINGS: Final = frozenset({"escalate when", "when to escalate", "escalation"})


def _spaced(title: str) -> str:
    return " ".join(title.lower().split())


def folders_to_env(folders: Iterable[str | Path]) -> str:
    return json.dumps([str(folder) for folder in folders])


def folders_from_env(environ: Mapping[str, str] = os.environ) -> tuple[str, ...] | None:
    """The folders the app passed in :data:`KB_FOLDERS_ENV`; None when it passed none."""
    value = environ.get(KB_FOLDERS_ENV)
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value.split(os.pathsep)
    if isinstance(parsed, str):
        parsed = [parsed]
    if not isinstance(parsed, list):
        return ()
    return tuple(item.strip() for item in parsed if isinstance(item, str) and item.strip())


# ---------------------------------------------------------------------------------------------------
# HTML to Markdown-like text
# ---------------------------------------------------------------------------------------------------

_SKIPPED_TAGS: Final = frozenset(
    {"script", "style", "noscript", "template", "svg", "nav", "header", "footer", "aside", "form", "head"}
)
_BLOCK_TAGS: Final = frozenset(
    {"p", "div", "section", "article", "main", "table", "tr", "blockquote", "pre", "hr", "dl", "dd", "dt"}
)
_VOID_TAGS: Final = frozenset({"br", "hr", "img", "meta", "link", "input", "wbr", "col", "area", "base"})


class _HtmlText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._in_title = False
        self._skipping: list[str] = []  # the open skipped elements; text inside them is dropped
        self._lists: list[str] = []
        self._items = 0  # open <li> elements

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID_TAGS:
            if tag == "br" and not self._skipping:
                self.parts.append(" " if self._items else "\n")
            return
        if tag == "title":
            self._in_title = True
        # <head> is skipped for its text, but its <title> is still wanted.
        if self._skipping or tag in _SKIPPED_TAGS:
            self._skipping.append(tag)
            return
        if tag in _BLOCK_TAGS:
            # Exported pages wrap list items in <p>: a break there would orphan the item's marker.
            self.parts.append(" " if self._items else "\n\n")
        elif len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in ("ol", "ul"):
            self._lists.append(tag)
            self.parts.append("\n\n")
        elif tag == "li":
            self._items += 1
            kind = self._lists[-1] if self._lists else "ul"
            indent = "  " * max(0, len(self._lists) - 1)
            self.parts.append(f"\n\n{indent}{'1.' if kind == 'ol' else '-'} ")
        elif tag in ("td", "th"):
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if self._skipping:
            if tag in self._skipping:  # tolerate unclosed children of a skipped element
                del self._skipping[len(self._skipping) - 1 - self._skipping[::-1].index(tag) :]
            return
        if tag in ("ol", "ul") and self._lists:
            self._lists.pop()
            self.parts.append("\n\n")
        elif tag == "li":
            self._items = max(0, self._items - 1)
            self.parts.append("\n\n")
        elif tag in _BLOCK_TAGS:
            self.parts.append(" " if self._items else "\n\n")
        elif len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if not self._skipping:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_markdown(html: str) -> tuple[str, str]:
    """Markdown-like text of an HTML page (headings, list items, paragraphs) and its ``<title>``."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    lines = [line.strip() for line in "".join(parser.parts).splitlines()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text, " ".join(parser.title.split())


# ---------------------------------------------------------------------------------------------------
# Markdown-like text to blocks and steps
# ---------------------------------------------------------------------------------------------------

BlockKind = Literal["heading", "numbered", "bulleted", "paragraph"]


@dataclass(frozen=True, slots=True)
class _Block:
    kind: BlockKind
    text: str
    level: int = 0  # heading level
    section: str = ""  # the heading this block sits under, lowercased


_HEADING_LINE: Final = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_NUMBERED_ITEM: Final = re.compile(r"^\s*(?:\d{1,3}|[a-zA-Z])[.)]\s+(.*)$")
_BULLET_ITEM: Final = re.compile(r"^\s*[-*+\u2022]\s+(.*)$")
_SETEXT: Final = re.compile(r"^\s*(=+|-+)\s*$")
_RULE: Final = re.compile(r"^\s*([-*_=])(\s*\1){2,}\s*$")
_IMAGE: Final = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_LINK: Final = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_TAG: Final = re.compile(r"<[^>\n]+>")
_EMPHASIS: Final = re.compile(r"\*\*|__|`|(?<![\w*])\*(?=\S)|(?<=\S)\*(?![\w*])")
_TABLE_RULE: Final = re.compile(r"^\s*\|[\s:|-]*-{3,}[\s:|-]*$")
_SENTENCE_END: Final = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])")
_SOFT_BREAK: Final = re.compile(r"(?<=[;:,])\s+")


def _clean(text: str) -> str:
    # Read aloud: link targets, emphasis marks and stray tags are only noise.
    text = _LINK.sub(r"\1", _IMAGE.sub("", text))
    text = _EMPHASIS.sub("", _TAG.sub("", text))
    if text.lstrip().startswith(">"):
        text = text.lstrip().lstrip(">")
    return " ".join(text.replace("|", " ").split())


def _blocks(body: str) -> list[_Block]:
    blocks: list[_Block] = []
    section = ""
    current: list[str] = []
    kind: BlockKind = "paragraph"

    def flush() -> None:
        nonlocal current
        text = _clean(" ".join(current))
        if text:
            blocks.append(_Block(kind, text, section=section))
        current = []

    for line in body.splitlines():
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")) or _TABLE_RULE.match(line):
            continue  # code fences and table rules; the code lines themselves are kept as text
        heading = _HEADING_LINE.match(stripped)
        if heading is None and _SETEXT.match(line) and current and kind == "paragraph" and len(current) == 1:
            heading_text, level = current[0], 1 if "=" in stripped else 2
            current = []
        elif heading is not None:
            heading_text, level = heading.group(2), len(heading.group(1))
        else:
            heading_text, level = "", 0
        if heading_text or heading is not None:
            flush()
            text = _clean(heading_text)
            if text:
                blocks.append(_Block("heading", text, level, section))
                section = text.lower().rstrip(":")
            continue
        if _RULE.match(line):
            flush()
            kind = "paragraph"
            continue
        numbered = _NUMBERED_ITEM.match(line)
        item = numbered or _BULLET_ITEM.match(line)
        if item is not None:
            flush()
            kind = "numbered" if numbered else "bulleted"
            current = [item.group(1)]
        elif not stripped:
            flush()
            kind = "paragraph"
        else:
            current.append(stripped)  # a paragraph line, or a list item's continuation
    flush()
    return blocks


def _sentences(text: str) -> list[str]:
    return [piece.strip() for piece in _SENTENCE_END.split(text) if piece.strip()]


def _fit(text: str, limit: int) -> list[str]:
    """``text`` cut into steps of at most ``limit`` characters: at sentence ends, then commas, then words.

    Whole short sentences are packed together up to :data:`PACK_CHARS`; the parts of one sentence too
    long to say at once up to ``limit``, so a clause is not left dangling on its own.
    """
    if len(text) <= min(limit, PACK_CHARS):
        return [text]
    steps: list[str] = []
    short: list[str] = []  # consecutive whole sentences, not yet packed
    for sentence in _sentences(text):
        if len(sentence) <= limit:
            short.append(sentence)
            continue
        steps += _pack(short, min(limit, PACK_CHARS))
        short = []
        pieces: list[str] = []
        for clause in _SOFT_BREAK.split(sentence):
            while len(clause) > limit:
                cut = clause.rfind(" ", 0, limit)
                cut = cut if cut > limit // 2 else limit
                pieces.append(clause[:cut].strip())
                clause = clause[cut:].strip()
            if clause:
                pieces.append(clause)
        steps += _pack(pieces, limit)
    return steps + _pack(short, min(limit, PACK_CHARS))


def _pack(pieces: Sequence[str], limit: int) -> list[str]:
    packed: list[str] = []
    for piece in pieces:
        if packed and len(packed[-1]) + 1 + len(piece) <= limit:
            packed[-1] += " " + piece
        else:
            packed.append(piece)
    return packed


def split_steps(blocks_or_text: str | Sequence[_Block]) -> list[str]:
    """Spoken steps of a free-form article body: its list items, else its paragraphs cut to size.

    Numbered items win over bulleted ones (a page often lists symptoms or links with bullets and the
    fix with numbers). A list item or paragraph longer than :data:`STEP_CHARS` is cut at sentence
    ends; short sentences of one paragraph are packed into one step up to that length.
    """
    blocks = _blocks(blocks_or_text) if isinstance(blocks_or_text, str) else list(blocks_or_text)
    body = [block for block in blocks if block.section not in _ESCALATE_HEADINGS and block.kind != "heading"]
    in_steps = [block for block in body if block.section == "steps" and block.kind != "paragraph"]
    numbered = [block for block in body if block.kind == "numbered"]
    bulleted = [block for block in body if block.kind == "bulleted"]
    if in_steps:
        chosen = in_steps
    elif len(numbered) >= 2:
        chosen = numbered
    elif len(bulleted) >= 2:
        chosen = bulleted
    else:
        chosen = body
    steps: list[str] = []
    for block in chosen:
        steps.extend(_fit(block.text, STEP_CHARS))
    return [step for step in steps if any(ch.isalnum() for ch in step)]


# ---------------------------------------------------------------------------------------------------
# One file to an article
# ---------------------------------------------------------------------------------------------------

_SIMPLE_META: Final = re.compile(r"^([A-Za-z_][\w-]*)\s*:\s*(.*)$")


def _front_matter(text: str) -> tuple[dict[str, Any], str]:
    """The front matter (``+++`` TOML or ``---`` key: value lines) and the body after it."""
    lines = text.splitlines()
    if not lines or lines[0].strip() not in ("+++", "---"):
        return {}, text
    fence = lines[0].strip()
    end = next((i for i in range(1, len(lines)) if lines[i].strip() == fence), None)
    if end is None:
        return {}, text
    block = "\n".join(lines[1:end])
    body = "\n".join(lines[end + 1 :])
    if fence == "+++":
        try:
            return tomllib.loads(block), body
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"front matter is not valid TOML: {exc}") from None
    meta: dict[str, Any] = {}
    for line in lines[1:end]:
        match = _SIMPLE_META.match(line.strip())
        if match is None:
            continue
        key, value = match.group(1).lower(), match.group(2).strip()
        if value.startswith("[") and value.endswith("]"):
            meta[key] = [item.strip().strip("\"'") for item in value[1:-1].split(",") if item.strip()]
        else:
            meta[key] = value.strip("\"'")
    return meta, body


def _meta_text(meta: Mapping[str, Any], *keys: str) -> str:
    for key in keys:
        value = meta.get(key)
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())
    return ""


def _meta_list(meta: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = meta.get(key)
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list):
        return ()
    return tuple(" ".join(item.split()) for item in value if isinstance(item, str) and item.strip())


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit - 1)
    return text[: cut if cut > 0 else limit - 1].rstrip(",;:") + "\u2026"


def _slug(text: str) -> str:
    return "-".join(re.findall(r"[a-z0-9]+", text.lower())) or "article"


def _looks_like_a_title(block: _Block) -> bool:
    return block.kind == "paragraph" and len(block.text) <= 80 and block.text[-1:] not in ".!?:;,"


def parse_document(text: str, path: Path, folder: Path | None = None) -> Article:
    """An article from one company file's text; ValueError when nothing in it can be spoken."""
    folder = folder if folder is not None else path.parent
    text = text.lstrip("\ufeff")
    html_title = ""
    suffix = path.suffix.lower()
    meta, body = _front_matter(text) if suffix not in (".html", ".htm") else ({}, text)
    if suffix in (".html", ".htm"):
        body, html_title = html_to_markdown(body)
    blocks = _blocks(body)
    if suffix == ".txt" and blocks and _looks_like_a_title(blocks[0]):
        # Plain text has no heading syntax: a short first line standing alone is the heading.
        blocks[0] = _Block("heading", blocks[0].text, 1)
    headings = [block for block in blocks if block.kind == "heading"]
    first_heading = next((block for block in headings if block.level == 1), headings[0] if headings else None)
    title = (
        _meta_text(meta, "title")
        or (first_heading.text if first_heading is not None else "")
        or html_title
        or " ".join(path.stem.replace("_", " ").replace("-", " ").split()).capitalize()
    )
    steps = split_steps(blocks)
    if not steps:
        raise ValueError("holds no text to walk a user through")
    if len(steps) > MAX_STEPS:
        steps = steps[:MAX_STEPS]
    paragraphs = [b.text for b in blocks if b.kind == "paragraph" and b.section not in _ESCALATE_HEADINGS]
    summary = _meta_text(meta, "summary", "description") or _clip(
        paragraphs[0] if paragraphs else steps[0], 240
    )
    escalate = _meta_text(meta, "escalate") or " ".join(
        block.text for block in blocks if block.section in _ESCALATE_HEADINGS and block.kind != "heading"
    )
    category = _meta_text(meta, "category").lower()
    # Section headings name what a page covers ("Mapping a drive on a Mac"): cheap, telling keywords.
    keywords = _meta_list(meta, "keywords") or tuple(
        dict.fromkeys(
            block.text
            for block in headings
            if block is not first_heading and block.text.lower().rstrip(":") not in _IGNORED_HEADINGS
        )
    )
    link = _meta_text(meta, "url", "link") or path.resolve().as_uri()
    relative = path.relative_to(folder) if path.is_relative_to(folder) else Path(path.name)
    return Article(
        id=_slug(str(relative.with_suffix(""))),
        title=title,
        summary=summary,
        keywords=keywords[:20],
        phrasings=_meta_list(meta, "phrasings"),
        category=category if category in CATEGORIES else "other",
        steps=tuple(steps),
        escalate=escalate or DEFAULT_ESCALATE,
        path=path,
        link=link,
        source=str(folder),
    )


def _decode(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    if b"\0" in data[:8192]:
        raise ValueError("is a binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


# ---------------------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------------------

Signature = tuple[tuple[str, int, int], ...]


def _scan(folder: Path) -> tuple[list[Path], Signature, list[str]]:
    """The article files under ``folder`` (sorted, bounded) and their names, sizes and times.

    Hidden entries are skipped, and symbolic links to folders are not followed, so a link back up
    the tree cannot make the walk endless.
    """
    files: list[tuple[Path, int, int]] = []
    problems: list[str] = []
    pending = [folder]
    truncated = False
    while pending and not truncated:
        directory = pending.pop()
        try:
            with os.scandir(directory) as entries:
                listed = sorted(entries, key=lambda entry: entry.name)
        except OSError as exc:
            problems.append(f"{directory}: cannot read the folder: {exc.strerror or exc}")
            continue
        subfolders: list[Path] = []
        for entry in listed:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(Path(entry.path))
                elif Path(entry.name).suffix.lower() in SUFFIXES and entry.is_file():
                    if len(files) >= MAX_FILES:
                        truncated = True
                        break
                    stat = entry.stat()
                    files.append((Path(entry.path), stat.st_size, stat.st_mtime_ns))
            except OSError as exc:
                problems.append(f"{entry.path}: {exc.strerror or exc}")
        pending.extend(reversed(subfolders))
    if truncated:
        problems.append(f"{folder}: more than {MAX_FILES} article files; only the first {MAX_FILES} are used")
    files.sort(key=lambda item: item[0])
    signature = tuple((str(path.relative_to(folder)), size, mtime) for path, size, mtime in files)
    return [path for path, _, _ in files], signature, problems


def _load_files(folder: Path, paths: Sequence[Path]) -> tuple[list[Article], list[str]]:
    articles: list[Article] = []
    problems: list[str] = []
    for path in paths:
        if path.name.lower() in ("readme.md", "readme.txt"):
            continue
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise ValueError(f"is {size / 1e6:.1f} MB, over the {MAX_FILE_BYTES // 1_000_000} MB limit")
            articles.append(parse_document(_decode(path.read_bytes()), path, folder))
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: {exc}")
    return articles, problems


def folders_signature(folders: Sequence[str | Path]) -> tuple[Signature | None, ...]:
    """What changes when any article file in ``folders`` is added, removed or changed (names, sizes,
    modification times); None for a folder that is not there. Stats only, no file is read."""
    signatures: list[Signature | None] = []
    for folder in folders:
        root = Path(folder).expanduser()
        signatures.append(_scan(root)[1] if root.is_dir() else None)
    return tuple(signatures)


def load_folder(folder: str | Path) -> tuple[list[Article], list[str]]:
    """Every usable article file under ``folder``, and a problem line per file left out."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        return [], [f"{root}: not a folder (the kb.folders setting)"]
    paths, _, problems = _scan(root)
    articles, more = _load_files(root, paths)
    return articles, problems + more


def _unique_ids(articles: Iterable[Article]) -> list[Article]:
    # The brain and tickets name articles by id; two folders may well both hold a "vpn.md".
    seen: set[str] = set()
    unique: list[Article] = []
    for article in articles:
        wanted, number = article.id, 2
        while wanted in seen:
            wanted, number = f"{article.id}-{number}", number + 1
        seen.add(wanted)
        unique.append(article if wanted == article.id else dataclasses.replace(article, id=wanted))
    return unique


def load_knowledge_base(
    folders: Sequence[str | Path] = (), kb_dir: Path | None = None
) -> tuple[list[Article], list[str]]:
    """The shipped articles (``kb_dir``) followed by every folder's, ids made unique, and the problems."""
    articles, problems = load_articles(kb_dir)
    for folder in folders:
        found, trouble = load_folder(folder)
        articles.extend(found)
        problems.extend(trouble)
    return _unique_ids(articles), problems


@dataclass
class _Folder:
    path: Path
    signature: Signature | None = None
    articles: tuple[Article, ...] = ()
    problems: tuple[str, ...] = ()


class KnowledgeBase:
    """The shipped articles plus the folders', kept current for the search tool.

    :meth:`index` stats each folder's files at most every ``recheck_after`` seconds and re-reads a
    folder whose files were added, removed or changed (name, size or modification time); a search
    between checks costs nothing extra. Thread-safe: the tool calls it from worker threads.
    """

    def __init__(
        self,
        folders: Sequence[str | Path] = (),
        kb_dir: Path | None = None,
        *,
        recheck_after: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._shipped, shipped_problems = load_articles(kb_dir)
        self._shipped_problems = tuple(shipped_problems)
        for problem in shipped_problems:
            _log.warning("knowledge base: %s", problem)
        self._folders = [_Folder(Path(folder).expanduser()) for folder in dict.fromkeys(folders)]
        self._recheck_after = recheck_after
        self._clock = clock
        self._lock = threading.Lock()
        self._checked = -float("inf")
        self._index = KeywordIndex(self._shipped)
        self.reloads = 0  # folder re-reads, for tests and diagnostics
        self._refresh(force=True)

    @property
    def problems(self) -> list[str]:
        return [*self._shipped_problems, *(p for folder in self._folders for p in folder.problems)]

    @property
    def articles(self) -> list[Article]:
        return self.index().articles

    def cited_in(self, text: str) -> list[Article]:
        """The articles with a link whose title ``text`` names (any case), in the order of the index.

        The offline assistant names the article it walks through by its title, and a cloud model is
        told to: this is how the transcript can show the link beside the words.
        """
        said = " ".join(text.lower().split())
        return [
            article
            for article in self.index().articles
            if article.link and len(article.title) >= _MIN_CITED_TITLE and _spaced(article.title) in said
        ]

    def index(self) -> KeywordIndex:
        """The keyword index over the current articles (re-reading changed folders when due)."""
        with self._lock:
            if self._clock() - self._checked >= self._recheck_after:
                self._refresh(force=False)
            return self._index

    def _refresh(self, *, force: bool) -> None:
        self._checked = self._clock()
        changed = False
        for folder in self._folders:
            if not folder.path.is_dir():
                signature: Signature | None = None
                paths: list[Path] = []
                scan_problems = [f"{folder.path}: not a folder (the kb.folders setting)"]
            else:
                paths, signature, scan_problems = _scan(folder.path)
            if not force and signature == folder.signature and folder.signature is not None:
                continue
            if not force and signature is None and folder.signature is None:
                continue  # still missing: said so already
            articles, problems = _load_files(folder.path, paths) if signature is not None else ([], [])
            folder.signature, folder.articles = signature, tuple(articles)
            folder.problems = (*scan_problems, *problems)
            for problem in folder.problems:  # said once per change, not at every search
                _log.warning("knowledge base: %s", problem)
            changed = True
            if not force:
                self.reloads += 1
                _log.info("knowledge base: %s changed; %d articles now", folder.path, len(articles))
        if changed:
            merged = _unique_ids([*self._shipped, *(a for folder in self._folders for a in folder.articles)])
            self._index = KeywordIndex(merged)
