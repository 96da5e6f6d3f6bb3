"""From settings to a running conversation: the one path both the tray app and ``--headless`` take.

:func:`plan_from_settings` turns the effective settings (:mod:`app.config`, typed) into a
:class:`LaunchPlan` and refuses, with one human sentence, what cannot work: the rules that span
settings (OpenAI without a key, Azure without a deployment) are :mod:`app.settings_rules`, the same
the Settings dialog checks, so both say the same sentence. :class:`ConversationRunner` carries a
plan out: it finds the audio devices, starts the embedded offline server when no endpoint is
configured, and starts the engine.
The plan also says when the engine rolls over to a fresh session: shortly before the server's own
cap on a session's length (:func:`session_cap_s`, :func:`rollover_after_s`).
Starting can take seconds (the offline models load), so the GUI calls :meth:`ConversationRunner.start`
on a worker thread; :meth:`ConversationRunner.stop` may come from any thread at any moment, also
in the middle of starting, and returns within about a second.
With ``kb.ticket_system_articles`` on (Request Tracker or ServiceNow), the runner also keeps the
ticket system's knowledge base mirrored into a folder of the app's cache (:mod:`app.tools.article_sync`,
on a thread of its own, at start and every few minutes); the plan lists that folder among the
``kb_folders``, so the search tool and the offline server read it like the company's own folders,
and only the app process ever holds the credential.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from app import defaults
from app.audio.bargein import DetectorSettings
from app.audio.devices import AudioDevice, DeviceError, find_device
from app.audio.pipeline import AudioSettings
from app.config import (
    TICKET_SYSTEMS_WITH_ARTICLES,
    Backend,
    DiagnosticsSettings,
    HandoffSettings,
    LoadedSettings,
    Sensitivity,
    Settings,
    TicketSettings,
)
from app.core import protocol as p
from app.core.actions import Notice
from app.realtime.client_secret import TOKEN_CREDENTIAL_ENV, ClientSecretSource, lookup_token_credential
from app.realtime.endpoint import (
    API_KEY_ENV,
    ApiKeyLookup,
    Endpoint,
    EndpointKind,
    azure_endpoint,
    endpoint_from_url,
    lookup_api_key,
    openai_endpoint,
)
from app.realtime.integrated_auth import IntegratedSignIn, integrated_auth_available
from app.settings_rules import API_KEY_FIELD, cross_field_notes, cross_field_problems
from app.tools.article_sync import articles_folder

if TYPE_CHECKING:
    from app.core.actions import StateChanged, ToolActivity, Transcript, TurnCompleted
    from app.engine import Engine, EngineListener
    from app.localmodel.launcher import ServerSupervisor
    from app.tools.article_sync import ArticleSync
    from app.tools.delivery import DeliveryWorker
    from app.tools.diagnostics import DiagnosticsOptions
    from app.tools.handoff import HandoffOptions
    from app.tools.kb_sources import KnowledgeBase

__all__ = [
    "UNKNOWN_CAP_ROLLOVER_S",
    "CitingListener",
    "ConversationRunner",
    "LaunchError",
    "LaunchPlan",
    "detector_settings",
    "plan_from_settings",
    "rollover_after_s",
    "session_cap_s",
]

log = logging.getLogger("app.launch")

# How long the offline server's start waits for the first sync of the ticket system's articles.
FIRST_SYNC_WAIT_S: Final = 15.0


class LaunchError(Exception):
    """The conversation cannot start; ``str()`` is one sentence for the user.

    ``usage`` marks a mistake in what was asked for (a device or URL that does not exist), which the
    command line reports with exit code 2.
    """

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


# How eagerly the local detector takes a sound for the user talking over the assistant: "high"
# stops on a shorter, quieter onset; "low" waits for a longer, clearly louder one (noisy offices).
_SENSITIVITY: Final[Mapping[Sensitivity, DetectorSettings]] = {
    "high": replace(DetectorSettings(), onset_frames=2, vad_mode=2, margin_db=8.0),
    "medium": DetectorSettings(),
    "low": replace(DetectorSettings(), onset_frames=5, vad_mode=3, margin_db=14.0),
}


def detector_settings(sensitivity: str) -> DetectorSettings:
    """The barge-in detector's settings for a sensitivity of low, medium or high."""
    for level, detector in _SENSITIVITY.items():
        if sensitivity == level:
            return detector
    raise ValueError(f"barge-in sensitivity must be low, medium or high, not {sensitivity!r}")


# How long a realtime session may last, per endpoint kind, where the service fixes it: OpenAI ends a
# session after 60 minutes, Azure OpenAI after 30. A custom server's cap comes from the setting
# endpoint.session_minutes; the embedded offline server has none (app/localmodel/server.py closes only
# a session that has sent nothing for ten minutes, which is not a cap on its length).
#
# The cap is decided here, where the plan is made from settings, and not on the Endpoint: an Endpoint
# is where to connect and with which headers, built by app.realtime.endpoint, which cannot read the
# settings (app.config imports it) and has no other use for a duration; only the engine's rollover
# needs the cap, and the plan is what hands the engine its settings. The kind is the endpoint's, not
# the backend setting's, so a pasted OpenAI or Azure URL gets that service's cap.
_KNOWN_CAPS_MIN: Final[Mapping[EndpointKind, float]] = {"openai": 60.0, "azure": 30.0}
# When the cap is not known (a custom server without endpoint.session_minutes): what every endpoint had
# before caps were known per endpoint, 5 minutes before OpenAI's 60.
UNKNOWN_CAP_ROLLOVER_S: Final = 55 * 60.0
# How long before the cap the rollover is planned: the engine only rolls over while nobody speaks and
# nothing plays, so it needs time to find such a moment; a sixth of a short cap (tests use seconds).
_ROLLOVER_MARGIN_S: Final = 5 * 60.0


def session_cap_s(kind: EndpointKind, session_minutes: float = 0.0) -> float | None:
    """The server's cap on a session's length in seconds; None when it has none or it is not known.

    ``session_minutes`` (the setting ``endpoint.session_minutes``, 0 when not known) is the cap of a
    custom server; OpenAI's and Azure's are fixed by the services, and the embedded server has none.
    """
    if kind == "custom":
        return session_minutes * 60.0 if session_minutes > 0 else None
    known = _KNOWN_CAPS_MIN.get(kind)
    return None if known is None else known * 60.0


def rollover_after_s(kind: EndpointKind, session_minutes: float = 0.0) -> float | None:
    """After how many seconds the engine rolls over to a fresh session; None: never (no cap).

    Before the cap by five minutes, or by a sixth of a cap shorter than half an hour; after
    :data:`UNKNOWN_CAP_ROLLOVER_S` when a custom server's cap is not known.
    """
    cap = session_cap_s(kind, session_minutes)
    if cap is None:
        return UNKNOWN_CAP_ROLLOVER_S if kind == "custom" else None
    return cap - min(_ROLLOVER_MARGIN_S, cap / 6)


@dataclass(frozen=True)
class LaunchPlan:
    """Everything needed to start a conversation, settled before any device or socket opens."""

    backend: Backend
    endpoint: Endpoint | None  # None: the embedded offline server, started by the runner
    session: p.Session  # without tools: the runner adds the allowed ones
    input_device: str | None = None  # None: the system default
    output_device: str | None = None
    audio: AudioSettings = field(default_factory=AudioSettings)
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    push_to_talk: bool = False
    tools_allowed: tuple[str, ...] = ("search_knowledge_base", "create_ticket", "get_ticket_status")
    tickets: TicketSettings | None = None  # where tickets go; None: they stay on this computer
    handoff: HandoffSettings | None = None  # how a person from IT reaches a user who asks for one
    diagnostics: DiagnosticsSettings | None = None  # what attach_diagnostics may send; None: not offered
    kb_folders: tuple[str, ...] = ()  # the company's own articles, beside the shipped ones
    # Where the ticket system's own articles are mirrored (also the last of ``kb_folders``); None:
    # they are not used.
    articles_folder: str | None = None
    warnings: tuple[str, ...] = ()  # shown when the conversation starts (an API key held back)
    # When the engine opens a fresh session, before the server's cap (None: never; the embedded
    # server has no cap, which is also why it is the default of a plan without an endpoint).
    rollover_after_s: float | None = None

    def describe(self) -> str:
        if self.endpoint is None:
            return "the offline assistant on this computer"
        return self.endpoint.display_url


def _session(settings: LoadedSettings, backend: Backend) -> p.Session:
    typed = settings.typed
    base = defaults.session_config(backend=backend)
    silence = typed.silence_ms
    if settings.origin("silence_ms") == "default" and base.turn_detection is not None:
        # Nobody chose a pause length: the backend's own default (shorter for the offline server).
        silence = base.turn_detection.silence_duration_ms or silence
    semantic = typed.turn_detection == "semantic_vad"
    turn_detection = p.TurnDetection(
        kind=typed.turn_detection,
        silence_duration_ms=None if semantic else silence,
        eagerness=typed.eagerness if semantic else None,
    )
    # OpenAI and Azure take the model from the URL; a custom server only when one was chosen.
    chosen = backend == "custom" and settings.origin("endpoint.model") != "default"
    model = typed.endpoint.model if chosen else None
    return replace(
        base,
        instructions=typed.instructions,
        voice=typed.voice,
        model=model or None,
        turn_detection=turn_detection,
    )


# The settings that choose the host an API key goes to, per backend.
_HOST_SETTINGS: Final[Mapping[Backend, tuple[str, ...]]] = {
    "embedded": (),
    "openai": ("backend",),
    "azure": ("backend", "endpoint.azure_resource"),
    "custom": ("backend", "endpoint.url"),
}


def _api_key(
    settings: LoadedSettings, backend: Backend, environ: Mapping[str, str]
) -> tuple[ApiKeyLookup, str | None]:
    """The API key this backend's host may have, and why a stored one is held back from it.

    The key in the keyring was stored for the server chosen in Settings (or by the policy), so it
    goes only to that one: a host named on the command line or in the environment (which any
    script or shortcut can set) gets it only when the key comes from the environment too.
    """
    found = lookup_api_key(environ)
    if found.source != "keyring":
        return found, None
    chosen_by = [key for key in _HOST_SETTINGS[backend] if settings.origin(key) in ("env", "cli")]
    if not chosen_by:
        return found, None
    reason = (
        "the API key in the system keyring is only sent to the server chosen in Settings, not to one "
        f"chosen on the command line or in the environment ({', '.join(chosen_by)}); "
        f"set {API_KEY_ENV} to connect there with a key"
    )
    return ApiKeyLookup(None, None, reason), reason


# Exit codes as before the rules had one home: a missing model, resource or deployment was refused by
# the endpoint builders as a mistake in what was asked for (2); a missing URL or key is not (1).
_USAGE_PROBLEMS: Final = frozenset({"endpoint.model", "endpoint.azure_resource", "endpoint.azure_deployment"})


def _check_rules(settings: LoadedSettings, key: ApiKeyLookup) -> None:
    """Raises the first cross-field problem in the words the Settings dialog shows for it."""
    problems = cross_field_problems(settings.values, api_key_present=key.key is not None)
    if not problems:
        return
    first = problems[0]
    message = first.message
    # Why a stored key was held back, or why the keyring could not be read; "nothing stored" only
    # repeats the sentence, which must stay the one the Settings dialog shows.
    if first.key == API_KEY_FIELD and key.reason and not key.reason.startswith("no API key:"):
        message += f" ({key.reason})"
    raise LaunchError(message, usage=first.key in _USAGE_PROBLEMS)


# With a token service, the endpoint builders still decide the URL and which header form a host
# takes; they insist on a key, so they get this stand-in, whose header is dropped at once for the
# secret fetched per connection. It never reaches a socket.
_FETCHED_KEY: Final = "fetched-per-connection"


def _token_source(settings: LoadedSettings, token_url: str, environ: Mapping[str, str]) -> ClientSecretSource:
    """The source of short-lived secrets from ``endpoint.token_url``, with this device's credential
    or the user's company sign-in, as ``endpoint.token_auth`` says."""
    if settings.typed.endpoint.token_auth == "integrated":
        missing = integrated_auth_available()
        if missing is not None:
            raise LaunchError(f"endpoint.token_auth is integrated, but {missing}")
        try:
            return ClientSecretSource(token_url, IntegratedSignIn())
        except ValueError as exc:
            raise LaunchError(f"cannot use the token service: {exc}", usage=True) from exc
    found = lookup_token_credential(environ)
    if found.credential is None:
        raise LaunchError(f"endpoint.token_url is set, but there is {found.reason}")
    origin = settings.origin("endpoint.token_url")
    # As with the API key: the keyring's credential was stored for the service the settings or the
    # policy name, so a service named by any script (environment, command line) does not get it.
    if found.source == "keyring" and origin in ("env", "cli"):
        where = "environment" if origin == "env" else "command line"
        raise LaunchError(
            "the device credential in the system keyring is only sent to the token service chosen in "
            f"Settings or by policy, not to one from the {where} (endpoint.token_url); "
            f"set {TOKEN_CREDENTIAL_ENV} to use it there"
        )
    try:
        return ClientSecretSource(token_url, found.credential)
    except ValueError as exc:
        raise LaunchError(f"cannot use the token service: {exc}", usage=True) from exc


def _with_fetched_secrets(endpoint: Endpoint, source: ClientSecretSource) -> Endpoint:
    if not endpoint.headers:
        # A ws:// server elsewhere: a secret would cross the network in clear, so none is asked for.
        note = (
            f"endpoint.token_url is not used: a secret sent to {endpoint.host} over ws:// could be read "
            "by anyone on the network; use a wss:// address"
        )
        return replace(endpoint, notes=(note,))
    return replace(endpoint, headers={}, credentials=source)


def _endpoint(
    settings: Settings, backend: Backend, key: ApiKeyLookup, source: ClientSecretSource | None = None
) -> Endpoint | None:
    if backend == "embedded":
        return None
    if source is not None:
        built = _endpoint(settings, backend, ApiKeyLookup(_FETCHED_KEY, "environment"))
        return None if built is None else _with_fetched_secrets(built, source)
    endpoint = settings.endpoint
    try:
        if backend == "custom":
            return endpoint_from_url(endpoint.url, key.key)
        if key.key is None:  # pragma: no cover - _check_rules has refused it already
            raise LaunchError(f"no API key for the {backend} backend")
        if backend == "openai":
            return openai_endpoint(endpoint.model, key.key)
        return azure_endpoint(endpoint.azure_resource, endpoint.azure_deployment, key.key)
    except ValueError as exc:
        hint = ""
        if key.key is None and "API key" in str(exc):
            hint = f"; type one in Settings (it is kept in the system keyring) or set {API_KEY_ENV}"
        raise LaunchError(f"cannot use the endpoint: {exc}{hint}", usage=True) from exc


def _articles_folder(typed: Settings) -> str | None:
    """The folder the ticket system's articles are mirrored to, when they are wanted and can be read."""
    tickets = typed.tickets
    if not typed.kb.ticket_system_articles or tickets.system not in TICKET_SYSTEMS_WITH_ARTICLES:
        return None
    if not tickets.url.strip():
        return None  # the delivery already says the address is missing
    return str(articles_folder(tickets.system, tickets.url))


def plan_from_settings(settings: LoadedSettings, environ: Mapping[str, str] = os.environ) -> LaunchPlan:
    """The plan the effective settings describe; raises :class:`LaunchError` for what cannot work."""
    typed = settings.typed
    backend = typed.backend
    token_url = typed.endpoint.token_url.strip()
    source: ClientSecretSource | None = None
    if token_url and backend != "embedded":
        # The point of a token service is that no API key is on this computer: one that is stored
        # anyway is not used, and the rules do not ask for one.
        key, withheld = ApiKeyLookup(None, None), None
        _check_rules(settings, key)
        source = _token_source(settings, token_url, environ)
    else:
        key, withheld = _api_key(settings, backend, environ)
        _check_rules(settings, key)
    endpoint = _endpoint(typed, backend, key, source)
    warnings = () if endpoint is None else endpoint.notes
    if withheld is not None and endpoint is not None:
        warnings += (withheld,)
    if endpoint is not None and endpoint.kind in ("openai", "azure"):
        backend = endpoint.kind  # a pasted OpenAI or Azure URL gets its own protocol details
    warnings += tuple(f"{note.key}: {note.message}" for note in cross_field_notes(settings.values))
    articles = _articles_folder(typed)
    return LaunchPlan(
        backend=backend,
        endpoint=endpoint,
        session=_session(settings, backend),
        input_device=typed.audio.input_device or None,
        output_device=typed.audio.output_device or None,
        audio=replace(
            AudioSettings(),
            block_ms=float(typed.audio.block_ms),
            echo_cancellation=typed.audio.echo_cancellation,
        ),
        detector=_SENSITIVITY[typed.barge_in.sensitivity],
        push_to_talk=typed.push_to_talk,
        tools_allowed=typed.tools.allowed,
        tickets=typed.tickets,
        handoff=typed.handoff,
        diagnostics=typed.diagnostics,
        kb_folders=typed.kb.folders + ((articles,) if articles is not None else ()),
        articles_folder=articles,
        warnings=warnings,
        rollover_after_s=None
        if endpoint is None
        else rollover_after_s(endpoint.kind, typed.endpoint.session_minutes),
    )


def _find(query: str | None, direction: Literal["input", "output"]) -> AudioDevice:
    try:
        return find_device(query, direction)
    except DeviceError as exc:
        raise LaunchError(str(exc), usage=query is not None) from exc


class CitingListener:
    """Passes the engine's reports on, and after an answer that names a company article by its title
    (as the offline assistant does when it walks one through), a notice with that article's link: the
    transcript then says where to find it again. Each article once per conversation."""

    def __init__(self, listener: EngineListener, knowledge: KnowledgeBase) -> None:
        self._listener = listener
        self._knowledge = knowledge
        self._cited: set[str] = set()

    def on_state(self, event: StateChanged) -> None:
        self._listener.on_state(event)

    def on_transcript(self, event: Transcript) -> None:
        self._listener.on_transcript(event)

    def on_tool(self, event: ToolActivity) -> None:
        self._listener.on_tool(event)

    def on_notice(self, event: Notice) -> None:
        self._listener.on_notice(event)

    def on_turn(self, event: TurnCompleted) -> None:
        self._listener.on_turn(event)
        if not event.assistant_text:
            return
        for article in self._knowledge.cited_in(event.assistant_text):
            if article.link and article.link not in self._cited:
                self._cited.add(article.link)
                self._listener.on_notice(Notice("info", f"Article: {article.title} - {article.link}"))


class ConversationRunner:
    """Carries out one :class:`LaunchPlan`: devices, the offline server if needed, the engine."""

    def __init__(
        self,
        plan: LaunchPlan,
        listener: EngineListener,
        progress: Callable[[str], None] | None = None,
        delivery: DeliveryWorker | None = None,
    ) -> None:
        """``delivery``: a worker that outlives the conversation (the tray app's), which the tools
        file through and the runner neither starts nor stops; None, the runner runs its own."""
        self.plan = plan
        self.listener = listener
        self._progress = progress or (lambda line: None)
        self._shared_delivery = delivery
        self._lock = threading.Lock()  # guards the hand-over between start() and stop()
        self._stopping = False
        self._server: ServerSupervisor | None = None
        self._delivery: DeliveryWorker | None = None
        self._articles: ArticleSync | None = None
        self.engine: Engine | None = None
        self.description = ""

    @property
    def stopping(self) -> bool:
        return self._stopping

    def start(self) -> None:
        """Blocking: returns once the engine runs; raises :class:`LaunchError` with the reason."""
        from app.engine import Engine, EngineConfig
        from app.localmodel.launcher import EmbeddedServerProcess, ServerStartError, ServerSupervisor
        from app.tools import default_registry
        from app.tools.kb_sources import KnowledgeBase

        input_device = _find(self.plan.input_device, "input")
        output_device = _find(self.plan.output_device, "output")
        self.description = f"listening on {input_device.name} -> {output_device.name}"
        self._start_article_sync()
        endpoint = self.plan.endpoint
        if endpoint is None:
            self._await_first_article_sync()
            # Supervised: if the offline server dies, it comes back on the same port and the engine's
            # connection reconnects to it with the conversation so far.
            process = EmbeddedServerProcess(progress=self._progress, kb_folders=self.plan.kb_folders)
            server = ServerSupervisor(process, self.listener.on_notice)
            with self._lock:
                if self._stopping:
                    raise LaunchError("stopped before it started")
                self._server = server
            self._progress("starting the offline assistant (no endpoint configured)")
            try:
                endpoint = server.start()
            except ServerStartError as exc:
                server.stop()
                self._stop_article_sync()
                if self._stopping:
                    raise LaunchError("stopped before it started") from exc
                raise LaunchError(str(exc)) from exc
        delivery = self.delivery_worker()
        contact = self.plan.tickets.contact.strip() or None if self.plan.tickets is not None else None
        knowledge = KnowledgeBase(self.plan.kb_folders)
        tools = default_registry(
            delivery=delivery,
            contact=contact,
            handoff=self._handoff(),
            transcript=self._heard,
            diagnostics=self._diagnostics(),
            kb_folders=self.plan.kb_folders,
            knowledge=knowledge,
        ).only(self.plan.tools_allowed)
        engine = Engine(
            EngineConfig(
                endpoint=endpoint,
                session=replace(self.plan.session, tools=tuple(tools.specs())),
                input_device=input_device,
                output_device=output_device,
                tools=tools,
                audio=self.plan.audio,
                detector=self.plan.detector,
                push_to_talk=self.plan.push_to_talk,
                backend=endpoint.kind,
                rollover_after_s=self.plan.rollover_after_s,
            ),
            CitingListener(self.listener, knowledge) if self.plan.kb_folders else self.listener,
        )
        with self._lock:
            if self._stopping:
                self._stop_server()
                raise LaunchError("stopped before it started")
            self.engine = engine
        try:
            engine.start()
        except Exception as exc:
            self.stop()
            raise LaunchError(f"the audio devices could not start: {exc}") from exc
        if self._stopping:  # stop() came while the engine was opening its devices
            self.stop()
            raise LaunchError("stopped before it started")
        log.info("%s (%s)", self.description, self.plan.describe())

    def stop(self, timeout: float = 1.0) -> None:
        """Stops the engine and the offline server; idempotent, from any thread, also mid-start."""
        with self._lock:
            self._stopping = True
            engine, self.engine = self.engine, None
            delivery, self._delivery = self._delivery, None
        if engine is not None:
            engine.stop(timeout)
        if delivery is not None:
            delivery.stop(timeout)  # a try in flight finishes in its thread; its key guards a retry
        self._stop_article_sync()
        self._stop_server()

    def _heard(self) -> list[tuple[str, str]]:
        """The conversation as the user heard it, for a handoff (on the engine's loop, where it runs)."""
        engine = self.engine
        return engine.conversation.heard_transcript() if engine is not None else []

    def _handoff(self) -> HandoffOptions:
        from app.tools.handoff import HandoffOptions

        wanted = self.plan.handoff
        if wanted is None:
            return HandoffOptions()
        return HandoffOptions(wanted.phone.strip(), wanted.chat_url.strip(), wanted.callback.strip())

    def _diagnostics(self) -> DiagnosticsOptions | None:
        from app.tools.diagnostics import DiagnosticsOptions

        wanted = self.plan.diagnostics
        if wanted is None:
            return None

        def default_device(kind: str) -> str:
            # Asked when the user agrees, not now: the system default may change during a conversation.
            return find_device(None, "input" if kind == "input" else "output").name

        return DiagnosticsOptions(wanted.enabled, wanted.fields, wanted.hosts, audio=default_device)

    def delivery_worker(self) -> DeliveryWorker:
        """The worker the tools file through: the shared one given, else one of the runner's own."""
        return self._shared_delivery or self._start_delivery()

    def _start_delivery(self) -> DeliveryWorker:
        """The thread that sends tickets to the company's system (when one is set up)."""
        from app.ticket_systems import make_connector, system_name
        from app.tools import TicketOutbox
        from app.tools.delivery import DeliveryWorker, delivered_notice, problem_notice

        tickets = self.plan.tickets
        notice = self.listener.on_notice
        worker = DeliveryWorker(
            TicketOutbox(),
            lambda: None if tickets is None else make_connector(tickets),
            on_delivered=lambda done: notice(delivered_notice(done)),
            on_problem=lambda trouble: notice(problem_notice(trouble)),
        )
        if tickets is not None and tickets.system != "none":
            log.info("tickets go to %s at %s", system_name(tickets.system), tickets.url)
        with self._lock:
            self._delivery = worker
        worker.start()
        return worker

    def _start_article_sync(self) -> None:
        """The thread that mirrors the ticket system's articles into the plan's folder (when wanted)."""
        from app.ticket_systems import make_connector, system_name
        from app.tools.article_sync import ArticleSync

        folder, tickets = self.plan.articles_folder, self.plan.tickets
        if folder is None or tickets is None:
            return
        # Made now, so that the knowledge base finds a folder (empty until the first sync) and does
        # not report a missing one; failing here, the sync reports why.
        with contextlib.suppress(OSError):
            Path(folder).mkdir(parents=True, exist_ok=True)
        notice = self.listener.on_notice
        sync = ArticleSync(
            Path(folder),
            lambda client: make_connector(tickets, client),
            system=system_name(tickets.system),
            on_problem=lambda problem: notice(Notice("warning", f"Knowledge base: {problem}.")),
        )
        with self._lock:
            if self._stopping:
                return
            self._articles = sync
        sync.start()

    def _await_first_article_sync(self) -> None:
        # The offline server reads its folders when it starts and then follows their changes every
        # few seconds: without this wait, its first answers would miss the system's articles.
        # Bounded, because a slow system must not hold the assistant back.
        with self._lock:
            sync = self._articles
        if sync is None or sync.wait_first(0.0):
            return
        self._progress("reading the ticket system's articles")
        if not sync.wait_first(FIRST_SYNC_WAIT_S):
            log.info("the first article sync is still running; the offline assistant starts without it")

    def _stop_article_sync(self) -> None:
        with self._lock:
            sync, self._articles = self._articles, None
        if sync is not None:
            sync.stop(timeout=0.5)

    def _stop_server(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.stop(timeout=1.0)
