"""One persistent realtime WebSocket: connect, receive, reconnect; no conversation logic.

:class:`RealtimeTransport` owns the socket and hands everything else to a :class:`TransportHandler`:
every parsed server frame, the moment a connection is ready (so the handler can configure the session
and replay the conversation), and every problem with how long until the next try. What to resend
after a reconnect, and what to do with a send that failed, is the handler's business.

Receiving runs in the task that awaits :meth:`RealtimeTransport.run`; :meth:`send` writes from the
caller's task, so the two never wait for each other. Frames are buffered by websockets without a
limit (``max_queue=None``): a paused socket would also stop keepalive pongs from being read, and a
busy handler would then look like a silent server.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import math
import random
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.version import version as websockets_version

from app import __version__
from app.core.protocol import (
    ClientEvent,
    ErrorEvent,
    ServerEvent,
    SessionCreated,
    UnknownEvent,
    UnknownTypeLog,
    encode,
    parse_server_event,
)
from app.realtime.endpoint import Endpoint
from app.realtime.errors import ConnectionProblem, classify, classify_error_event

__all__ = ["USER_AGENT", "BackoffPolicy", "RealtimeTransport", "TransportHandler"]

logger = logging.getLogger("app.realtime")

USER_AGENT: Final = f"helpdesk-voice/{__version__} websockets/{websockets_version}"
# close() promises to return within a second; the socket gets this long for a clean closing handshake.
_CLOSE_GRACE: Final = 0.5
_CLOSE_BUDGET: Final = 0.9

# Set while on_connected runs, to the connection it is setting up. Tasks started from on_connected
# inherit it, so their sends go through before the connection is opened to everyone else.
_setting_up: contextvars.ContextVar[ClientConnection | None] = contextvars.ContextVar(
    "helpdesk_voice_transport_setting_up", default=None
)


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Exponential backoff with jitter for reconnecting.

    Attempt ``n`` (0 for the first retry) waits ``min(maximum, initial * factor**n)``, at least
    ``rate_limit_minimum`` after HTTP 429, then scaled by a random factor in ``1 ± jitter`` so many
    clients that lost the same server do not return in lockstep. A connection that stayed up for
    ``reset_after`` seconds resets the count; one that drops sooner counts as a failed attempt, so a
    server that accepts and at once hangs up is not hammered.
    """

    initial: float = 0.25
    factor: float = 2.0
    maximum: float = 10.0
    jitter: float = 0.2
    rate_limit_minimum: float = 5.0
    reset_after: float = 10.0
    retry_after_limit: float = 60.0  # a server's Retry-After is honoured up to this many seconds

    def __post_init__(self) -> None:
        for name in ("initial", "maximum", "rate_limit_minimum", "reset_after", "retry_after_limit"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        if not math.isfinite(self.factor) or self.factor < 1.0:
            raise ValueError(f"factor must be >= 1, not {self.factor!r}")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter must be a fraction from 0 to below 1, not {self.jitter!r}")
        if self.maximum < self.initial:
            raise ValueError("maximum must not be below initial")

    def delay(self, attempt: int, rng: random.Random, *, rate_limited: bool = False) -> float:
        """Seconds to wait before retry number ``attempt`` (counting from 0)."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, not {attempt}")
        try:
            base = min(self.maximum, self.initial * self.factor**attempt)
        except OverflowError:
            base = self.maximum
        if rate_limited:
            base = max(base, self.rate_limit_minimum)
        return base * (1.0 + rng.uniform(-self.jitter, self.jitter))


class TransportHandler(Protocol):
    """What the transport reports to. Exceptions raised here are logged and counted, never fatal."""

    async def on_connected(self, reconnected: bool) -> None:
        """A connection is open; sends from here (and tasks started here) go out before any other's."""

    async def on_event(self, event: ServerEvent) -> None:
        """One server frame, in order; UnknownEvent and MalformedEvent included."""

    async def on_disconnected(self, problem: ConnectionProblem, retry_in: float | None) -> None:
        """The connection failed or was lost; ``retry_in`` None means the transport gave up."""


class _NoDebugLogger(logging.LoggerAdapter[logging.Logger]):
    """websockets' logger minus DEBUG: its debug output quotes request headers (the API key) and frames
    (audio). websockets checks ``isEnabledFor(DEBUG)`` once per connection, so nothing is even built."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


_WIRE_LOGGER: Final = _NoDebugLogger(logging.getLogger("websockets.client"))


class _RedirectRefusingConnect(connect):
    # websockets strips Authorization on a cross-origin redirect but not Azure's api-key header, so
    # no redirect is followed at all; a realtime endpoint has no reason to redirect.
    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


class RealtimeTransport:
    """The realtime WebSocket with reconnects; see the module docstring for the division of work.

    ``ping_interval`` and ``ping_timeout`` drive websockets' keepalive, so a silent server is noticed
    after at most ``ping_interval + ping_timeout + close_timeout`` (the last being how long websockets
    waits for the closing handshake before dropping the socket). ``max_attempts`` limits consecutive
    failed attempts (None: retry forever); non-retryable problems (bad key, not found) end at once.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        handler: TransportHandler,
        *,
        ping_interval: float = 10.0,
        ping_timeout: float = 10.0,
        open_timeout: float = 10.0,
        close_timeout: float = 1.0,
        max_message_bytes: int = 8 * 2**20,
        backoff: BackoffPolicy | None = None,
        max_attempts: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        for name, value in (
            ("ping_interval", ping_interval),
            ("ping_timeout", ping_timeout),
            ("open_timeout", open_timeout),
            ("close_timeout", close_timeout),
        ):
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, not {max_message_bytes!r}")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1 or None, not {max_attempts!r}")
        self._endpoint = endpoint
        self._handler = handler
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._max_message_bytes = max_message_bytes
        self._backoff = backoff if backoff is not None else BackoffPolicy()
        self._max_attempts = max_attempts
        self._rng = rng if rng is not None else random.Random()
        self._fixed_headers = tuple(endpoint.headers.values())
        # Secrets fetched per connection: the last few, since a server may quote an older one back.
        self._fetched_headers: collections.deque[str] = collections.deque(maxlen=8)
        self._secrets: tuple[str, ...] = ()
        self._update_secrets()
        self._unknown_types = UnknownTypeLog()

        self._ws: ClientConnection | None = None
        self._ready = False  # on_connected has returned: everyone may send
        self._rollover_of: ClientConnection | None = None
        self._closing = False
        self._stop = asyncio.Event()
        self._running = False
        self._run_done = asyncio.Event()
        self._run_task: asyncio.Task[Any] | None = None

        self.connected_at: float | None = None
        self.reconnects = 0
        self.handler_errors = 0
        self.last_handler_error: ConnectionProblem | None = None

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint

    @property
    def connected(self) -> bool:
        """A connection is open and set up (on_connected has returned)."""
        ws = self._ws
        return ws is not None and self._ready and ws.state is State.OPEN

    # -----------------------------------------------------------------------------------------------
    # Public operations
    # -----------------------------------------------------------------------------------------------

    async def run(self) -> ConnectionProblem | None:
        """Connects and keeps connecting until :meth:`close` or a problem not worth retrying.

        Returns None after :meth:`close`, else the problem that ended it (which the handler has
        already seen with ``retry_in=None``).
        """
        if self._running:
            raise RuntimeError("run() is already running")
        self._running = True
        self._run_done.clear()
        self._run_task = asyncio.current_task()
        try:
            return await self._run()
        finally:
            self._running = False
            self._run_task = None
            self._run_done.set()
            logger.info("realtime transport stopped")

    async def probe(self) -> ConnectionProblem | None:
        """One connection attempt for a health check: None when the server answered with a session.

        Connects as :meth:`run` would (same headers, no redirects, same timeouts), waits up to the
        open timeout for the first server event, which must be ``session.created``, and closes.
        """
        try:
            ws = await self._open()
        except Exception as exc:
            return self._classify(exc)
        try:
            data = await asyncio.wait_for(ws.recv(), self._open_timeout)
            first = parse_server_event(self._scrub_frame(data))
        except Exception as exc:
            return self._classify(exc)
        finally:
            await ws.close()
        if isinstance(first, SessionCreated):
            return None
        fatal = self._fatal(first)
        if fatal is not None:
            return fatal
        detail = (
            first.message
            if isinstance(first, ErrorEvent)
            else str(getattr(first, "type", None) or getattr(first, "TYPE", "an unexpected event"))
        )
        return ConnectionProblem(
            "handshake",
            f"The server answered, but not with a realtime session ({detail}).",
            retryable=False,
            detail=str(detail),
        )

    async def send(self, event: ClientEvent | Mapping[str, Any]) -> bool:
        """Sends one client event; False when there is no usable connection (nothing is queued).

        A malformed event (NaN, unserialisable value) raises, connected or not: that is a bug.
        """
        text = encode(event)
        ws = self._ws
        if ws is None or not (self._ready or _setting_up.get() is ws):
            return False
        try:
            await ws.send(text)
        except ConnectionClosed:
            return False
        return True

    async def rollover(self) -> bool:
        """A planned reconnect: closes this socket normally (1000) and connects again at once.

        The handler sees on_connected(reconnected=True) and no on_disconnected. Returns False when
        there was no open connection to roll over.
        """
        ws = self._ws
        if ws is None or self._closing or not self._ready:
            return False
        self._rollover_of = ws
        logger.info("planned reconnect: closing the current connection")
        await self._close_socket(ws, self._close_timeout)
        return True

    async def close(self) -> None:
        """Ends :meth:`run` for good; returns within a second even if the server does not answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CLOSE_BUDGET
        self._closing = True
        self._stop.set()
        ws = self._ws
        if ws is not None:
            await self._close_socket(ws, min(_CLOSE_GRACE, self._close_timeout))
        task = self._run_task
        # From inside a handler the run task is the caller, and waiting for it would wait for itself.
        if self._running and task is not None and task is not asyncio.current_task():
            try:
                async with asyncio.timeout_at(deadline):
                    await self._run_done.wait()
            except TimeoutError:
                pass  # run() is stuck in a handler; it ends when the handler returns

    # -----------------------------------------------------------------------------------------------
    # The connection loop
    # -----------------------------------------------------------------------------------------------

    async def _run(self) -> ConnectionProblem | None:
        failures = 0  # consecutive attempts that failed or did not stay up
        has_connected = False
        while not self._closing:
            ws, problem = await self._connect(attempt=failures + 1)
            if ws is not None:
                problem, stable = await self._session(ws, reconnected=has_connected)
                has_connected = True
                if stable:
                    failures = 0
                if problem is None:  # close() or a rollover
                    continue
            if problem is None or self._closing:
                break
            failures += 1
            retry_in = self._retry_delay(problem, failures)
            # Info, not warning: the handler hears every problem and shows it to the user; a warning
            # here would print each one a second time on a terminal.
            if retry_in is None:
                logger.info("connection problem (%s): %s; giving up", problem.kind, problem.message)
            else:
                logger.info(
                    "connection problem (%s): %s; retrying in %.2f s", problem.kind, problem.message, retry_in
                )
            await self._guarded(self._handler.on_disconnected(problem, retry_in), "on_disconnected")
            if retry_in is None:
                return problem
            await self._sleep(retry_in)
        return None

    def _retry_delay(self, problem: ConnectionProblem, failures: int) -> float | None:
        if not problem.retryable or self._closing:
            return None
        if self._max_attempts is not None and failures >= self._max_attempts:
            return None
        delay = self._backoff.delay(failures - 1, self._rng, rate_limited=problem.kind == "rate_limited")
        if problem.retry_after is not None:
            delay = max(delay, min(problem.retry_after, self._backoff.retry_after_limit))
        return delay

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        except TimeoutError:
            pass

    async def _connect(self, attempt: int) -> tuple[ClientConnection | None, ConnectionProblem | None]:
        """Opens one connection; (None, None) when close() interrupted it."""
        logger.info("connecting to %s (attempt %d)", self._endpoint.display_url, attempt)
        opening = asyncio.ensure_future(self._open())
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({opening, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not opening.done():
                opening.cancel()
        try:
            ws = await opening
        except asyncio.CancelledError:
            if not self._closing:
                raise  # run() itself was cancelled
            return None, None
        except Exception as exc:
            return None, self._classify(exc)
        if self._closing:
            ws.transport.abort()
            return None, None
        return ws, None

    async def _open(self) -> ClientConnection:
        headers = self._endpoint.headers
        source = self._endpoint.credentials
        if source is not None:
            # Asked anew for every attempt (first, reconnect, rollover): a short-lived secret is good
            # for one connection. The fetch runs inside the attempt, so close() interrupts it too.
            fetched = await source.headers()
            self._fetched_headers.extend(fetched.values())
            self._update_secrets()
            headers = {**headers, **fetched}
        return await _RedirectRefusingConnect(
            self._endpoint.url,
            additional_headers=headers,
            user_agent_header=USER_AGENT,
            open_timeout=self._open_timeout,
            ping_interval=self._ping_interval,
            ping_timeout=self._ping_timeout,
            close_timeout=self._close_timeout,
            max_size=self._max_message_bytes,
            max_queue=None,
            # Base64 audio barely compresses, and over loopback the bytes cost nothing: deflating
            # fifty frames a second only burns CPU on both sides all day.
            compression=None if self._endpoint.kind == "embedded" else "deflate",
            logger=_WIRE_LOGGER,
        )

    async def _session(
        self, ws: ClientConnection, reconnected: bool
    ) -> tuple[ConnectionProblem | None, bool]:
        """Serves one open connection until it ends; (problem or None if we ended it, stayed up long)."""
        started = time.monotonic()
        self._ws = ws
        self._ready = False
        self.connected_at = started
        if reconnected:
            self.reconnects += 1
        logger.info("connected to %s%s", self._endpoint.display_url, " (reconnected)" if reconnected else "")
        problem: ConnectionProblem | None = None
        try:
            token = _setting_up.set(ws)
            try:
                await self._guarded(self._handler.on_connected(reconnected), "on_connected")
            finally:
                _setting_up.reset(token)
            self._ready = True
            while True:
                try:
                    data = await ws.recv()
                except ConnectionClosed as exc:
                    problem = self._classify(exc)
                    break
                except Exception as exc:  # nothing else is expected from recv; never let it end run()
                    problem = self._classify(exc)
                    ws.transport.abort()
                    break
                event = parse_server_event(self._scrub_frame(data))
                if isinstance(event, UnknownEvent) and self._unknown_types.first_time(event.type):
                    logger.info("ignoring server events of unknown type %r", event.type)
                fatal = self._fatal(event)
                if fatal is not None:  # the handler hears it as the end of the connection, once
                    problem = fatal
                    await self._close_socket(ws, self._close_timeout)
                    break
                await self._guarded(self._handler.on_event(event), "on_event")
        finally:
            if ws.state is not State.CLOSED:  # run() was cancelled: leave no socket behind
                ws.transport.abort()
            self._ready = False
            self._ws = None
            self.connected_at = None
        stable = time.monotonic() - started >= self._backoff.reset_after
        if self._rollover_of is ws:
            self._rollover_of = None
            return None, stable
        if self._closing:
            return None, stable
        return problem, stable

    async def _guarded(self, call: Awaitable[None], what: str) -> None:
        """Awaits a handler call; its exception is reported and the connection carries on."""
        try:
            await call
        except Exception as exc:
            self.handler_errors += 1
            self.last_handler_error = ConnectionProblem(
                "handler_error",
                f"The event handler failed in {what} ({type(exc).__name__}); the connection carries on.",
                retryable=True,
                detail=self._scrub(str(exc)),
            )
            logger.error("handler %s raised %s; carrying on", what, type(exc).__name__, exc_info=exc)

    async def _close_socket(self, ws: ClientConnection, grace: float) -> None:
        try:
            async with asyncio.timeout(grace):
                await ws.close(1000)
        except TimeoutError:
            ws.transport.abort()  # the server did not finish the closing handshake in time
        except Exception:
            ws.transport.abort()

    def _classify(self, exc: BaseException) -> ConnectionProblem:
        return self._scrubbed(
            classify(
                exc,
                host=self._endpoint.host,
                max_message_bytes=self._max_message_bytes,
                open_timeout=self._open_timeout,
            )
        )

    def _fatal(self, event: ServerEvent) -> ConnectionProblem | None:
        if not isinstance(event, ErrorEvent):
            return None
        problem = classify_error_event(event.code, event.error_type, event.message)
        return None if problem is None else self._scrubbed(problem)

    def _scrubbed(self, problem: ConnectionProblem) -> ConnectionProblem:
        detail = None if problem.detail is None else self._scrub(problem.detail)
        return replace(problem, message=self._scrub(problem.message), detail=detail)

    def _update_secrets(self) -> None:
        # What a server might echo back: each header value, and the bare key of a Bearer header.
        values = (*self._fixed_headers, *self._fetched_headers)
        forms = {form for value in values for form in (value, value.removeprefix("Bearer "))}
        # The whole header value before the key inside it, so neither is left half replaced.
        self._secrets = tuple(sorted(forms - {""}, key=len, reverse=True))

    def _scrub_frame(self, data: str | bytes) -> str | bytes:
        """A server frame without the secrets this side sent, before anything reads it."""
        if isinstance(data, str):
            return self._scrub(data)
        for secret in self._secrets:
            data = data.replace(secret.encode(), b"***")
        return data

    def _scrub(self, text: str) -> str:
        # Server text may echo a request header back; the key must not reach a log or the screen.
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text
