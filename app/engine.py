"""The engine: audio, the realtime connection, tools and the conversation wired together.

It owns an asyncio loop in its own thread. Every 10 ms a pump moves microphone frames, detector
events, halt reports and playback progress into the conversation state machine, and the actions
that come out are carried out in order: events are sent by one sender task (so their order on the
wire is the order the machine chose), audio goes to the player, tools run as tasks, and reports go
to the listener's callbacks. The UI and the CLI drive the engine only through its thread-safe
methods and hear from it only through the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Protocol, assert_never

from app.audio.bargein import DetectorSettings, SpeechEvent
from app.audio.capture_route import RouteWatcher, route_notice
from app.audio.devices import AudioDevice
from app.audio.earcon import load_earcon
from app.audio.jitter import HaltRecord
from app.audio.mic_access import SilentMicWatch, windows_privacy_block
from app.audio.pipeline import AudioPipeline, AudioReport, AudioSettings, FirstAudible, Paused, PlayedOut
from app.core import protocol as p
from app.core.actions import (
    Action,
    EndAudio,
    Halt,
    Notice,
    PlayAudio,
    PlayCue,
    ResumeAudio,
    RunTool,
    Send,
    StateChanged,
    ToolActivity,
    Transcript,
    TurnCompleted,
)
from app.core.conversation import Conversation, ConversationSettings
from app.core.health import (
    ConnectionFailures,
    DeviceHealth,
    DeviceStep,
    device_back_notice,
    device_lost_notice,
)
from app.core.hearing import MicFrame
from app.core.protocol import UnknownTypeLog
from app.realtime import ConnectionProblem, Endpoint, RealtimeTransport
from app.tools.registry import ToolRegistry

log = logging.getLogger("app.engine")

PUMP_INTERVAL_S = 0.01
# While nobody speaks and nothing plays, nothing in the pump is urgent (barge-in is decided in the
# audio path, not here), so it wakes less often: it runs all day in the tray. A microphone frame
# wakes it at once either way: waiting for the next tick added up to 20 ms before the wire.
IDLE_PUMP_INTERVAL_S = 0.02
# Once the audio idles too (coarse capture blocks, no output stream), as seldom as the blocks come.
RESTING_PUMP_INTERVAL_S = 0.5
# While the audio idles, microphone appends go out at least this large (200 ms of 24 kHz PCM16), or
# after this long: the server then wakes five times a second, not ten. The first word waits for no
# more than that: the audio stops idling as the local detector hears it.
IDLE_APPEND_BYTES = 9600
IDLE_HOLD_S = 0.25
DEVICE_CHECK_INTERVAL_S = 0.5


class DeviceStream(Protocol):
    """One audio stream as the engine's device checks see it."""

    @property
    def device(self) -> AudioDevice: ...
    def lost(self, now: float) -> bool: ...
    def delivering(self, now: float) -> bool: ...
    def reopen(self) -> None: ...


class AudioFrontend(Protocol):
    """The audio side as the engine drives it (:class:`app.audio.pipeline.AudioPipeline`)."""

    def start(self) -> None: ...
    def close(self) -> None: ...
    def play(self, item_id: str, pcm16: bytes) -> None: ...
    def end_item(self, item_id: str) -> None: ...
    def halt(self, item_ids: Iterable[str] | None = None) -> None: ...
    def resume(self) -> None: ...
    def set_listening(self, listening: bool) -> None: ...
    def set_frame_waker(self, wake: Callable[[], None] | None) -> None: ...
    def frames_waiting(self) -> bool: ...
    def drain(self) -> list[AudioReport]: ...
    def pace(self, busy: bool, now: float) -> None: ...
    def devices(self) -> Iterable[tuple[str, DeviceStream]]: ...
    @property
    def busy(self) -> bool: ...
    @property
    def idle(self) -> bool: ...
    @property
    def playing(self) -> bool: ...
    @property
    def underruns(self) -> int: ...
    @property
    def input_level_dbfs(self) -> float: ...


class EngineListener(Protocol):
    """What the engine reports. Called on the engine's thread: hand over to your own thread."""

    def on_state(self, event: StateChanged) -> None: ...
    def on_transcript(self, event: Transcript) -> None: ...
    def on_tool(self, event: ToolActivity) -> None: ...
    def on_turn(self, event: TurnCompleted) -> None: ...
    def on_notice(self, event: Notice) -> None: ...


@dataclass
class EngineConfig:
    endpoint: Endpoint
    session: p.Session
    input_device: AudioDevice
    output_device: AudioDevice
    tools: ToolRegistry
    audio: AudioSettings = field(default_factory=AudioSettings)
    detector: DetectorSettings | None = None  # None: the detector's defaults
    push_to_talk: bool = False
    cue_after_s: float = 0.8
    backend: str = "custom"
    # Seconds after connecting to open a fresh session (when idle), before the server's own cap ends
    # it; None: never. The launch plan sets it per endpoint (app.launch.rollover_after_s); the default
    # is for a cap that is not known: 5 minutes before OpenAI's 60.
    rollover_after_s: float | None = 55 * 60.0
    reconnect_attempts: int | None = None


def audio_for(config: EngineConfig) -> AudioPipeline:
    """The audio pipeline on the configured devices (not started)."""
    return AudioPipeline(config.input_device, config.output_device, config.audio, config.detector)


class Engine:
    """``audio``: the audio side to drive; by default the pipeline on the configured devices."""

    def __init__(
        self, config: EngineConfig, listener: EngineListener, audio: AudioFrontend | None = None
    ) -> None:
        self.config = config
        self.listener = listener
        self.conversation = Conversation(
            ConversationSettings(
                session=config.session,
                push_to_talk=config.push_to_talk,
                cue_after_s=config.cue_after_s,
                backend=config.backend,
            )
        )
        self.audio: AudioFrontend = audio if audio is not None else audio_for(config)
        self._earcon = load_earcon()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stopped = threading.Event()
        self._transport: RealtimeTransport | None = None
        self._outbox: asyncio.Queue[p.ClientEvent] | None = None
        self._held: p.InputAudioBufferAppend | None = None  # idle microphone audio not yet sent
        self._tasks: set[asyncio.Task[None]] = set()
        self._unknown = UnknownTypeLog()
        self._rollover_pending = False
        self._failures = ConnectionFailures()
        self._device_checked_at = 0.0
        self._devices = DeviceHealth()
        self._route = RouteWatcher()  # a microphone the sound server silently replaced
        self._silent_mic = SilentMicWatch()  # a microphone the OS keeps from the app (macOS, Windows)
        self.final_problem: ConnectionProblem | None = None

    # ------------------------------------------------------------------------------------------
    # Thread-safe controls
    # ------------------------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        """Open the audio devices and start connecting; raises if the audio cannot start."""
        self.audio.start()
        self._route.start()
        self._thread = threading.Thread(target=self._thread_main, name="helpdesk-engine", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError("the engine did not start")

    def stop(self, timeout: float = 1.0) -> None:
        """Stop audio, the connection and every task; returns within about ``timeout`` seconds."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        self._stopped.wait(timeout)
        self._route.stop()
        self.audio.close()
        if self._thread is not None:
            self._thread.join(max(0.0, timeout / 2))

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the engine has stopped by itself (fatal problem) or been stopped."""
        return self._stopped.wait(timeout)

    @property
    def input_level_dbfs(self) -> float:
        """The microphone's level now (peak of the last block), for a level meter."""
        return self.audio.input_level_dbfs

    def set_muted(self, muted: bool) -> None:
        self.audio.set_listening(not muted)
        self._call(lambda now: self.conversation.set_muted(muted, now))

    def push_to_talk(self, pressed: bool) -> None:
        self._call(lambda now: self.conversation.push_to_talk(pressed, now))

    def send_text(self, text: str) -> None:
        self._call(lambda now: self.conversation.send_text(text, now))

    def _call(self, command: Callable[[float], list[Action]]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed in between
            loop.call_soon_threadsafe(lambda: self._apply(command(time.monotonic())))

    # ------------------------------------------------------------------------------------------
    # The engine thread
    # ------------------------------------------------------------------------------------------
    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except Exception as exc:  # the last line of defence: report, never die silently
            log.exception("engine crashed")
            self.listener.on_notice(Notice("error", f"The assistant stopped unexpectedly: {exc}"))
        finally:
            loop.close()
            self._stopped.set()

    async def _main(self) -> None:
        self._outbox = asyncio.Queue()
        self._frame_ready = asyncio.Event()
        self.audio.set_frame_waker(self._frame_queued)
        self._transport = RealtimeTransport(
            self.config.endpoint, self, max_attempts=self.config.reconnect_attempts
        )
        self._apply(self.conversation.start(time.monotonic()))
        blocked = windows_privacy_block()
        if blocked is not None:
            self.listener.on_notice(Notice("error", blocked, needs_user=True))
        sender = asyncio.create_task(self._sender())
        pump = asyncio.create_task(self._pump())
        self._started.set()
        try:
            self.final_problem = await self._transport.run()
        finally:
            self.audio.set_frame_waker(None)
            for task in (sender, pump, *self._tasks):
                task.cancel()
            await asyncio.gather(sender, pump, *self._tasks, return_exceptions=True)

    async def _shutdown(self) -> None:
        self._apply(self.conversation.stop(time.monotonic()))
        if self._transport is not None:
            await self._transport.close()

    def _frame_queued(self) -> None:
        """From the audio side: a microphone frame is ready; wake the pump (never blocks)."""
        loop = self._loop
        if loop is not None and not self._frame_ready.is_set():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to wake
                loop.call_soon_threadsafe(self._frame_ready.set)

    async def _sender(self) -> None:
        assert self._outbox is not None and self._transport is not None
        waiting: p.ClientEvent | None = None
        while True:
            if waiting is not None:
                event, waiting = waiting, None
            elif self._held is not None:
                try:
                    event = await asyncio.wait_for(self._outbox.get(), IDLE_HOLD_S)
                except TimeoutError:
                    due, self._held = self._held, None
                    await self._transport.send(due)
                    continue
            else:
                event = await self._outbox.get()
            # Microphone audio queued back to back goes out as one append: coarse capture blocks
            # while idle come as bursts of frames, and the server wakes once per message.
            while isinstance(event, p.InputAudioBufferAppend) and not self._outbox.empty():
                following = self._outbox.get_nowait()
                if not isinstance(following, p.InputAudioBufferAppend):
                    waiting = following
                    break
                event = p.joined_appends(event, following)
            held, self._held = self._held, None
            if isinstance(event, p.InputAudioBufferAppend):
                if held is not None:
                    event = p.joined_appends(held, event)
                # While idle nobody is speaking: the audio may wait to go out in larger messages.
                if self.audio.idle and len(event.audio) < IDLE_APPEND_BYTES:
                    self._held = event
                    continue
            elif held is not None:
                await self._transport.send(held)  # the audio first: the order on the wire is kept
            await self._transport.send(event)

    async def _pump(self) -> None:
        audio = self.audio
        while True:
            now = time.monotonic()
            for report in audio.drain():
                self._report(report, now)
            self.conversation.set_underruns(audio.underruns)
            self._apply(self.conversation.tick(now))
            if now - self._device_checked_at >= DEVICE_CHECK_INTERVAL_S:
                self._device_checked_at = now
                self._check_devices(now)
            await self._maybe_rollover(now)
            busy = audio.busy
            audio.pace(busy or self.conversation.under_way, now)
            interval = PUMP_INTERVAL_S if busy else IDLE_PUMP_INTERVAL_S
            if audio.idle:
                interval = RESTING_PUMP_INTERVAL_S
            self._frame_ready.clear()
            if not audio.frames_waiting():  # a frame queued after the clear sets the event again
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._frame_ready.wait(), interval)

    def _report(self, report: AudioReport, now: float) -> None:
        """One thing the audio side reported, handed to the conversation."""
        match report:
            case SpeechEvent():
                log.info("local %s at %.3f (decided %.3f)", report.kind, report.at, report.decided_at)
                self._apply(self.conversation.local_speech(report.kind, report.at, now))
            case Paused():  # what the conversation needs of a pause comes with its halt
                log.info("answer paused at %s", report.record.played_ms)
            case HaltRecord():
                self._apply(self.conversation.playback_halted(report.played_ms, report.silent_at, now))
            case MicFrame():
                silent = self._silent_mic.feed(report.pcm16, report.captured_at)
                if silent is not None:
                    self.listener.on_notice(Notice("warning", silent, needs_user=True))
                self._apply(self.conversation.mic_frame(report))
            case FirstAudible():
                self._apply(self.conversation.first_audio(report.item_id, report.at))
            case PlayedOut():
                self._apply(self.conversation.item_played_out(report.item_id, now))
            case _:
                assert_never(report)

    def _check_devices(self, now: float) -> None:
        """Notices a device that stopped, says so once, reopens it every few seconds until it works."""
        names: dict[str, str] = {}
        for role, stream in self.audio.devices():
            name = names[role] = stream.device.name
            step = self._devices.check(
                role, lost=stream.lost(now), delivering=stream.delivering(now), now=now
            )
            match step:
                case DeviceStep.NOTHING:
                    pass
                case DeviceStep.LOST:
                    log.warning("the %s (%s) stopped", role, name)
                    self.listener.on_notice(device_lost_notice(role, name))
                case DeviceStep.BACK:
                    log.info("the %s (%s) works again", role, name)
                    self.listener.on_notice(device_back_notice(role, name))
                case DeviceStep.REOPEN:
                    try:
                        stream.reopen()
                    except Exception as exc:
                        log.info("the %s is still unavailable: %s", role, exc)
                    else:
                        if role == "microphone":
                            self._route.rebaseline()
                            self._silent_mic.restart()
                case _:
                    assert_never(step)
        while self._route.changes:
            change = self._route.changes.popleft()
            log.warning("the microphone's recording moved: %s", change)
            self.listener.on_notice(route_notice(change, names.get("microphone", "microphone")))

    async def _maybe_rollover(self, now: float) -> None:
        transport = self._transport
        limit = self.config.rollover_after_s
        if transport is None or limit is None or transport.connected_at is None or self._rollover_pending:
            return
        if now - transport.connected_at < limit or self.conversation.state.value != "listening":
            return
        self._rollover_pending = True
        log.info("planned session rollover after %.0f s", now - transport.connected_at)
        try:
            await transport.rollover()
        finally:
            self._rollover_pending = False

    # ------------------------------------------------------------------------------------------
    # Carrying out actions
    # ------------------------------------------------------------------------------------------
    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Send():
                    if self._outbox is not None:
                        self._outbox.put_nowait(action.event)
                case PlayAudio():
                    self.audio.play(action.item_id, action.pcm16)
                case EndAudio():
                    self.audio.end_item(action.item_id)
                case Halt():
                    self.audio.halt(action.item_ids)
                case ResumeAudio():
                    self.audio.resume()
                case PlayCue():
                    self.audio.play(action.cue_id, self._earcon)
                    self.audio.end_item(action.cue_id)
                case RunTool():
                    self._spawn(self._run_tool(action))
                case StateChanged():
                    self.listener.on_state(action)
                case Transcript():
                    self.listener.on_transcript(action)
                case ToolActivity():
                    self.listener.on_tool(action)
                case TurnCompleted():
                    self.listener.on_turn(action)
                case Notice():
                    self.listener.on_notice(action)
                case _:
                    assert_never(action)

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_tool(self, call: RunTool) -> None:
        result = await self.config.tools.run(call.name, call.arguments)
        self._apply(
            self.conversation.tool_finished(call.call_id, result.output_json(), result.ok, time.monotonic())
        )

    # ------------------------------------------------------------------------------------------
    # TransportHandler
    # ------------------------------------------------------------------------------------------
    async def on_connected(self, reconnected: bool) -> None:
        self._failures.connected()
        self._drain_outbox()  # anything queued for the old socket is replaced by the replay
        actions = self.conversation.connected_to_server(reconnected, time.monotonic())
        # session.update and the replay go out from here, in order, before any microphone audio:
        # the transport only lets this call send until it returns.
        assert self._transport is not None
        for action in actions:
            if isinstance(action, Send):
                await self._transport.send(action.event)
        self._apply([a for a in actions if not isinstance(a, Send)])

    async def on_event(self, event: p.ServerEvent) -> None:
        if isinstance(event, p.UnknownEvent) and self._unknown.first_time(event.type):
            log.info("ignoring server event type %s", event.type)
        elif isinstance(event, p.MalformedEvent):
            log.warning("malformed server event: %s", event.reason)
        if isinstance(event, (p.SpeechStarted, p.SpeechStopped)):
            log.info("server %s (playing: %s)", event.TYPE, self.audio.playing)
        self._apply(self.conversation.server_event(event, time.monotonic()))

    async def on_disconnected(self, problem: ConnectionProblem, retry_in: float | None) -> None:
        self._drain_outbox()
        unreachable = self._failures.failed()
        message = problem.message
        if retry_in is not None:
            message = f"{message} Reconnecting in {retry_in:.1f} s."
        self._apply(
            self.conversation.disconnected(
                message, retry_in is not None, time.monotonic(), needs_user=retry_in is None or unreachable
            )
        )

    def _drain_outbox(self) -> None:
        self._held = None
        if self._outbox is None:
            return
        while not self._outbox.empty():
            self._outbox.get_nowait()
