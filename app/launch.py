"""From settings to a running conversation: the one path both the tray app and ``--headless`` take.

:func:`plan_from_settings` turns the effective settings (:mod:`app.config`) into a
:class:`LaunchPlan` and refuses, with one human sentence, what cannot work (OpenAI without a key,
Azure without a deployment). :class:`ConversationRunner` carries a plan out: it finds the audio
devices, starts the embedded offline server when no endpoint is configured, and starts the engine.
Starting can take seconds (the offline models load), so the GUI calls :meth:`ConversationRunner.start`
on a worker thread; :meth:`ConversationRunner.stop` may come from any thread at any moment, also
in the middle of starting, and returns within about a second.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final, Literal

from app import defaults
from app.audio.bargein import DetectorSettings
from app.audio.devices import AudioDevice, DeviceError, find_device
from app.audio.pipeline import AudioSettings
from app.core import protocol as p
from app.realtime.endpoint import (
    API_KEY_ENV,
    ApiKeyLookup,
    Endpoint,
    azure_endpoint,
    endpoint_from_url,
    lookup_api_key,
    openai_endpoint,
)

if TYPE_CHECKING:
    from app.config import LoadedSettings
    from app.engine import Engine, EngineListener
    from app.localmodel.launcher import ServerSupervisor

__all__ = ["ConversationRunner", "LaunchError", "LaunchPlan", "detector_settings", "plan_from_settings"]

log = logging.getLogger("app.launch")

Backend = Literal["embedded", "openai", "azure", "custom"]
Sensitivity = Literal["low", "medium", "high"]


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
_SENSITIVITY: Final[Mapping[str, Mapping[str, int | float]]] = {
    "high": {"onset_frames": 2, "vad_mode": 2, "margin_db": 8.0},
    "medium": {},
    "low": {"onset_frames": 5, "vad_mode": 3, "margin_db": 14.0},
}


def detector_settings(sensitivity: str) -> DetectorSettings:
    """The barge-in detector's settings for a sensitivity of low, medium or high."""
    if sensitivity not in _SENSITIVITY:
        raise ValueError(f"barge-in sensitivity must be low, medium or high, not {sensitivity!r}")
    return replace(DetectorSettings(), **_SENSITIVITY[sensitivity])  # type: ignore[arg-type]


@dataclass(frozen=True)
class LaunchPlan:
    """Everything needed to start a conversation, settled before any device or socket opens."""

    backend: Backend
    endpoint: Endpoint | None  # None: the embedded offline server, started by the runner
    session: p.SessionConfig  # without tools: the runner adds the allowed ones
    input_device: str | None = None  # None: the system default
    output_device: str | None = None
    audio: AudioSettings = field(default_factory=AudioSettings)
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    push_to_talk: bool = False
    tools_allowed: tuple[str, ...] = ("search_knowledge_base", "create_ticket")
    warnings: tuple[str, ...] = ()  # shown when the conversation starts (an API key held back)

    def describe(self) -> str:
        if self.endpoint is None:
            return "the offline assistant on this computer"
        return self.endpoint.display_url


def _text(settings: LoadedSettings, key: str) -> str:
    value = settings.value(key)
    return value if isinstance(value, str) else ""


def _session(settings: LoadedSettings, backend: Backend) -> p.SessionConfig:
    base = defaults.session_config(backend=backend)
    configured = settings.value("silence_ms")
    silence = configured if isinstance(configured, int) else defaults.SILENCE_MS
    if settings.origin("silence_ms") == "default" and base.turn_detection is not None:
        # Nobody chose a pause length: the backend's own default (shorter for the offline server).
        silence = base.turn_detection.silence_duration_ms or silence
    semantic = settings.value("turn_detection") == "semantic_vad"
    eagerness = _text(settings, "eagerness")
    turn_detection = p.TurnDetection(
        kind="semantic_vad" if semantic else "server_vad",
        silence_duration_ms=None if semantic else silence,
        eagerness=eagerness if semantic else None,  # type: ignore[arg-type]
    )
    # OpenAI and Azure take the model from the URL; a custom server only when one was chosen.
    chosen = backend == "custom" and settings.origin("endpoint.model") != "default"
    model = _text(settings, "endpoint.model") if chosen else None
    return replace(
        base,
        instructions=_text(settings, "instructions"),
        voice=_text(settings, "voice"),
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


def _endpoint(settings: LoadedSettings, backend: Backend, key: ApiKeyLookup) -> Endpoint | None:
    if backend == "embedded":
        return None
    try:
        if backend == "custom":
            url = _text(settings, "endpoint.url")
            if not url:
                raise LaunchError("the custom backend needs an endpoint URL (ws:// or wss://) in Settings")
            return endpoint_from_url(url, key.key)
        if key.key is None:
            raise LaunchError(
                f"no API key for {'OpenAI' if backend == 'openai' else 'Azure OpenAI'}: enter one in "
                "Settings (it is kept in the system keyring) or set HELPDESK_VOICE_API_KEY"
                + (f" ({key.reason})" if key.reason else "")
            )
        if backend == "openai":
            return openai_endpoint(_text(settings, "endpoint.model"), key.key)
        return azure_endpoint(
            _text(settings, "endpoint.azure_resource"), _text(settings, "endpoint.azure_deployment"), key.key
        )
    except ValueError as exc:
        hint = ""
        if key.key is None and "API key" in str(exc):
            hint = ": enter one in Settings (it is kept in the system keyring) or set HELPDESK_VOICE_API_KEY"
        raise LaunchError(f"cannot use the endpoint: {exc}{hint}", usage=True) from exc


def plan_from_settings(settings: LoadedSettings, environ: Mapping[str, str] = os.environ) -> LaunchPlan:
    """The plan the effective settings describe; raises :class:`LaunchError` for what cannot work."""
    backend_text = _text(settings, "backend")
    if backend_text not in ("embedded", "openai", "azure", "custom"):
        raise LaunchError(f"unknown backend {backend_text!r}")
    backend: Backend = backend_text  # type: ignore[assignment]
    key, withheld = _api_key(settings, backend, environ)
    endpoint = _endpoint(settings, backend, key)
    warnings = () if endpoint is None else endpoint.notes
    if withheld is not None and endpoint is not None:
        warnings += (withheld,)
    if endpoint is not None and endpoint.kind in ("openai", "azure"):
        backend = endpoint.kind  # a pasted OpenAI or Azure URL gets its own protocol details
    block_ms = settings.value("audio.block_ms")
    tools = settings.value("tools.allowed")
    return LaunchPlan(
        backend=backend,
        endpoint=endpoint,
        session=_session(settings, backend),
        input_device=_text(settings, "audio.input_device") or None,
        output_device=_text(settings, "audio.output_device") or None,
        audio=replace(
            AudioSettings(),
            block_ms=float(block_ms) if isinstance(block_ms, int) else 10.0,
            echo_cancellation=bool(settings.value("audio.echo_cancellation")),
        ),
        detector=detector_settings(_text(settings, "barge_in.sensitivity")),
        push_to_talk=bool(settings.value("push_to_talk")),
        tools_allowed=tuple(tools) if isinstance(tools, tuple) else (),
        warnings=warnings,
    )


def _find(query: str | None, direction: Literal["input", "output"]) -> AudioDevice:
    try:
        return find_device(query, direction)
    except DeviceError as exc:
        raise LaunchError(str(exc), usage=query is not None) from exc


class ConversationRunner:
    """Carries out one :class:`LaunchPlan`: devices, the offline server if needed, the engine."""

    def __init__(
        self,
        plan: LaunchPlan,
        listener: EngineListener,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.plan = plan
        self.listener = listener
        self._progress = progress or (lambda line: None)
        self._lock = threading.Lock()  # guards the hand-over between start() and stop()
        self._stopping = False
        self._server: ServerSupervisor | None = None
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

        input_device = _find(self.plan.input_device, "input")
        output_device = _find(self.plan.output_device, "output")
        self.description = f"listening on {input_device.name} -> {output_device.name}"
        endpoint = self.plan.endpoint
        if endpoint is None:
            # Supervised: if the offline server dies, it comes back on the same port and the engine's
            # connection reconnects to it with the conversation so far.
            server = ServerSupervisor(EmbeddedServerProcess(progress=self._progress), self.listener.on_notice)
            with self._lock:
                if self._stopping:
                    raise LaunchError("stopped before it started")
                self._server = server
            self._progress("starting the offline assistant (no endpoint configured)")
            try:
                endpoint = server.start()
            except ServerStartError as exc:
                server.stop()
                if self._stopping:
                    raise LaunchError("stopped before it started") from exc
                raise LaunchError(str(exc)) from exc
        tools = default_registry().only(self.plan.tools_allowed)
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
            ),
            self.listener,
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
        if engine is not None:
            engine.stop(timeout)
        self._stop_server()

    def _stop_server(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.stop(timeout=1.0)
