"""Finding the knowledge-base article a spoken request is about, and how sure we are.

Each article is represented by several short texts (title, summary, keywords, and every example
phrasing); a request's similarity to an article is its best cosine similarity to any of them, since
a request usually resembles one phrasing closely rather than all of them a little. That similarity
is blended with the BM25 keyword score of :class:`app.tools.kb.KeywordIndex`, which rescues
requests naming a product the embedding model has never seen ("globalprotect", "jabra") and
lowers scores for requests that merely sound like IT ("book me a flight").

Without the encoder (not installed, model files missing, or it fails) the retriever runs on keywords
alone, with its own thresholds: worse, but never a crash.

The thresholds were chosen on the ``dev`` half of ``tests/data/kb_requests.jsonl`` only; the
``heldout`` half checks them (see ``tests/test_retrieval.py``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol

import numpy as np
import numpy.typing as npt

from app.fileio import write_atomically
from app.tools.kb import Article, KeywordIndex
from app.tools.kb_sources import folders_signature, load_knowledge_base

__all__ = [
    "EMBEDDING_THRESHOLDS",
    "KEYWORD_THRESHOLDS",
    "KEYWORD_WEIGHT",
    "ArticleRetriever",
    "Assessment",
    "Decision",
    "DecisionKind",
    "Encoder",
    "Match",
    "Retrieval",
    "Thresholds",
    "WatchedRetriever",
    "article_texts",
    "judge",
    "load_retriever",
    "load_watched_retriever",
]

_log = logging.getLogger(__name__)

DecisionKind = Literal["confident", "ambiguous", "none"]
Mode = Literal["embedding", "keyword"]

# Weight of the 0..1 keyword score beside the 0..1 cosine similarity. Accuracy on the dev split is
# flat from 0.4 to 0.7; the middle of that plateau. The blend is divided by 1 + weight to stay 0..1.
KEYWORD_WEIGHT: Final = 0.5
# Texts per encoder call at start-up, and how often the vector cache saves what is done so far.
EMBED_BATCH: Final = 512
_WORD: Final = re.compile(r"\w")


class Encoder(Protocol):
    """What the retriever needs from a sentence encoder: unit vectors, one row per text."""

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When a best score counts as no match, as a sure match, or as needing a question.

    ``none_below``: a best score under this matches nothing. ``confident_at`` and ``margin``: a
    best score at least this high and at least ``margin`` above the runner-up is a sure match.
    Everything between is ambiguous. A runner-up under ``none_below`` is not a real candidate.
    """

    none_below: float
    confident_at: float
    margin: float


# Dev split (48 labelled, 6 null requests): the highest null request scored 0.27 ("book me a
# flight", which hits the booking article's keywords), the lowest correct match 0.39; none_below sits
# between. Every dev request at or above 0.42 with a lead of 0.03 or more was right; the only wrong
# top-1 scored 0.34. Dev results do not change for none_below 0.30..0.36 or confident_at 0.40..0.45.
# The margin is the top of the range that keeps dev accuracy (0.08 turns one more dev request into a
# question): vague requests that fit two articles nearly equally, such as "I can't connect to the
# network" (Wi-Fi 0.71, VPN 0.64), then get a clarifying question instead of a guess.
EMBEDDING_THRESHOLDS: Final = Thresholds(none_below=0.33, confident_at=0.42, margin=0.08)
# Keywords alone separate worse: null requests reach 0.26 while some correct matches score 0.04.
# This keeps five of six dev null requests out at the cost of four labelled ones.
KEYWORD_THRESHOLDS: Final = Thresholds(none_below=0.20, confident_at=0.30, margin=0.10)


@dataclass(frozen=True, slots=True)
class Match:
    """An article and how well it fits the request (0..1; higher is better).

    ``similarity`` is the embedding part (None in keyword mode), ``keyword`` the BM25 part.
    """

    article: Article
    score: float
    similarity: float | None
    keyword: float


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a request: walk through ``best``, ask which one, or say nothing fits.

    ``runner_up`` is the second article only when it is itself a plausible match (scored at least
    the no-match threshold), so a clarifying question never offers a far-fetched alternative.
    """

    kind: DecisionKind
    best: Match | None
    runner_up: Match | None


@dataclass(frozen=True, slots=True)
class Assessment:
    """A request's decision together with every article's score, from one embedding of the request.

    The dialog needs more than the decision when the user is already in the middle of one article:
    how well the request fits *that* article too. ``thresholds`` are the ones the decision was made
    with (keyword ones when embedding this request failed, even in embedding mode).
    """

    decision: Decision
    matches: tuple[Match, ...]  # every article, best first
    thresholds: Thresholds

    def score(self, article_id: str) -> float:
        """``article_id``'s score for the request; 0 for an article not scored."""
        return next((match.score for match in self.matches if match.article.id == article_id), 0.0)


def article_texts(article: Article) -> list[str]:
    """The texts an article is embedded as: title, summary, keywords, and each phrasing.

    A company article may have no keywords or phrasings: an empty text would only add noise.
    """
    texts = [article.title, article.summary, ", ".join(article.keywords), *article.phrasings]
    return [text for text in texts if text.strip()]


class Retrieval(Protocol):
    """What the brain asks of a retriever: an assessment of a request, and which articles answer
    (``generation`` changes when they do, so results kept for a request are not reused)."""

    @property
    def generation(self) -> int: ...

    def assess(self, query: str) -> Assessment: ...


class ArticleRetriever:
    """Ranks articles for a request with embeddings plus keywords, or keywords alone.

    ``encoder`` None, or an encoder that fails while embedding the articles, gives keyword mode.
    A failure while embedding a request falls back to keywords for that request only.
    """

    def __init__(
        self,
        articles: Sequence[Article],
        encoder: Encoder | None,
        keyword_index: KeywordIndex | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self._articles = list(articles)
        self._by_id = {article.id: article for article in self._articles}
        self._keywords = keyword_index if keyword_index is not None else KeywordIndex(self._articles)
        self._encoder: Encoder | None = None
        self._vectors: npt.NDArray[np.float32] = np.zeros((0, 0), dtype=np.float32)
        self._owner: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        self.embedded_texts = 0  # texts the encoder embedded at start-up (not found in the cache)
        if encoder is not None and self._articles:
            self._embed_articles(encoder, cache_dir)

    def _embed_articles(self, encoder: Encoder, cache_dir: Path | None) -> None:
        texts: list[str] = []
        owners: list[int] = []
        by_source: dict[str, list[int]] = {}  # a source's rows in ``texts``
        for index, article in enumerate(self._articles):
            for text in article_texts(article):
                by_source.setdefault(article.source, []).append(len(texts))
                texts.append(text)
                owners.append(index)
        identity = getattr(encoder, "identity", None)
        rows: list[npt.NDArray[np.float32] | None] = [None] * len(texts)
        caches: dict[str, tuple[VectorCache, list[int]]] = {}
        current: set[str] = set()  # sources whose cache file already holds exactly their texts
        for source, members in by_source.items():
            cache = VectorCache.for_texts(cache_dir, identity, [texts[i] for i in members], source)
            if cache is None:
                continue
            known, whole = cache.known()
            for row in members:
                rows[row] = known.get(text_key(texts[row]))
            caches[source] = (cache, members)
            if whole and all(rows[row] is not None for row in members):
                current.add(source)
        missing = [row for row, vector in enumerate(rows) if vector is None]
        if missing and not self._embed_rows(encoder, texts, rows, missing, owners, caches):
            return
        vectors = _assemble(rows)
        if vectors is None:  # cached rows of another width: embed everything afresh, uncached
            if cache_dir is not None:
                self._embed_articles(encoder, None)
            return
        self.embedded_texts = len(missing)
        if missing:
            _log.info(
                "embedded %d of %d article texts; the rest came from the cache", len(missing), len(texts)
            )
        for source, (cache, members) in caches.items():
            if source not in current:
                cache.save(vectors[members], [text_key(texts[row]) for row in members])
        self._encoder = encoder
        self._vectors = vectors
        self._owner = np.asarray(owners, dtype=np.intp)

    def _embed_rows(
        self,
        encoder: Encoder,
        texts: Sequence[str],
        rows: list[npt.NDArray[np.float32] | None],
        missing: Sequence[int],
        owners: Sequence[int],
        caches: dict[str, tuple[VectorCache, list[int]]],
    ) -> bool:
        """Embeds ``missing`` rows in batches; False (keyword mode) when the encoder fails.

        A large company folder takes minutes to embed the first time, longer than the launcher waits
        for a start: each batch is cached as it is done, so a restart carries on where this one was.
        """
        for start in range(0, len(missing), EMBED_BATCH):
            batch = missing[start : start + EMBED_BATCH]
            try:
                fresh = np.asarray(encoder.encode([texts[i] for i in batch]), dtype=np.float32)
            except Exception:  # any encoder failure means keyword mode, never a dead assistant
                _log.warning("embedding the knowledge base failed; using keyword search only", exc_info=True)
                return False
            if not _usable(fresh, len(batch)):
                _log.warning(
                    "the encoder returned %s for %d texts; using keyword search only", fresh.shape, len(batch)
                )
                return False
            for row, vector in zip(batch, fresh, strict=True):
                rows[row] = vector
            if start + EMBED_BATCH >= len(missing):
                break  # the caller saves the finished sources
            touched = {self._articles[owners[row]].source for row in batch}
            for source in touched & caches.keys():
                cache, members = caches[source]
                done = [row for row in members if rows[row] is not None]
                partial = _assemble([rows[row] for row in done])
                if partial is not None:
                    cache.save(partial, [text_key(texts[row]) for row in done])
        return True

    @property
    def mode(self) -> Mode:
        return "embedding" if self._encoder is not None else "keyword"

    @property
    def generation(self) -> int:
        return 0  # its articles never change

    @property
    def thresholds(self) -> Thresholds:
        return EMBEDDING_THRESHOLDS if self.mode == "embedding" else KEYWORD_THRESHOLDS

    @property
    def articles(self) -> list[Article]:
        return list(self._articles)

    def article(self, article_id: str) -> Article | None:
        return self._by_id.get(article_id)

    def _similarities(self, query: str) -> npt.NDArray[np.float32] | None:
        """Per-article best cosine similarity, or None when there is no working encoder."""
        if self._encoder is None:
            return None
        try:
            vector = np.asarray(self._encoder.encode([query]), dtype=np.float32).reshape(-1)
            per_text = self._vectors @ vector
        except Exception:
            _log.warning("embedding a request failed; using keyword search for it", exc_info=True)
            return None
        if not np.isfinite(per_text).all():
            return None
        best = np.full(len(self._articles), -1.0, dtype=np.float32)
        np.maximum.at(best, self._owner, per_text)
        return np.clip(best, 0.0, 1.0)

    def _score(self, query: str, among: Sequence[Article] | None = None) -> tuple[list[Match], Mode]:
        if not _WORD.search(query) or not self._articles:
            return [], self.mode
        keyword = {article.id: score for article, score in self._keywords.search(query, len(self._articles))}
        similarities = self._similarities(query)
        wanted = None if among is None else {article.id for article in among}
        candidates = [i for i, article in enumerate(self._articles) if wanted is None or article.id in wanted]
        matches: list[Match] = []
        for index in candidates:
            article = self._articles[index]
            kw = keyword.get(article.id, 0.0)
            if similarities is None:
                matches.append(Match(article, kw, None, kw))
            else:
                similarity = float(similarities[index])
                score = (similarity + KEYWORD_WEIGHT * kw) / (1.0 + KEYWORD_WEIGHT)
                matches.append(Match(article, score, similarity, kw))
        matches.sort(key=lambda match: (-match.score, match.article.id))
        return matches, "keyword" if similarities is None else "embedding"

    def retrieve(self, query: str, limit: int = 3) -> list[Match]:
        """The best ``limit`` articles for ``query``, best first (keyword mode: only those with a hit)."""
        matches, mode = self._score(query)
        if mode == "keyword":
            matches = [match for match in matches if match.score > 0.0]
        return matches[: max(0, limit)]

    def rank(self, query: str, among: Sequence[Article]) -> list[Match]:
        """Scores of just ``among`` for ``query``, best first: used to resolve "which of these two"."""
        matches, _ = self._score(query, among)
        return matches

    def decide(self, query: str) -> Decision:
        """Retrieve and judge: a sure match, two (or one) candidates to ask about, or nothing."""
        return self.assess(query).decision

    def assess(self, query: str) -> Assessment:
        """:meth:`decide`'s decision plus every article's score (as :meth:`rank` gives them)."""
        matches, mode = self._score(query)
        thresholds = EMBEDDING_THRESHOLDS if mode == "embedding" else KEYWORD_THRESHOLDS
        return Assessment(judge(matches, thresholds), tuple(matches), thresholds)


def judge(matches: Sequence[Match], thresholds: Thresholds) -> Decision:
    """The decision for ranked ``matches`` (best first) under ``thresholds``."""
    if not matches or matches[0].score < thresholds.none_below:
        return Decision("none", None, None)
    best = matches[0]
    second = matches[1] if len(matches) > 1 else None
    runner_up = second if second is not None and second.score >= thresholds.none_below else None
    lead = best.score - (second.score if second is not None else 0.0)
    if best.score >= thresholds.confident_at and lead >= thresholds.margin:
        return Decision("confident", best, runner_up)
    return Decision("ambiguous", best, runner_up)


def _usable(vectors: npt.NDArray[np.float32], rows: int) -> bool:
    return vectors.ndim == 2 and vectors.shape[0] == rows and bool(np.isfinite(vectors).all())


def text_key(text: str) -> str:
    """What a cached vector is filed under: a hash of the text it embeds."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _assemble(rows: Sequence[npt.NDArray[np.float32] | None]) -> npt.NDArray[np.float32] | None:
    """The rows as one matrix; None when one is missing or they differ in width."""
    if not rows or any(row is None for row in rows):
        return None
    widths = {row.shape for row in rows if row is not None}
    if len(widths) != 1:
        return None
    return np.stack([row for row in rows if row is not None]).astype(np.float32, copy=False)


class VectorCache:
    """One source's article vectors on disk (the shipped articles, or one company folder).

    Embedding the knowledge base is most of the offline server's start-up; the same weights and the
    same texts always give the same vectors, so they are computed once. Each source has its own
    files, ``kb-vectors-<source>-<texts>.npy`` (``<source>``: a hash of the encoder's identity and
    the source's name; ``<texts>``: of every text) and beside it ``.keys``, a hash of each row's
    text. When a source changes, the rows of texts that did not change are taken from its previous
    file, so adding or editing one article embeds only that article's texts; other sources' files
    are not touched. Any problem with a file (missing, corrupt, another shape) just means computing
    its vectors again.
    """

    PREFIX: Final = "kb-vectors-"
    _LEGACY: Final = re.compile(r"kb-vectors-[0-9a-f]{32}\.npy")  # one file for everything, before sources

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def keys_path(self) -> Path:
        return self.path.with_suffix(".keys")

    @property
    def _source_prefix(self) -> str:
        return self.path.name.rsplit("-", 1)[0] + "-"

    @classmethod
    def for_texts(
        cls, cache_dir: Path | None, identity: object, texts: Sequence[str], source: str = ""
    ) -> VectorCache | None:
        if cache_dir is None or not isinstance(identity, str) or not identity:
            return None
        which = hashlib.sha256("\0".join([identity, source]).encode("utf-8")).hexdigest()[:12]
        digest = hashlib.sha256("\0".join([identity, *texts]).encode("utf-8")).hexdigest()[:32]
        return cls(cache_dir / f"{cls.PREFIX}{which}-{digest}.npy")

    def load(self, rows: int) -> npt.NDArray[np.float32] | None:
        return _load_vectors(self.path, rows)

    def known(self) -> tuple[dict[str, npt.NDArray[np.float32]], bool]:
        """Cached vectors by :func:`text_key`, and whether this exact set of texts was cached whole.

        The exact file first; failing that, the source's earlier files, whose unchanged texts count.
        """
        candidates = [self.path]
        try:
            earlier = sorted(
                self.path.parent.glob(f"{self._source_prefix}*.npy"),
                key=lambda path: path.stat().st_mtime_ns,
                reverse=True,
            )
            candidates += [path for path in earlier if path != self.path]
        except OSError:
            pass
        known: dict[str, npt.NDArray[np.float32]] = {}
        for number, path in enumerate(candidates):
            try:
                keys = path.with_suffix(".keys").read_text(encoding="ascii").split()
            except (OSError, ValueError):
                continue
            vectors = _load_vectors(path, len(keys))
            if vectors is None:
                continue
            if number == 0:
                return dict(zip(keys, vectors, strict=True)), True
            for key, vector in zip(keys, vectors, strict=True):
                known.setdefault(key, vector)
        return known, False

    def save(self, vectors: npt.NDArray[np.float32], keys: Sequence[str] | None = None) -> None:
        buffer = io.BytesIO()
        np.save(buffer, vectors, allow_pickle=False)
        try:
            # The keys first: vectors without their keys are ignored, keys without vectors too.
            write_atomically(self.keys_path, ("\n".join(keys) + "\n").encode("ascii") if keys else b"")
            write_atomically(self.path, buffer.getvalue())
            for old in self.path.parent.iterdir():  # this source's earlier texts or weights
                same_source = old.name.startswith(self._source_prefix) and old.suffix in (".npy", ".keys")
                if old not in (self.path, self.keys_path) and (
                    same_source or self._LEGACY.fullmatch(old.name)
                ):
                    old.unlink(missing_ok=True)
        except OSError as exc:  # a read-only or full disk costs start-up time, nothing else
            _log.info("could not cache the article vectors in %s: %s", self.path.parent, exc)


def _load_vectors(path: Path, rows: int) -> npt.NDArray[np.float32] | None:
    try:
        vectors = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a torn or foreign file: compute again
        _log.info("ignoring the cached article vectors %s: %s", path, exc)
        return None
    if vectors.dtype != np.float32 or not _usable(vectors, rows):
        _log.info("ignoring the cached article vectors %s: shape %s", path, vectors.shape)
        return None
    return np.asarray(vectors, dtype=np.float32)


def _encoder(use_embeddings: bool, model_dir: Path | None) -> Encoder | None:
    if not use_embeddings:
        return None
    try:
        from app.localmodel.embed import MiniLMEncoder

        return MiniLMEncoder(model_dir)
    except Exception:
        _log.warning("the sentence encoder is unavailable; using keyword search only", exc_info=True)
        return None


def _build(
    kb_dir: Path | None, folders: Sequence[str | Path], encoder: Encoder | None, cache_dir: Path | None
) -> ArticleRetriever:
    articles, problems = load_knowledge_base(folders, kb_dir)
    for problem in problems:
        _log.warning("knowledge base: %s", problem)
    return ArticleRetriever(articles, encoder, KeywordIndex(articles), cache_dir)


def load_retriever(
    kb_dir: Path | None = None,
    model_dir: Path | None = None,
    *,
    use_embeddings: bool = True,
    cache_dir: Path | None = None,
    folders: Sequence[str | Path] = (),
) -> ArticleRetriever:
    """A retriever over the articles in ``kb_dir`` and the company's ``folders``, with embeddings when
    the model loads.

    Problems with single articles are logged and those articles left out, as the keyword tool does.
    The folders are read once (:func:`load_watched_retriever` follows their changes).
    """
    return _build(kb_dir, folders, _encoder(use_embeddings, model_dir), cache_dir)


def load_watched_retriever(
    kb_dir: Path | None = None,
    model_dir: Path | None = None,
    *,
    use_embeddings: bool = True,
    cache_dir: Path | None = None,
    folders: Sequence[str | Path] = (),
    recheck_after: float | None = 5.0,
) -> WatchedRetriever:
    """:func:`load_retriever`'s retriever, kept current with the ``folders`` as they change."""
    encoder = _encoder(use_embeddings, model_dir)
    return WatchedRetriever(
        lambda: _build(kb_dir, folders, encoder, cache_dir), folders, recheck_after=recheck_after
    )


class WatchedRetriever:
    """An :class:`ArticleRetriever` kept current with the company's article folders.

    The offline server runs for hours while admins edit their articles. Every ``recheck_after``
    seconds a thread of its own looks at the folders' file names, sizes and times (stats only, a few
    milliseconds for a thousand files); when they changed, it builds a new retriever (only new or
    changed texts are embedded, the rest come from the vector cache) that takes over for the next
    request. Requests never wait for a look or a rebuild.
    """

    def __init__(
        self,
        build: Callable[[], ArticleRetriever],
        folders: Sequence[str | Path],
        *,
        recheck_after: float | None = 5.0,
        on_change: Callable[[ArticleRetriever], None] | None = None,
    ) -> None:
        """``recheck_after`` None: no thread; the owner calls :meth:`refresh`. ``on_change`` gets each
        new retriever once it has taken over (in the looking thread)."""
        self._build = build
        self.on_change = on_change
        self._folders = tuple(folders)
        self._lock = threading.Lock()
        # Taken before the build: a file changed during it is then seen as a change at the next look.
        self._signature = folders_signature(self._folders)
        self._current = build()
        self._generation = 0
        self._closed = threading.Event()
        if recheck_after is not None and self._folders:
            threading.Thread(target=self._watch, args=(recheck_after,), name="kb-watch", daemon=True).start()

    @property
    def generation(self) -> int:
        """How many times the articles were rebuilt after a change."""
        with self._lock:
            return self._generation

    @property
    def current(self) -> ArticleRetriever:
        return self._current

    @property
    def mode(self) -> Mode:
        return self._current.mode

    @property
    def articles(self) -> list[Article]:
        return self._current.articles

    def assess(self, query: str) -> Assessment:
        return self._current.assess(query)

    def close(self) -> None:
        """Stops the looking thread (it ends at its next wake-up)."""
        self._closed.set()

    def _watch(self, every: float) -> None:
        while not self._closed.wait(every):
            self.refresh()

    def refresh(self) -> bool:
        """Looks at the folders now and rebuilds on a change; True when the articles changed.

        Never raises: a failed rebuild keeps the articles in place, and the next look tries again.
        """
        try:
            signature = folders_signature(self._folders)
            if signature == self._signature:
                return False
            fresh = self._build()
            with self._lock:
                self._current, self._signature = fresh, signature
                self._generation += 1
            _log.info("knowledge base: the company's articles changed; %d articles now", len(fresh.articles))
            if self.on_change is not None:
                self.on_change(fresh)
            return True
        except Exception:
            _log.warning("re-reading the company's articles failed; keeping the ones loaded", exc_info=True)
            return False
