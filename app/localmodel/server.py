"""The embedded offline realtime server: a ``websockets`` server speaking the OpenAI Realtime GA
protocol on loopback, with local speech recognition, the helpdesk brain and a local voice.

One :class:`~app.localmodel.session.Session` per connection decides what the protocol requires;
this module runs the slow parts off the event loop (recognition and synthesis in worker threads)
and streams replies clause by clause. A connection without the token is refused with HTTP 401.

Limits (:class:`ServerLimits`), so that no client can take the server down or make it grow: at most
``max_sessions`` sessions at once (one more gets HTTP 503 with Retry-After), a session with no
client event for ``idle_timeout_s`` is closed with 1001 and a reason, frames are at most
:data:`MAX_MESSAGE_BYTES`, and what a session keeps is bounded in :mod:`~app.localmodel.session`.
An event the server fails on costs that event an ``error``, never the session. Beyond loopback the
server only speaks TLS (``wss://``): the token and the conversation never cross a network in clear.

Memory: what a session allocates is freed when it ends, but glibc keeps freed memory in the malloc
arenas of the worker threads the speech models run in, so RSS only ever grew. The server caps the
arenas at two (:func:`limit_malloc_arenas`, at start) and asks glibc to give free memory back
(``malloc_trim``, in a worker thread) whenever a session or a response ends; elsewhere both do
nothing. Piper's onnxruntime session keeps an arena of its own, which only its options turn off.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hmac
import json
import logging
import math
import secrets
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from app.core import protocol as p
from app.localmodel.components import Brain, BrainReply, Components, Speech, Utterance
from app.localmodel.session import (
    BeginUtterance,
    CancelResponse,
    Command,
    EndUtterance,
    JudgeTurnEnd,
    Output,
    ResponseInput,
    Session,
    StartResponse,
    UtteranceAudio,
    UtterancePaused,
    UtteranceResumed,
)
from app.localmodel.turn_text import judge_turn
from app.realtime.endpoint import is_loopback_host

log = logging.getLogger("app.localmodel.server")

PATH = "/v1/realtime"
PARTIAL_EVERY_S = 0.8
MAX_MESSAGE_BYTES = 4 * 2**20
REALTIME_SUBPROTOCOL = Subprotocol("realtime")
INSECURE_KEY_SUBPROTOCOL = "openai-insecure-api-key."


def new_token() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class ServerLimits:
    # Sessions at once: the app needs one (two for a moment while it reconnects), a selftest one
    # more; each session's speech work competes for the same two cores, so more would only be slow.
    max_sessions: int = 8
    # A session with no client event this long is closed (1001). The app streams microphone audio
    # all the time, so only a client that was left behind is ever idle this long.
    idle_timeout_s: float = 600.0
    retry_after_s: int = 5  # told to a client refused for lack of room


class ServerSetupError(ValueError):
    """The server cannot run as asked (a public address without TLS); the message says why."""


def check_address(host: str, tls: bool) -> None:
    """Refuses to serve plain ``ws://`` beyond this computer: the token would cross the network in clear."""
    if not tls and not is_loopback_host(host):
        raise ServerSetupError(
            f"listening on {host} without TLS would send the token and every conversation over the "
            "network in clear; serve wss:// (--tls-cert and --tls-key) or listen on loopback"
        )


@dataclass
class _Speculation:
    """An answer prepared while the user paused, used if the turn really ended there."""

    item_id: str
    reply: BrainReply
    speech: Speech | None

    def discard(self) -> None:
        if self.speech is not None:
            self.speech.cancel()


@dataclass(eq=False)  # identity, so connections can live in a set
class _Connection:
    ws: ServerConnection
    session: Session
    brain: Brain | None = None
    tool_names: frozenset[str] = frozenset()  # the tools offered when the brain was made
    utterances: dict[str, Utterance] = field(default_factory=dict)
    partial_tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    transcripts: dict[str, asyncio.Future[str]] = field(default_factory=dict)
    background: set[asyncio.Task[Any]] = field(default_factory=set)  # what runs on its own, kept alive
    response_task: asyncio.Task[None] | None = None
    response_id: str | None = None
    cancel_reason: Literal["turn_detected", "client_cancelled"] | None = None
    timing: dict[str, float] = field(default_factory=dict)  # this turn's milestones, for the log
    speculation: _Speculation | None = None
    speculation_task: asyncio.Task[None] | None = None
    # The first judging of each item's latest pause; its result: whether a longer pause may decide.
    first_judgements: dict[str, asyncio.Task[bool]] = field(default_factory=dict)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class EmbeddedServer:
    def __init__(
        self,
        components: Components,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: ssl.SSLContext | None = None,
        limits: ServerLimits = ServerLimits(),
    ) -> None:
        check_address(host, tls is not None)
        self.components = components
        self.token = token
        self.host = host
        self.port = port
        self.tls = tls
        self.limits = limits
        self._server: Server | None = None
        self._connections: set[_Connection] = set()
        self._admitted: set[ServerConnection] = set()  # past the token check, handshake included
        self._memory = _MemoryReturner()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'ws' if self.tls is None else 'wss'}://{host}:{self.port}{PATH}"

    @property
    def sessions(self) -> list[Session]:
        return [connection.session for connection in self._connections]

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._check_request,
            select_subprotocol=_select_subprotocol,
            max_size=MAX_MESSAGE_BYTES,
            ping_interval=20,
            ping_timeout=20,
            ssl=self.tls,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self._memory.settle()

    # -- connection setup --------------------------------------------------------------------
    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        supplied = _bearer(request.headers)
        if supplied is None and is_loopback_host(self.host):
            # Browsers cannot set headers on a WebSocket, so OpenAI's browser clients send the key as
            # a subprotocol; acceptable only where the token never crosses a network.
            supplied = _subprotocol_token(request.headers)
        if supplied is None or not hmac.compare_digest(supplied, self.token.encode()):
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "Missing or wrong token.\n")
            response.headers["WWW-Authenticate"] = 'Bearer realm="helpdesk-voice"'
            return response
        if request.path.split("?")[0] != PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"The realtime endpoint is {PATH}.\n")
        # Counted from here, not once the handler runs, so a burst of handshakes cannot slip past.
        self._admitted = {c for c in self._admitted if c.state is not State.CLOSED}
        if len(self._admitted) >= self.limits.max_sessions:
            log.warning("refused a session: %d are open, the limit", len(self._admitted))
            response = connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"The server has its limit of {self.limits.max_sessions} sessions open; try again later.\n",
            )
            response.headers["Retry-After"] = str(self.limits.retry_after_s)
            return response
        self._admitted.add(connection)
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        connection = _Connection(ws, Session(judges_turn_end=True))
        self._connections.add(connection)
        try:
            await self._emit(connection, connection.session.opened())
            await self._receive(connection)
        except Exception:  # a broken connection ends this session only, never the server
            log.exception("session ended by an error")
        finally:
            self._connections.discard(connection)
            self._admitted.discard(ws)
            await self._end(connection)
            self._memory.give_back()

    async def _receive(self, connection: _Connection) -> None:
        ws, idle_s = connection.ws, self.limits.idle_timeout_s
        while True:
            try:
                async with asyncio.timeout(idle_s):
                    message = await ws.recv()
            except TimeoutError:
                log.info("closing a session idle for %g s", idle_s)
                await ws.close(CloseCode.GOING_AWAY, f"no client event for {idle_s:g} s; session closed")
                return
            except ConnectionClosed:
                return
            try:
                await self._emit(connection, connection.session.handle(message))
            except Exception:  # a fault of ours costs this event, not the session
                log.exception("a client event could not be handled")
                message = "The server failed on this event; the session goes on."
                await self._send(connection, _server_error(message))

    async def _end(self, connection: _Connection) -> None:
        self._drop_speculation(connection)
        tasks = [*connection.partial_tasks.values(), *connection.background]
        if connection.response_task is not None:
            tasks.append(connection.response_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- carrying out a session's output ----------------------------------------------------
    async def _emit(self, connection: _Connection, output: Output) -> None:
        # A cancel takes effect before the events that go with it (conversation.item.truncated,
        # speech_started) are sent: none of the cancelled response's audio follows them.
        for command in output.commands:
            if isinstance(command, CancelResponse):
                self._run(connection, command)
        for event in output.events:
            await self._send(connection, event)
        for command in output.commands:
            if not isinstance(command, CancelResponse):
                self._run(connection, command)

    async def _send(self, connection: _Connection, event: p.KnownServerEvent) -> None:
        frame = p.encode(event)  # strict JSON, as clients parse it
        with contextlib.suppress(ConnectionClosed):  # the receive loop ends the session
            async with connection.send_lock:
                await connection.ws.send(frame)

    def _run(self, connection: _Connection, command: Command) -> None:
        if isinstance(command, BeginUtterance):
            # What the user just heard is what they are most likely answering ("done", "yes").
            utterance = self.components.recognizer.utterance(connection.session.last_assistant_words())
            connection.utterances[command.item_id] = utterance
            connection.transcripts[command.item_id] = asyncio.get_running_loop().create_future()
            connection.partial_tasks[command.item_id] = asyncio.create_task(
                self._partials(connection, command.item_id, utterance)
            )
        elif isinstance(command, UtteranceAudio):
            current = connection.utterances.get(command.item_id)
            if current is not None:
                current.add(command.pcm16)
        elif isinstance(command, UtterancePaused):
            paused = connection.utterances.get(command.item_id)
            config = connection.session.config
            detection = config.turn_detection
            speaks = "audio" in config.output_modalities  # a text-only session has nothing to prepare
            if paused is not None and detection is not None and detection.create_response and speaks:
                self._drop_speculation(connection)
                connection.speculation_task = asyncio.create_task(
                    self._speculate(connection, command.item_id, paused)
                )
        elif isinstance(command, UtteranceResumed):
            self._drop_speculation(connection)
        elif isinstance(command, JudgeTurnEnd):
            judged = connection.utterances.get(command.item_id)
            if judged is not None:
                # The turn as it was at the pause: audio arriving meanwhile is the next question's.
                audio = judged.audio_16k()
                judging = asyncio.create_task(self._judge_turn_end(connection, command, judged, audio))
                connection.background.add(judging)
                judging.add_done_callback(connection.background.discard)
                if not command.again:
                    connection.first_judgements[command.item_id] = judging
        elif isinstance(command, EndUtterance):
            connection.first_judgements.pop(command.item_id, None)
            task = connection.partial_tasks.pop(command.item_id, None)
            if task is not None:
                task.cancel()
            finishing = asyncio.create_task(self._finish_utterance(connection, command))
            connection.background.add(finishing)
            finishing.add_done_callback(connection.background.discard)
        elif isinstance(command, StartResponse):
            connection.response_id = command.response_id
            connection.cancel_reason = None
            connection.response_task = asyncio.create_task(self._respond(connection, command))
        elif (
            isinstance(command, CancelResponse)
            and connection.response_id == command.response_id
            and connection.response_task is not None
            and connection.cancel_reason is None  # once: a second cancel would cut its response.done
        ):
            connection.cancel_reason = command.reason
            connection.response_task.cancel()

    async def _judge_turn_end(
        self,
        connection: _Connection,
        command: JudgeTurnEnd,
        utterance: Utterance,
        audio: npt.NDArray[np.float32],
    ) -> bool:
        """Judges the pause by the words so far (the recogniser's partial, shared with the answer
        being prepared) and the end-of-turn model on the audio, side by side in worker threads.
        A failure of either leaves the turn to the fallback pause rather than ending it on a guess.
        True when the verdict was unfinished but unsure: worth asking again after a longer pause."""
        if command.again:
            first = connection.first_judgements.pop(command.item_id, None)
            if first is None:
                return False  # the turn ended meanwhile
            await asyncio.wait([first])  # its verdict decides whether to ask again
            if first.cancelled() or first.exception() is not None or not first.result():
                return False  # judged unfinished by its words, which a longer pause does not change
        judge = self.components.turn_end
        started = time.monotonic()
        try:
            words = asyncio.to_thread(utterance.partial, whole=True, again=command.again)
            voice = asyncio.to_thread(judge, audio) if judge is not None else asyncio.sleep(0, None)
            text, probability = await asyncio.gather(words, voice)
        except Exception:
            log.exception("judging the end of the turn failed; it ends after the longer pause")
            return False
        complete, why, unsure = judge_turn(text, probability)
        log.debug("end of turn %s: judged on %r", command.item_id, text)  # the words only when debugging
        log.info(
            "end of turn %s%s: %s, %s in %.0f ms",
            command.item_id,
            " (again)" if command.again else "",
            "complete" if complete else "unfinished",
            why,
            (time.monotonic() - started) * 1000,
        )
        await self._emit(connection, connection.session.turn_judged(command.item_id, command.at_ms, complete))
        return unsure

    async def _speculate(self, connection: _Connection, item_id: str, utterance: Utterance) -> None:
        """The user paused: decode now (``finish`` reuses it) and start speaking the likely answer."""
        text = (await asyncio.to_thread(utterance.partial, whole=True)).strip()
        if not text or (connection.response_task is not None and not connection.response_task.done()):
            return
        brain = self._brain(connection)
        reply = await asyncio.to_thread(brain.preview, text)
        speech = None
        if reply.text:
            speech = self.components.speak(reply.text)
            speech.start()
        connection.speculation = _Speculation(item_id, reply, speech)

    def _drop_speculation(self, connection: _Connection) -> None:
        if connection.speculation_task is not None:
            connection.speculation_task.cancel()
            connection.speculation_task = None
        if connection.speculation is not None:
            connection.speculation.discard()
            connection.speculation = None

    async def _take_speculation(
        self, connection: _Connection, item_id: str | None, reply: BrainReply
    ) -> Speech | None:
        """The speculative speech, if it was for this turn and says what the brain now says."""
        task = connection.speculation_task
        if task is not None and not task.done() and item_id is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        connection.speculation_task = None
        speculation, connection.speculation = connection.speculation, None
        if speculation is None:
            return None
        if speculation.item_id == item_id and speculation.reply == reply and speculation.speech is not None:
            return speculation.speech
        speculation.discard()
        return None

    async def _partials(self, connection: _Connection, item_id: str, utterance: Utterance) -> None:
        sent = ""
        while True:
            await asyncio.sleep(PARTIAL_EVERY_S)
            text = await asyncio.to_thread(utterance.partial)
            # Deltas only ever append; a revised partial waits for the final transcript.
            if (
                connection.session.config.transcription_model
                and text.startswith(sent)
                and len(text) > len(sent)
            ):
                delta = p.InputAudioTranscriptionDelta(item_id, 0, text[len(sent) :])
                await self._send(connection, delta)
                sent = text

    async def _finish_utterance(self, connection: _Connection, command: EndUtterance) -> None:
        connection.timing = {"turn_end": time.monotonic()}
        utterance = connection.utterances.pop(command.item_id, None)
        text = ""
        if utterance is not None:
            try:
                text = (await asyncio.to_thread(utterance.finish)).strip()
            except Exception as exc:
                log.exception("speech recognition failed")
                failed = p.InputAudioTranscriptionFailed(
                    command.item_id, 0, "transcription_error", "transcription_failed", str(exc)
                )
                await self._send(connection, failed)
        connection.timing["transcribed"] = time.monotonic()
        future = connection.transcripts.pop(command.item_id, None)
        if future is not None and not future.done():
            future.set_result(text)
        await self._emit(
            connection, connection.session.user_transcribed(command.item_id, text, command.respond)
        )

    # -- replies ---------------------------------------------------------------------------
    def _brain(self, connection: _Connection) -> Brain:
        tool_names = frozenset(connection.session.config.tool_names)
        if connection.brain is None or tool_names != connection.tool_names:
            # The brain keeps the dialog; a change of the client's tools is rare and starts afresh.
            connection.brain = self.components.new_brain(tool_names)
            connection.tool_names = tool_names
        return connection.brain

    async def _think(self, connection: _Connection, source: ResponseInput) -> BrainReply:
        session = connection.session
        brain = self._brain(connection)
        text = source.user_text
        if text is None and source.user_item_id is not None:
            pending = connection.transcripts.get(source.user_item_id)
            text = await pending if pending is not None else session.transcript_of(source.user_item_id)
        reply: BrainReply | None = None
        for call_id, output in source.tool_outputs:
            reply = await asyncio.to_thread(brain.tool_result, call_id, _json_object(output))
        if text:
            reply = await asyncio.to_thread(brain.reply, text)
        return reply or BrainReply("I'm here. What can I help you with?")

    async def _respond(self, connection: _Connection, command: StartResponse) -> None:
        response_id, options = command.response_id, command.options
        outputs: list[p.ItemInfo] = []
        audio_items: dict[str, float] = {}
        streaming: _Streaming | None = None
        echo: dict[str, Any] = {  # what response.created and response.done both say of the response
            "output_modalities": options.modalities,
            "voice": connection.session.config.voice,
            "metadata": options.metadata,
            "conversation_id": "conv_embedded",
        }
        created = p.ResponseCreated(response_id, "in_progress", **echo)

        def done(reason: Literal["turn_detected", "client_cancelled"] | None = None) -> p.ResponseDone:
            usage = _usage(command.source, outputs, sum(audio_items.values()))
            details = None if reason is None else p.ResponseStatusDetails("cancelled", reason)
            status = "completed" if reason is None else "cancelled"
            return p.ResponseDone(response_id, status, details, usage, tuple(outputs), **echo)

        try:
            await self._send(connection, created)
            reply = await self._think(connection, command.source)
            connection.timing["replied"] = time.monotonic()
            prepared = await self._take_speculation(connection, command.source.user_item_id, reply)
            if prepared is not None and options.text_only:
                prepared.cancel()
                prepared = None
            if reply.text:
                streaming = _Streaming(response_id, p.new_id("item"), len(outputs), options.text_only)
                await self._open(connection, streaming)
                if options.text_only:
                    streaming.transcript = reply.text
                    await self._send(connection, streaming.transcript_delta(reply.text))
                else:
                    await self._speak(connection, streaming, reply.text, prepared)
                finished, streaming = streaming, None  # a cancel from here on must not close it twice
                await self._close(connection, finished, "completed", outputs, audio_items)
            if reply.tool_call is not None:
                call = reply.tool_call
                outputs.append(await self._call_tool(connection, response_id, len(outputs), call))
            await self._send(connection, done())
        except asyncio.CancelledError:
            if streaming is not None:
                streaming.stop()
                await self._close(connection, streaming, "incomplete", outputs, audio_items)
            reason = connection.cancel_reason or "client_cancelled"
            await self._send(connection, done(reason))
        except Exception as exc:
            log.exception("reply failed")
            await self._send(connection, _server_error(f"The reply failed: {exc}"))
            await self._send(connection, done())
        finally:
            connection.session.response_finished(response_id, audio_items)
            if connection.response_id == response_id:
                connection.response_id = None
            self._memory.give_back()

    async def _open(self, connection: _Connection, streaming: _Streaming) -> None:
        """response.output_item.added, conversation.item.added, response.content_part.added."""
        item = streaming.started_item()
        added = connection.session.output_item_started(item, audio=not streaming.text_only)
        await self._send_all(
            connection,
            [p.ResponseOutputItemAdded(streaming.response_id, streaming.index, item), *added.events],
        )
        await self._send(connection, streaming.part_added())

    async def _close(
        self,
        connection: _Connection,
        streaming: _Streaming,
        status: str,
        outputs: list[p.ItemInfo],
        audio_items: dict[str, float],
    ) -> None:
        """The item's closing events, response.output_item.done, then conversation.item.done."""
        item = streaming.finish_item(status)
        outputs.append(item)
        audio_ms = None if streaming.text_only else streaming.audio_ms
        if audio_ms is not None:
            audio_items[streaming.item_id] = audio_ms
        done = connection.session.output_item_finished(item, audio_ms)
        await self._send_all(connection, [*streaming.closing_events(status), *done.events])

    async def _speak(
        self, connection: _Connection, streaming: _Streaming, text: str, prepared: Speech | None
    ) -> None:
        speech = prepared or self.components.speak(text)
        streaming.speech = speech
        async for chunk in speech:
            if chunk.first_of_clause:
                delta = (" " if streaming.transcript else "") + chunk.clause_text
                streaming.transcript += delta
                await self._send(connection, streaming.transcript_delta(delta))
            if streaming.audio_bytes == 0:
                self._log_timing(connection)
            streaming.audio_bytes += len(chunk.pcm16)
            await self._send(connection, streaming.audio_delta(chunk.pcm16))
            # Only audio the client has been sent can be truncated; the session cuts the words with it.
            connection.session.output_audio_sent(streaming.item_id, streaming.audio_ms, streaming.transcript)

    @staticmethod
    def _log_timing(connection: _Connection) -> None:
        timing = connection.timing
        start = timing.get("turn_end")
        if start is None:
            return  # a typed request or a tool follow-up: no spoken turn to time
        now = time.monotonic()
        parts = [
            f"{name} +{(timing[name] - start) * 1000:.0f} ms"
            for name in ("transcribed", "replied")
            if name in timing
        ]
        log.info(
            "turn timing: end of turn -> %s, first audio +%.0f ms", ", ".join(parts), (now - start) * 1000
        )
        connection.timing = {}

    async def _call_tool(
        self, connection: _Connection, response_id: str, index: int, call: Any
    ) -> p.ItemInfo:
        item_id = p.new_id("item")
        arguments = json.dumps(call.arguments, separators=(",", ":"))
        started = p.ItemInfo(
            item_id,
            "function_call",
            None,
            "in_progress",
            (),
            call.call_id,
            call.name,
            "",
            object="realtime.item",
        )
        finished = replace(started, status="completed", arguments=arguments)
        session = connection.session
        await self._send_all(
            connection,
            [
                p.ResponseOutputItemAdded(response_id, index, started),
                *session.output_item_started(started).events,
                p.ResponseFunctionCallArgumentsDelta(response_id, item_id, index, call.call_id, arguments),
                p.ResponseFunctionCallArgumentsDone(
                    response_id, item_id, index, call.call_id, call.name, arguments
                ),
                p.ResponseOutputItemDone(response_id, index, finished),
                *session.output_item_finished(finished).events,
            ],
        )
        return finished

    async def _send_all(self, connection: _Connection, events: list[p.KnownServerEvent]) -> None:
        for event in events:
            await self._send(connection, event)


@dataclass
class _Streaming:
    """One assistant item on its way out: audio with its transcript, or text alone."""

    response_id: str
    item_id: str
    index: int
    text_only: bool = False
    transcript: str = ""  # the words so far (a text-only item's text)
    audio_bytes: int = 0
    speech: Any = None

    @property
    def audio_ms(self) -> float:
        return self.audio_bytes / 2 / 24000 * 1000.0

    def started_item(self) -> p.ItemInfo:
        return p.ItemInfo(self.item_id, "message", "assistant", "in_progress", (), object="realtime.item")

    def part_added(self) -> p.KnownServerEvent:
        return p.ResponseContentPartAdded(*self._at(), self._part(""))

    def transcript_delta(self, delta: str) -> p.KnownServerEvent:
        if self.text_only:
            return p.ResponseOutputTextDelta(*self._at(), delta)
        return p.ResponseOutputAudioTranscriptDelta(*self._at(), delta)

    def audio_delta(self, pcm16: bytes) -> p.KnownServerEvent:
        return p.ResponseOutputAudioDelta(*self._at(), pcm16)

    def finish_item(self, status: str) -> p.ItemInfo:
        words = self.transcript
        part = (
            p.ContentPart("output_text", words)
            if self.text_only
            else p.ContentPart("output_audio", transcript=words)
        )
        return replace(self.started_item(), status=status, content=(part,))

    def closing_events(self, status: str) -> list[p.KnownServerEvent]:
        at, words = self._at(), self.transcript
        closing: list[p.KnownServerEvent] = (
            [p.ResponseOutputTextDone(*at, words)]
            if self.text_only
            else [p.ResponseOutputAudioDone(*at), p.ResponseOutputAudioTranscriptDone(*at, words)]
        )
        return [
            *closing,
            p.ResponseContentPartDone(*at, self._part(words)),
            p.ResponseOutputItemDone(self.response_id, self.index, self.finish_item(status)),
        ]

    def _at(self) -> tuple[str, str, int, int]:
        return self.response_id, self.item_id, self.index, 0

    def _part(self, words: str) -> p.ContentPart:
        return p.ContentPart("text", words) if self.text_only else p.ContentPart("audio", transcript=words)

    def stop(self) -> None:
        if self.speech is not None:
            self.speech.cancel()


# ``usage`` is an estimate: the embedded server runs no token-based model. Text counts one token per
# four characters (OpenAI's rule of thumb for English, rounded up); audio counts by its length at
# the rates OpenAI documents for realtime audio: one token per 100 ms of the user's audio, one per
# 50 ms of the assistant's.
CHARS_PER_TOKEN = 4
INPUT_AUDIO_TOKENS_PER_S = 10
OUTPUT_AUDIO_TOKENS_PER_S = 20


def _usage(source: ResponseInput, outputs: list[p.ItemInfo], output_audio_ms: float) -> p.Usage:
    """What a response consumed and made, estimated (see :data:`CHARS_PER_TOKEN`): its input is what
    the brain read (the user's typed words or spoken audio, and tool outputs), its output the words of
    its items (transcripts, text, call arguments) and the audio sent."""
    heard = source.user_audio_ms
    typed = source.user_text if heard is None else None
    input_text = " ".join([typed or "", *(output for _, output in source.tool_outputs)]).strip()
    words: list[str] = []
    for item in outputs:
        if item.type == "function_call":
            words.append(item.arguments or "")
        words += [part.transcript or part.text or "" for part in item.content]
    text_in = math.ceil(len(input_text) / CHARS_PER_TOKEN)
    text_out = math.ceil(len(" ".join(words)) / CHARS_PER_TOKEN)
    audio_in = math.ceil(max(0.0, heard or 0.0) * INPUT_AUDIO_TOKENS_PER_S / 1000.0)
    audio_out = math.ceil(max(0.0, output_audio_ms) * OUTPUT_AUDIO_TOKENS_PER_S / 1000.0)
    return p.Usage(
        text_in + audio_in + text_out + audio_out,
        text_in + audio_in,
        text_out + audio_out,
        text_in,
        audio_in,
        0,
        text_out,
        audio_out,
    )


def _server_error(message: str) -> p.ErrorEvent:
    return p.ErrorEvent("server_error", "server_error", message, None, None)


def _bearer(headers: Headers) -> bytes | None:
    """The bearer token as the client sent it, in bytes: any octets compare, none raise."""
    value = headers.get("Authorization", "")
    if value.lower().startswith("bearer "):
        # websockets decodes header octets as ISO-8859-1, which encodes back to exactly what was sent.
        return value[7:].strip().encode("latin-1", errors="replace")
    return None


def _subprotocol_token(headers: Headers) -> bytes | None:
    """The token of a browser-style client: the ``openai-insecure-api-key.<token>`` subprotocol."""
    for value in headers.get_all("Sec-WebSocket-Protocol"):
        for offered in value.split(","):
            offered = offered.strip()
            if offered.startswith(INSECURE_KEY_SUBPROTOCOL):
                return offered[len(INSECURE_KEY_SUBPROTOCOL) :].encode("latin-1", errors="replace")
    return None


def _select_subprotocol(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """``realtime`` when the client offers it (browsers insist on one of theirs being chosen), else none."""
    return REALTIME_SUBPROTOCOL if REALTIME_SUBPROTOCOL in offered else None


class _MemoryReturner:
    """Asks glibc to return freed memory to the system, in a worker thread, one request at a time."""

    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._running: asyncio.Task[None] | None = None
        self._again = False

    def give_back(self) -> None:
        if self._trim is None:
            return
        if self._running is not None and not self._running.done():
            self._again = True  # more was freed while it ran: once more afterwards
            return
        self._running = asyncio.get_running_loop().create_task(self._run())

    async def settle(self) -> None:
        if self._running is not None:
            await self._running

    async def _run(self) -> None:
        assert self._trim is not None
        self._again = True
        while self._again:
            self._again = False
            await asyncio.to_thread(self._trim, 0)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library this process already uses
    except OSError:
        return None
    # Only glibc has this one; musl, for one, has neither malloc_trim nor the arenas it trims.
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def _malloc_trim() -> Callable[[int], int] | None:
    libc = _glibc()
    if libc is None:
        return None
    trim = libc.malloc_trim
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def give_back_memory() -> bool:
    """Asks glibc to return the memory it holds free to the system, now; False where it cannot."""
    trim = _malloc_trim()
    return trim is not None and bool(trim(0))


M_ARENA_MAX = -8  # mallopt's parameter, from glibc's malloc.h


def limit_malloc_arenas(count: int) -> bool:
    """Caps glibc's malloc arenas (by default up to eight per core); call before threads start."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, count))


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"output": text}
    return value if isinstance(value, dict) else {"output": value}
