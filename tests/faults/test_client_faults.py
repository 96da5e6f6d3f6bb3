"""The client against hostile and broken servers (rows K1-K5, C1-C12): the key stays put, faults differ.

Every test runs the whole app as a child process (``python -m app --headless``) on the PulseAudio
virtual devices against a real WebSocket server: :class:`tests.scripted_peer.ScriptedPeer` where a
well-behaved server with one twist is enough, or :class:`HostileServer` below, which answers the
handshake with any HTTP status, records the request headers, and runs a script of its own per
connection (close with 1008, send frames that are not JSON or are far too big, stop answering pings).

What is proven: the API key goes only where it may (never over plain ``ws://`` to another host,
never from the keyring to a server named on the command line) and never reaches stdout, stderr or a
log, even when the server echoes it back; a refused key ends the app with exit 1 and one line
instead of retrying; overload and server errors are retried with growing, Retry-After respecting
delays; a lost, silent or flooding server is reconnected to with the session replayed; malformed
events are skipped; SIGTERM closes properly; an unknown device is a usage error naming the real ones.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from app.audio.devices import find_device
from app.audio.resample import FloatArray, float_to_pcm16
from app.realtime.endpoint import API_KEY_ENV, KEYRING_SERVICE, KEYRING_USERNAME
from app.testkit.rig import VirtualAudioRig
from tests import server_events as s
from tests.app_driver import HeadlessApp, speak
from tests.file_keyring import KEYRING_FILE_ENV, FileKeyring
from tests.scripted_peer import Answer, ScriptedPeer, ServerThread

pytestmark = pytest.mark.devices

KEY = "sk-test-FAULTMATRIX-0123456789abcdef"
PREFIX = "helpdesk-voice: "

Script = Callable[[ServerConnection, int], Awaitable[None]]
Rejection = tuple[int, dict[str, str]]


@dataclass
class HostileServer:
    """A WebSocket server on ``host`` doing what a broken or malicious realtime server does.

    ``reject(n)`` may answer handshake number ``n`` (from 1) with an HTTP status and headers instead
    of a WebSocket; ``script(ws, n)`` runs on accepted connection ``n`` (by default: session.created,
    then read until the client leaves). Every handshake's time and headers and every JSON event the
    client sends (audio payloads dropped) are recorded.
    """

    script: Script | None = None
    reject: Callable[[int], Rejection | None] = lambda attempt: None
    host: str = "127.0.0.1"
    attempts: list[float] = field(default_factory=list)  # time.monotonic() of each handshake
    headers: list[dict[str, str]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)
    connections: int = 0
    url: str = ""
    _running: ServerThread | None = None

    def __enter__(self) -> HostileServer:
        self._running = ServerThread(
            lambda: serve(self._handle, self.host, 0, process_request=self._process_request, max_size=2**24)
        )
        port = self._running.start("hostile server")
        self.url = f"ws://{self.host}:{port}/v1/realtime?model=hostile"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._running is not None:
            self._running.stop()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in list(self.received) if e.get("type") == kind]

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.attempts.append(time.monotonic())
        self.headers.append({name.lower(): value for name, value in request.headers.raw_items()})
        answer = self.reject(len(self.attempts))
        if answer is None:
            return None
        status, extra = answer
        response = connection.respond(status, f"refused with {status}\n")
        for name, value in extra.items():
            response.headers[name] = value
        return response

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        try:
            await (self.script or _greet_and_listen)(ws, self.connections)
            await self.listen(ws)
        finally:
            self.close_codes.append(ws.close_code)

    async def listen(self, ws: ServerConnection) -> None:
        """Record what the client sends until it closes (answering session.update as a server does)."""
        with contextlib.suppress(Exception):
            async for message in ws:
                event = json.loads(message)
                if event.get("type") == "input_audio_buffer.append":
                    event = {"type": "input_audio_buffer.append"}
                self.received.append(event)
                if event.get("type") == "session.update":
                    await ws.send(json.dumps({"type": "session.updated", "session": event["session"]}))


async def _greet_and_listen(ws: ServerConnection, attempt: int) -> None:
    await ws.send(json.dumps(s.session_created(f"sess_{attempt}")))


def _devices(rig: VirtualAudioRig) -> list[str]:
    return ["--input-device", rig.mic, "--output-device", rig.speaker]


def _environ(env: dict[str, str | None] | None) -> dict[str, str]:
    # No key from the developer's shell: each test says which key, if any, the app has.
    environ = {k: v for k, v in os.environ.items() if k not in (API_KEY_ENV, "HELPDESK_VOICE_ENDPOINT_URL")}
    for name, value in (env or {}).items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    return environ


def run_headless(
    rig: VirtualAudioRig,
    url: str | None,
    seconds: float,
    env: dict[str, str | None] | None = None,
    extra: list[str] | None = None,
    command: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """The headless app on the virtual devices against ``url``, for at most ``seconds``."""
    target = ["--url", url] if url is not None else []
    return subprocess.run(
        [
            *(command or [sys.executable, "-m", "app"]),
            "--headless",
            *target,
            *_devices(rig),
            "--duration",
            str(seconds),
            *(extra or []),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        env=_environ(env),
    )


def _notices(stderr: str, needle: str) -> list[str]:
    return [line for line in stderr.splitlines() if needle in line]


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# -- the API key ------------------------------------------------------------------------------


def _non_loopback_ipv4() -> str | None:
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for address in out.split():
        if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", address) and not address.startswith("127."):
            return address
    return None


@pytest.mark.fault("K1")
def test_a_plain_ws_server_on_another_host_gets_no_key_and_the_app_says_why(
    virtual_audio: VirtualAudioRig,
) -> None:
    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to serve plain ws:// on")
    with HostileServer(host=address) as server:
        result = run_headless(virtual_audio, server.url, seconds=3, env={API_KEY_ENV: KEY})
        headers = list(server.headers)
    assert result.returncode == 0, result.stderr
    assert headers, f"the app never reached {address}: {result.stderr}"
    # The connection is made, without the key in any header.
    assert all(KEY not in value for sent in headers for value in sent.values())
    assert all("authorization" not in sent and "api-key" not in sent for sent in headers)
    why = _notices(result.stderr, f"API key is not sent to {address}")
    assert why and "ws:// is not encrypted" in why[0], result.stderr


@pytest.mark.fault("K2")
def test_the_stored_key_goes_only_to_the_server_chosen_in_settings(
    virtual_audio: VirtualAudioRig, tmp_path: Path
) -> None:
    """A --url or HELPDESK_VOICE_ENDPOINT_URL from a script must not collect the key from the keyring."""
    store = tmp_path / "keyring.json"
    FileKeyring(store).set_password(KEYRING_SERVICE, KEYRING_USERNAME, KEY)
    config = tmp_path / "config"
    config.mkdir()
    env: dict[str, str | None] = {
        "PYTHON_KEYRING_BACKEND": "tests.file_keyring.FileKeyring",
        KEYRING_FILE_ENV: str(store),
        "HELPDESK_VOICE_CONFIG_DIR": str(config),
    }
    with HostileServer() as chosen, HostileServer() as elsewhere:
        # The user chose this server in Settings: it gets the stored key.
        (config / "settings.toml").write_text(f'backend = "custom"\n[endpoint]\nurl = "{chosen.url}"\n')
        settings = run_headless(virtual_audio, None, seconds=2, env=env)
        # A server named on the command line or in the environment does not.
        cli = run_headless(virtual_audio, elsewhere.url, seconds=2, env=env)
        environment = run_headless(
            virtual_audio, None, seconds=2, env={**env, "HELPDESK_VOICE_ENDPOINT_URL": elsewhere.url}
        )
        chosen_headers, elsewhere_headers = list(chosen.headers), list(elsewhere.headers)
    assert settings.returncode == 0, settings.stderr
    assert chosen_headers and all(h.get("authorization") == f"Bearer {KEY}" for h in chosen_headers)
    for result in (cli, environment):
        assert result.returncode == 0, result.stderr
        assert _notices(result.stderr, "only sent to the server chosen in Settings"), result.stderr
        assert KEY not in result.stderr + result.stdout
    assert len(elsewhere_headers) >= 2, "both runs must have connected to the other server"
    assert all(KEY not in value for sent in elsewhere_headers for value in sent.values())


@pytest.mark.fault("C3", "K3")
def test_a_key_refused_inside_the_session_ends_the_app_with_one_clear_line(
    virtual_audio: VirtualAudioRig,
) -> None:
    """An ``invalid_api_key`` error used to be a notice while the microphone kept streaming."""
    key = "sk-test-REFUSED-0123456789"
    refusal = {
        "type": "error",
        "event_id": "ev_err",
        "error": {
            "type": "invalid_request_error",
            "code": "invalid_api_key",
            "message": f"Incorrect API key provided: {key}.\x1b[2J\x1b]0;owned\x07",
        },
    }
    with ScriptedPeer([], after_connect=[refusal]) as peer:
        result = run_headless(virtual_audio, peer.url, seconds=20, env={API_KEY_ENV: key})
        connections = peer.connections
    assert result.returncode == 1, result.stderr
    assert connections == 1  # not retried
    refusals = [line for line in result.stderr.splitlines() if "did not accept the API key" in line]
    assert len(refusals) == 1, result.stderr
    assert key not in result.stderr + result.stdout
    assert "\x1b" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.fault("K4")
def test_a_key_echoed_in_transcript_text_is_not_shown(virtual_audio: VirtualAudioRig) -> None:
    said = f"my key is {KEY} please check it"
    answer = f"Your key {KEY} looks fine. Anything else?"
    echoes = [
        s.user_transcript("item_user_1", said),
        *s.spoken_answer("resp_1", "item_answer_1", answer, audio_ms=400),
    ]
    with ScriptedPeer([], after_connect=echoes) as peer:
        result = run_headless(virtual_audio, peer.url, seconds=4, env={API_KEY_ENV: KEY})
    assert result.returncode == 0, result.stderr
    # The transcript lines are there (so the text was shown), without the key.
    you = [line for line in result.stdout.splitlines() if line.startswith("you: my key is")]
    assistant = [line for line in result.stdout.splitlines() if line.startswith("assistant: Your key")]
    assert you and assistant, result.stdout + result.stderr
    assert KEY not in result.stdout + result.stderr


# The whole session at debug level, websockets' own loggers included (the app sets them to
# WARNING; a user or a debugging session could undo that, so it is forced here).
_DEBUG_RUNNER = """
import logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(name)s %(levelname)s: %(message)s")
for name in ("websockets", "websockets.client"):
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.setLevel = lambda level: None
from app.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.fault("K5")
def test_a_whole_session_logged_at_debug_level_shows_neither_the_key_nor_audio(
    virtual_audio: VirtualAudioRig,
) -> None:
    answer_audio = s.pcm(400)
    events = [
        s.user_transcript("item_user_1", "hello there"),
        *s.spoken_answer("resp_1", "item_answer_1", "Hello, how can I help?", audio_ms=400),
    ]
    with ScriptedPeer([], after_connect=events) as peer:
        result = run_headless(
            virtual_audio,
            peer.url,
            seconds=4,
            env={API_KEY_ENV: KEY},
            extra=["-v"],
            command=[sys.executable, "-c", _DEBUG_RUNNER],
        )
        appended = len(peer.of_type("input_audio_buffer.append"))
    assert result.returncode == 0, result.stderr
    assert " DEBUG: " in result.stderr, "the session was not logged at debug level"
    assert appended > 0, "no microphone audio was streamed, so nothing was proven about it"
    assert "assistant: Hello" in result.stdout
    assert KEY not in result.stderr + result.stdout
    # Audio goes over the wire as base64: no long base64 run (a 20 ms frame is 1280 characters)
    # and none of the answer's audio may be in the log.
    assert not re.search(r"[A-Za-z0-9+/]{200,}", result.stderr)
    assert base64.b64encode(answer_audio[:300]).decode()[:40] not in result.stderr


# -- connection: fatal or retried -------------------------------------------------------------


@pytest.mark.fault("C1")
def test_a_handshake_answered_401_exits_1_with_one_line_and_no_retry(virtual_audio: VirtualAudioRig) -> None:
    with HostileServer(reject=lambda attempt: (401, {})) as server:
        result = run_headless(virtual_audio, server.url, seconds=20, env={API_KEY_ENV: KEY})
        attempts = len(server.attempts)
    assert result.returncode == 1, result.stderr
    assert attempts == 1  # not retried
    assert len(_notices(result.stderr, "HTTP 401")) == 1, result.stderr
    assert "Traceback" not in result.stderr


async def _close_with_policy_violation(ws: ServerConnection, attempt: int) -> None:
    await ws.send(json.dumps(s.session_created()))
    await ws.close(1008, "key revoked")


@pytest.mark.fault("C2")
def test_a_close_with_1008_exits_1_with_one_line_and_no_retry(virtual_audio: VirtualAudioRig) -> None:
    with HostileServer(script=_close_with_policy_violation) as server:
        result = run_headless(virtual_audio, server.url, seconds=20, env={API_KEY_ENV: KEY})
        connections = server.connections
    assert result.returncode == 1, result.stderr
    assert connections == 1  # not retried
    refusals = _notices(result.stderr, "close code 1008")
    assert len(refusals) == 1 and "key revoked" in refusals[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.fault("C4")
def test_a_handshake_answered_429_waits_the_retry_after_then_connects(virtual_audio: VirtualAudioRig) -> None:
    # 7 s is beyond the client's own minimum pause after a 429 (5 s + 20 % jitter), so waiting that
    # long shows the header was honoured.
    with HostileServer(
        reject=lambda attempt: (429, {"Retry-After": "7"}) if attempt == 1 else None
    ) as server:
        result = run_headless(virtual_audio, server.url, seconds=12, env={API_KEY_ENV: KEY})
        attempts, updates = list(server.attempts), server.of_type("session.update")
    assert result.returncode == 0, result.stderr
    assert len(attempts) == 2, result.stderr
    assert attempts[1] - attempts[0] >= 7.0
    assert updates, "the app did not go on to use the connection"
    assert _notices(result.stderr, "HTTP 429"), result.stderr


@pytest.mark.fault("C5")
def test_a_handshake_answered_500_is_retried_with_growing_delays(virtual_audio: VirtualAudioRig) -> None:
    with HostileServer(reject=lambda attempt: (500, {})) as server:
        result = run_headless(virtual_audio, server.url, seconds=5, env={API_KEY_ENV: KEY})
        attempts = list(server.attempts)
    assert result.returncode == 0, result.stderr  # --duration ends it; the 500s are not fatal
    assert len(attempts) >= 4, result.stderr
    gaps = _gaps(attempts)
    assert all(later > earlier for earlier, later in itertools.pairwise(gaps)), gaps
    assert _notices(result.stderr, "HTTP 500"), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.fault("C6")
def test_headless_without_a_reachable_endpoint_exits_with_one_clear_line(
    virtual_audio: VirtualAudioRig,
) -> None:
    result = run_headless(virtual_audio, "ws://127.0.0.1:9/v1/realtime", seconds=5)
    assert result.returncode == 0  # --duration ends it; the refusals are reported, not fatal
    refused = _notices(result.stderr, "refused")
    assert refused, result.stderr
    assert "Traceback" not in result.stderr
    # Retried, each time after a longer pause than the last.
    delays = [float(m) for m in re.findall(r"Reconnecting in ([0-9.]+) s", result.stderr)]
    assert len(delays) >= 2, result.stderr
    assert all(later > earlier for earlier, later in itertools.pairwise(delays)), delays


async def _drop_mid_answer_then_answer(ws: ServerConnection, attempt: int) -> None:
    await ws.send(json.dumps(s.session_created(f"sess_{attempt}")))
    if attempt == 1:
        # Half an answer, then the TCP connection dies without a close frame.
        for event in s.spoken_answer(
            "resp_1", "item_answer_1", "This answer is cut", audio_ms=2000, chunks=8
        )[:5]:
            await ws.send(json.dumps(event))
        await asyncio.sleep(0.3)
        ws.transport.abort()
        return
    await asyncio.sleep(0.5)  # the session settings come in first
    await ws.send(json.dumps(s.user_transcript("item_user_2", "are you still there")))
    for event in s.spoken_answer("resp_2", "item_answer_2", "Yes, I am back.", audio_ms=400):
        await ws.send(json.dumps(event))


@pytest.mark.fault("C7")
def test_a_connection_dropped_mid_answer_reconnects_replays_the_session_and_answers(
    virtual_audio: VirtualAudioRig,
) -> None:
    with HostileServer(script=_drop_mid_answer_then_answer) as server:
        result = run_headless(virtual_audio, server.url, seconds=6, env={API_KEY_ENV: KEY})
        connections, updates = server.connections, server.of_type("session.update")
    assert result.returncode == 0, result.stderr
    assert connections == 2, result.stderr
    # The session settings went out on both connections, the same both times.
    assert len(updates) == 2 and updates[0]["session"] == updates[1]["session"], updates
    assert _notices(result.stderr, "lost unexpectedly"), result.stderr
    # The next turn is answered. (Today the cut answer's "This..." is printed in front of it on the
    # same line; the row does not rule on that, so only the answer's arrival is asserted.)
    answers = [line for line in result.stdout.splitlines() if line.startswith("assistant: ")]
    assert answers and answers[-1].endswith("Yes, I am back."), result.stdout + result.stderr


@pytest.mark.fault("C13")
def test_a_request_the_server_died_with_is_said_again_and_answered(
    virtual_audio: VirtualAudioRig, speech: Callable[[str, int], FloatArray]
) -> None:
    """The server dies as the user stops talking: its session, and the request in it, are gone."""
    feed_rate = int(find_device(virtual_audio.mic_feed, "output").default_samplerate)
    answer = "I can help with the printer."
    with ScriptedPeer(
        [Answer(answer, float_to_pcm16(speech(answer, 24000)))],
        user_lines=["my printer is jammed"],
        die_when_speech_ends=1,
    ) as peer:
        app = HeadlessApp(["--url", peer.url, *_devices(virtual_audio)])
        try:
            app.wait_for(lambda line: line.startswith("listening on"), 60)
            speak(virtual_audio, speech("my printer is jammed on the third floor", feed_rate))
            said = app.wait_for(lambda line: line.startswith("assistant: "), 30)
        finally:
            app.stop()
        connections, heard, asked = peer.connections, dict(peer.turns_heard), peer.of_type("response.create")
    assert connections == 2, app.errors
    # The user spoke once; the new session heard the request too, from the app's copy of it.
    assert heard == {1: 1, 2: 1}, (heard, app.errors)
    assert answer in said
    # Answered by the server's turn detection on the words, not by a blind response.create.
    assert asked == [], asked
    assert any("what you said meanwhile" in line for line in app.errors), app.errors


async def _stop_answering_pings(ws: ServerConnection, attempt: int) -> None:
    await ws.send(json.dumps(s.session_created(f"sess_{attempt}")))
    if attempt == 1:
        # The socket stays open but nothing is read any more, so no ping is ever answered.
        ws.transport.pause_reading()
        await asyncio.sleep(120)


@pytest.mark.fault("C8")
def test_a_server_that_stops_answering_pings_is_detected_and_reconnected(
    virtual_audio: VirtualAudioRig,
) -> None:
    # The client pings every 10 s and waits 10 s for the pong: allow it that and a closing timeout.
    with HostileServer(script=_stop_answering_pings) as server:
        app = HeadlessApp(["--url", server.url, *_devices(virtual_audio)], {API_KEY_ENV: KEY})
        try:
            reconnected = _wait_until(lambda: server.connections >= 2, 60)
        finally:
            app.stop()
    assert reconnected, app.errors
    assert any("stopped responding" in line for line in app.errors), app.errors


async def _send_malformed_then_talk(ws: ServerConnection, attempt: int) -> None:
    await ws.send(json.dumps(s.session_created()))
    for frame in _MALFORMED:
        await ws.send(frame)
    await ws.send(json.dumps(s.user_transcript("item_user_1", "still talking")))
    for event in s.spoken_answer("resp_1", "item_answer_1", "Still here.", audio_ms=400):
        await ws.send(json.dumps(event))


_MALFORMED: list[str | bytes] = [
    "this is not JSON {",
    b"\x00\x01binary frame\xff",
    json.dumps({"type": "response.hologram.delta", "event_id": "ev_x"}),
    json.dumps({"event_id": "ev_no_type"}),
    json.dumps({"type": "conversation.item.input_audio_transcription.completed", "event_id": "ev_m"}),
    json.dumps({"type": "response.output_audio.delta", "event_id": "ev_w", "delta": 12345}),
    json.dumps({**s.audio_delta("resp_0", "item_0", b"\0\0"), "delta": 12345}),
    json.dumps(["a", "list"]),
]


@pytest.mark.fault("C9")
def test_malformed_server_events_are_skipped_and_the_conversation_carries_on(
    virtual_audio: VirtualAudioRig,
) -> None:
    with HostileServer(script=_send_malformed_then_talk) as server:
        result = run_headless(virtual_audio, server.url, seconds=4, env={API_KEY_ENV: KEY}, extra=["-v"])
        connections = server.connections
    assert result.returncode == 0, result.stderr
    assert connections == 1, result.stderr  # none of them cost the connection
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert "you: still talking" in lines and "assistant: Still here." in lines, result.stdout + result.stderr
    # Each bad frame is noticed: a malformed-event warning each, and the unknown type named.
    assert len(_notices(result.stderr, "malformed server event")) == len(_MALFORMED) - 1, result.stderr
    assert _notices(result.stderr, "unknown type 'response.hologram.delta'"), result.stderr


async def _flood(ws: ServerConnection, attempt: int) -> None:
    await ws.send(json.dumps(s.session_created(f"sess_{attempt}")))
    if attempt == 1:
        # One frame of 9 MiB: beyond the client's 8 MiB limit.
        await ws.send(json.dumps({"type": "response.output_audio.delta", "delta": "A" * (9 * 2**20)}))


@pytest.mark.fault("C10")
def test_a_frame_beyond_the_size_limit_closes_with_a_message_and_reconnects(
    virtual_audio: VirtualAudioRig,
) -> None:
    with HostileServer(script=_flood) as server:
        result = run_headless(virtual_audio, server.url, seconds=5, env={API_KEY_ENV: KEY})
        connections, codes = server.connections, list(server.close_codes)
    assert result.returncode == 0, result.stderr
    assert connections >= 2, result.stderr
    assert codes[0] == 1009, codes
    assert _notices(result.stderr, "larger than the 8 MiB limit"), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.fault("C11")
def test_sigterm_closes_the_connection_properly(virtual_audio: VirtualAudioRig) -> None:
    with ScriptedPeer([]) as peer:
        app = HeadlessApp(["--url", peer.url, *_devices(virtual_audio)])
        try:
            app.wait_for(lambda line: line.startswith("listening on"), 60)
            _wait_until(lambda: peer.connections > 0, 10)
            app.process.send_signal(signal.SIGTERM)
            code = app.process.wait(10)
        finally:
            app.stop()
        _wait_until(lambda: bool(peer.close_codes), 5)
        codes = list(peer.close_codes)
    assert code == 0
    assert codes == [1000]  # a closing handshake, not a vanished client (1006)


@pytest.mark.fault("C12")
@pytest.mark.parametrize("which", ["--input-device", "--output-device"])
def test_a_device_that_does_not_exist_is_a_usage_error_naming_the_real_ones(
    virtual_audio: VirtualAudioRig, which: str
) -> None:
    devices = {"--input-device": virtual_audio.mic, "--output-device": virtual_audio.speaker}
    devices[which] = "no-such-device-7f3a"
    args = [arg for pair in devices.items() for arg in pair]
    result = subprocess.run(
        [sys.executable, "-m", "app", "--headless", "--url", "ws://127.0.0.1:9/rt", *args, "--duration", "5"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_environ(None),
    )
    assert result.returncode == 2, result.stderr
    assert "no-such-device-7f3a" in result.stderr
    real = virtual_audio.mic if which == "--input-device" else virtual_audio.speaker
    assert real in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
