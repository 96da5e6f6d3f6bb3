"""Loading the embedded server's real models behind the interfaces in :mod:`components`.

Runs only in the server process (it imports the GPL voice runtime). Each step reports progress,
so the app can show what is loading.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.localmodel.components import BrainReply, Components, Speech, ToolRequest


class _Brain:
    """Adapts :class:`HelpdeskBrain` replies to the server's :class:`BrainReply`."""

    def __init__(self, brain: Any) -> None:
        self._brain = brain

    @staticmethod
    def _convert(reply: Any) -> BrainReply:
        call = reply.tool_call
        request = None if call is None else ToolRequest(call.call_id, call.name, dict(call.arguments))
        return BrainReply(reply.text, request)

    def reply(self, user_text: str) -> BrainReply:
        return self._convert(self._brain.reply(user_text))

    def preview(self, user_text: str) -> BrainReply:
        return self._convert(self._brain.preview(user_text))

    def tool_result(self, call_id: str, output: dict[str, Any]) -> BrainReply:
        return self._convert(self._brain.tool_result(call_id, output))


class _Recognizer:
    def __init__(self, recognizer: Any, utterance_class: Any) -> None:
        self._recognizer = recognizer
        self._utterance_class = utterance_class

    def utterance(self, context: str = "") -> Any:
        return self._utterance_class(self._recognizer, context=context)


def load_models(progress: Callable[[str], None], kb_folders: Sequence[str] | None = None) -> Components:
    """The real models; ``kb_folders`` None means the company folders the app passed in
    ``HELPDESK_VOICE_SERVER_KB_FOLDERS`` (see :mod:`app.tools.kb_sources`), if any."""

    lock = threading.Lock()

    def report(line: str) -> None:
        with lock:  # two steps load side by side: one whole line at a time
            progress(line)

    def step(what: str, load: Callable[[], Any]) -> Any:
        started = time.monotonic()
        report(f"loading {what}...")
        result = load()
        report(f"loading {what}: done in {time.monotonic() - started:.1f} s")
        return result

    from app.localmodel.asr import SpeechRecognizer, UtteranceTranscriber, vocabulary_prompt
    from app.localmodel.brain import HelpdeskBrain
    from app.localmodel.retrieval import ArticleRetriever, load_watched_retriever
    from app.localmodel.tts import CachedVoice, SpeechStream, load_voice, quiet_onnxruntime
    from app.paths import default_cache_dir
    from app.tools.kb_sources import folders_from_env

    folders = tuple(kb_folders) if kb_folders is not None else folders_from_env() or ()

    def load_recognizer() -> SpeechRecognizer:
        recognizer = SpeechRecognizer()
        recognizer.load()
        return recognizer

    # The environment is set before the voice's thread starts: setting it while another thread reads
    # it (the recogniser's libraries do as they load) is a race in the C library.
    quiet_onnxruntime()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="voice-loader") as loader:
        # The voice is the longest step (a first synthesis, then the stock openers, each on one
        # onnxruntime thread): it loads on the other core while the recogniser and the articles load
        # here, and once they have, its openers take both cores, two at a time.
        voice_loading = loader.submit(step, "voice (Piper)", lambda: CachedVoice(load_voice(), workers=2))
        recognizer = step("speech recognition (Whisper tiny.en)", load_recognizer)
        retriever = step(
            "knowledge base (MiniLM embeddings)",
            lambda: load_watched_retriever(cache_dir=default_cache_dir(), folders=folders),
        )
    voice: CachedVoice = voice_loading.result()

    def hear_the_articles_words(articles: ArticleRetriever) -> None:
        # Biased toward the words the articles use (shipped and company), so a request an article
        # answers is heard with that article's terms, and kept so as the company's articles change.
        recognizer.set_prompt(vocabulary_prompt(articles.articles, recognizer.count_tokens))

    hear_the_articles_words(retriever.current)
    retriever.on_change = hear_the_articles_words
    if folders:
        company = sum(1 for article in retriever.articles if article.source)
        report(f"knowledge base: {company} company articles from {len(folders)} folder(s)")

    def speak(text: str) -> Speech:
        return SpeechStream(voice, text)

    def new_brain(tool_names: frozenset[str]) -> _Brain:
        return _Brain(HelpdeskBrain(retriever, tools=tool_names))

    from app.localmodel.turn_end import TurnEndModel

    try:
        turn_end: TurnEndModel | None = step("end-of-turn model (Smart Turn v3)", TurnEndModel)
    except (FileNotFoundError, OSError, RuntimeError) as exc:  # answering still works: after a pause
        # "loading ...": the launcher passes only those lines on as progress.
        report(f"loading end-of-turn model: unavailable, turns end by their words and pauses ({exc})")
        turn_end = None
    judged = ", Smart Turn" if turn_end is not None else ""
    return Components(
        recognizer=_Recognizer(recognizer, UtteranceTranscriber),
        new_brain=new_brain,
        speak=speak,
        description=f"Whisper tiny.en, {retriever.mode} retrieval, {voice.name} voice{judged}",
        turn_end=None if turn_end is None else turn_end.probability,
    )
