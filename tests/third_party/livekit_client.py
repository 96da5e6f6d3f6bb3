"""LiveKit Agents' OpenAI ``RealtimeModel`` (livekit-plugins-openai) against the embedded server.

Used directly, without a LiveKit server: the model points at the embedded server (``base_url`` and
``api_key``), and this script plays the part of LiveKit's ``AgentSession``: it pushes microphone
frames, plays each generation's audio at real speed and, when the user interrupts, calls
``interrupt()`` and then ``truncate()`` with what was heard, as the agent activity does. It also
calls ``generate_reply()`` (LiveKit fails it after 10 s without ``response.created``) and removes
an item through ``update_chat_ctx()``. Usage: see tests/third_party/common.py.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from livekit import rtc
from livekit.agents import llm
from livekit.plugins.openai.realtime import RealtimeModel, RealtimeSession
from openai.types.realtime import AudioTranscription
from openai.types.realtime.realtime_audio_input_turn_detection import ServerVad

from tests.third_party.common import RATE, Args, Report, chunks, parse_args, run, silence

STEP_TIMEOUT_S = 30.0
# LiveKit drops error events whose message starts so: OpenAI's answer to a response.cancel that came
# after the response had ended (the agent cancels on speech_started, when the server already has).
LIVEKIT_IGNORES = "Cancellation failed"


@dataclass
class Playback:
    """One assistant message as a speaker plays it: at real speed from its first frame."""

    message_id: str
    response_id: str | None
    user_initiated: bool
    received_ms: float = 0.0
    first_audio_at: float | None = None
    text: str = ""
    done: bool = False

    @property
    def played_ms(self) -> int:
        if self.first_audio_at is None:
            return 0
        return int(min(self.received_ms, (time.monotonic() - self.first_audio_at) * 1000.0))


@dataclass
class Recorder:
    session: RealtimeSession
    report: Report
    raw: list[dict[str, Any]] = field(default_factory=list)  # server events as received
    sent: list[str] = field(default_factory=list)  # client event types as queued
    playbacks: list[Playback] = field(default_factory=list)
    transcripts: list[str] = field(default_factory=list)
    speech_started: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    ignored: list[dict[str, Any]] = field(default_factory=list)  # errors LiveKit drops, as it does OpenAI's

    def attach(self) -> None:
        self.session.on("openai_server_event_received", self.on_server_event)
        self.session.on("openai_client_event_queued", self.on_client_event)
        self.session.on("generation_created", self.on_generation)
        self.session.on("input_audio_transcription_completed", self.on_transcript)
        self.session.on("input_speech_started", self.on_speech_started)
        self.session.on("error", self.on_error)

    def on_server_event(self, event: dict[str, Any]) -> None:
        self.raw.append(event)
        self.report.saw(str(event.get("type")))
        error = event.get("error") or {}
        if event.get("type") == "error" and str(error.get("message")).startswith(LIVEKIT_IGNORES):
            self.ignored.append({"step": self.report.step, "code": error.get("code")})
        elif event.get("type") == "error":
            self.report.error(error)

    def on_client_event(self, event: Any) -> None:
        self.sent.append(str(event.get("type") if isinstance(event, dict) else event.type))

    def on_error(self, error: llm.RealtimeModelError) -> None:
        self.report.error({"livekit_error": repr(error.error), "recoverable": error.recoverable})

    def on_transcript(self, event: llm.InputTranscriptionCompleted) -> None:
        if event.is_final:
            self.transcripts.append(event.transcript)

    def on_speech_started(self, event: llm.InputSpeechStartedEvent) -> None:
        self.speech_started += 1

    def on_generation(self, event: llm.GenerationCreatedEvent) -> None:
        task = asyncio.create_task(self.consume(event))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def consume(self, event: llm.GenerationCreatedEvent) -> None:
        async for message in event.message_stream:
            playback = Playback(message.message_id, event.response_id, event.user_initiated)
            self.playbacks.append(playback)
            await asyncio.gather(self.read_audio(message, playback), self.read_text(message, playback))
            playback.done = True

    @staticmethod
    async def read_audio(message: llm.MessageGeneration, playback: Playback) -> None:
        async for frame in message.audio_stream:
            if playback.first_audio_at is None:
                playback.first_audio_at = time.monotonic()
            playback.received_ms += frame.samples_per_channel / frame.sample_rate * 1000.0

    @staticmethod
    async def read_text(message: llm.MessageGeneration, playback: Playback) -> None:
        async for delta in message.text_stream:
            playback.text += str(delta)

    async def raw_event(self, kind: str, since: int = 0, **match: Any) -> dict[str, Any]:
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while True:
                found = self.raws(kind, since, **match)
                if found:
                    return found[0]
                await asyncio.sleep(0.02)

    def raws(self, kind: str, since: int = 0, **match: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.raw[since:]
            if e.get("type") == kind and all(e.get(k) == v for k, v in match.items())
        ]

    async def response_done(self, response_id: str, since: int = 0) -> dict[str, Any]:
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while True:
                for event in self.raws("response.done", since):
                    if event["response"]["id"] == response_id:
                        return event
                await asyncio.sleep(0.02)

    async def playback_of(self, response_id: str, heard_ms: float = 0.0) -> Playback:
        """The response's message once its audio has played for ``heard_ms`` (or ended)."""
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while True:
                for playback in self.playbacks:
                    if playback.response_id == response_id and playback.first_audio_at is not None:
                        played_all = playback.done and playback.played_ms >= playback.received_ms
                        if playback.played_ms >= heard_ms or played_all:
                            return playback
                await asyncio.sleep(0.02)


def push_speech(session: RealtimeSession, pcm: bytes) -> None:
    for chunk in chunks(pcm):
        session.push_audio(rtc.AudioFrame(chunk, RATE, 1, len(chunk) // 2))


def status(done: dict[str, Any]) -> tuple[str, str | None]:
    response = done["response"]
    details = response.get("status_details") or {}
    return response["status"], details.get("reason")


async def scenario(args: Args, report: Report) -> None:
    async with aiohttp.ClientSession() as http:
        model = RealtimeModel(
            model="gpt-realtime",
            base_url=args.http_base,
            api_key=args.token,
            http_session=http,
            modalities=["audio"],
            input_audio_transcription=AudioTranscription(model="whisper-1"),
            turn_detection=ServerVad(type="server_vad", silence_duration_ms=500, interrupt_response=True),
        )
        session = model.session()
        rec = Recorder(session, report)
        rec.attach()
        try:
            await rec.raw_event("session.updated")
            report.mark("session_ready")
            await spoken_turn(args, report, rec)
            await generate_reply(report, rec)
            await interrupt_and_truncate(report, rec)
            await speech_over_answer(args, report, rec)
            await delete_unheard_and_chat_ctx(report, rec)
        finally:
            await session.aclose()
            await model.aclose()
            for task in list(rec.tasks):
                task.cancel()
        report.steps["client_events"] = sorted(set(rec.sent))
        report.steps["ignored_errors"] = rec.ignored


async def spoken_turn(args: Args, report: Report, rec: Recorder) -> None:
    report.begin("spoken_turn")
    since = len(rec.raw)
    push_speech(rec.session, silence(0.3) + args.speech[0] + silence(1.2))
    created = await rec.raw_event("response.created", since)
    rid = created["response"]["id"]
    done = await rec.response_done(rid, since)
    playback = await rec.playback_of(rid)
    await wait_done(playback)
    report.steps["spoken_turn"] = {
        "user_transcripts": list(rec.transcripts),
        "status": status(done)[0],
        "answer_audio_ms": playback.received_ms,
        "answer_transcript": playback.text,
        "user_initiated": playback.user_initiated,
        "speech_started": rec.speech_started,
    }
    report.mark("spoken_turn")


async def wait_done(playback: Playback) -> None:
    async with asyncio.timeout(STEP_TIMEOUT_S):
        while not playback.done:
            await asyncio.sleep(0.02)


async def ask(rec: Recorder, text: str) -> llm.GenerationCreatedEvent:
    """A typed user message through the chat context, then ``generate_reply()``, timed."""
    chat_ctx = rec.session.chat_ctx.copy()
    chat_ctx.add_message(role="user", content=text)
    await rec.session.update_chat_ctx(chat_ctx)
    return await rec.session.generate_reply()


async def generate_reply(report: Report, rec: Recorder) -> None:
    report.begin("generate_reply")
    since = len(rec.raw)
    asked = time.monotonic()
    generation = await ask(rec, "My VPN keeps dropping.")
    created_s = time.monotonic() - asked
    assert generation.response_id is not None
    done = await rec.response_done(generation.response_id, since)
    playback = await rec.playback_of(generation.response_id)
    await wait_done(playback)
    report.steps["generate_reply"] = {
        "created_after_s": round(created_s, 3),
        "user_initiated": generation.user_initiated,
        "status": status(done)[0],
        "answer_audio_ms": playback.received_ms,
        "answer_transcript": playback.text,
    }
    report.mark("generate_reply")


async def interrupt_and_truncate(report: Report, rec: Recorder) -> None:
    """The user stops a playing answer: ``interrupt()``, then ``truncate()`` at what was heard."""
    report.begin("interrupt_and_truncate")
    since = len(rec.raw)
    generation = await ask(rec, "I forgot my password.")
    assert generation.response_id is not None
    rid = generation.response_id
    # A quarter of a second in: the server is still making this long answer (about 1 s on an idle
    # machine, longer on a busy one), so the cancel meets a response in progress.
    playback = await rec.playback_of(rid, heard_ms=250)
    rec.session.interrupt()
    heard = playback.played_ms
    rec.session.truncate(message_id=playback.message_id, modalities=["audio"], audio_end_ms=heard)
    done = await rec.response_done(rid, since)
    truncated = await rec.raw_event("conversation.item.truncated", since, item_id=playback.message_id)
    await wait_done(playback)
    report.steps["interrupt_and_truncate"] = {
        "status": status(done)[0],
        "reason": status(done)[1],
        "heard_ms": heard,
        "truncated_at_ms": truncated["audio_end_ms"],
        "received_ms": playback.received_ms,
        "audio_deltas_after_done": len(
            [
                e
                for e in rec.raws("response.output_audio.delta", rec.raw.index(done))
                if e["response_id"] == rid
            ]
        ),
    }
    report.mark("interrupt_and_truncate")


async def speech_over_answer(args: Args, report: Report, rec: Recorder) -> None:
    """The user talks over the answer: the server cancels it; the agent truncates at what was heard."""
    report.begin("speech_over_answer")
    since = len(rec.raw)
    push_speech(rec.session, silence(0.3) + args.speech[1] + silence(1.2))
    created = await rec.raw_event("response.created", since)
    rid = created["response"]["id"]
    playback = await rec.playback_of(rid, heard_ms=250)  # still in progress, as above
    speaking_at = len(rec.raw)
    started_before = rec.speech_started
    push_speech(rec.session, args.speech[0] + silence(1.2))
    async with asyncio.timeout(STEP_TIMEOUT_S):
        while rec.speech_started == started_before:
            await asyncio.sleep(0.01)
    heard = playback.played_ms
    rec.session.interrupt()  # what the agent does on input_speech_started
    rec.session.truncate(message_id=playback.message_id, modalities=["audio"], audio_end_ms=heard)
    done = await rec.response_done(rid, since)
    truncated = await rec.raw_event("conversation.item.truncated", speaking_at, item_id=playback.message_id)
    next_created = await rec.raw_event("response.created", speaking_at)
    next_done = await rec.response_done(next_created["response"]["id"], speaking_at)
    started = rec.raws("input_audio_buffer.speech_started", speaking_at)
    after_start = rec.raw.index(started[0]) if started else len(rec.raw)
    report.steps["speech_over_answer"] = {
        "status": status(done)[0],
        "reason": status(done)[1],
        "heard_ms": heard,
        "truncated_at_ms": truncated["audio_end_ms"],
        "audio_deltas_after_speech_started": len(
            [e for e in rec.raws("response.output_audio.delta", after_start) if e["response_id"] == rid]
        ),
        "next_response_status": status(next_done)[0],
        "user_transcripts": list(rec.transcripts),
    }
    report.mark("speech_over_answer")


async def delete_unheard_and_chat_ctx(report: Report, rec: Recorder) -> None:
    """An answer interrupted before any of it played is deleted (LiveKit's ``truncate`` at 0 ms), and an
    item removed from the chat context is deleted on the server."""
    report.begin("delete_unheard_and_chat_ctx")
    await asyncio.sleep(0.3)
    since = len(rec.raw)
    generation = await rec.session.generate_reply()
    assert generation.response_id is not None
    rid = generation.response_id
    added = await rec.raw_event("response.output_item.added", since, response_id=rid)
    message_id = added["item"]["id"]
    rec.session.interrupt()
    rec.session.truncate(message_id=message_id, modalities=["audio"], audio_end_ms=0)
    done = await rec.response_done(rid, since)
    deleted = await rec.raw_event("conversation.item.deleted", since, item_id=message_id)
    # The oldest user message leaves the chat context: update_chat_ctx deletes it and awaits the reply.
    chat_ctx = rec.session.chat_ctx.copy()
    first_user = next(item for item in chat_ctx.items if getattr(item, "role", None) == "user")
    chat_ctx.items.remove(first_user)
    after = len(rec.raw)
    await asyncio.wait_for(rec.session.update_chat_ctx(chat_ctx), STEP_TIMEOUT_S)
    removed = await rec.raw_event("conversation.item.deleted", after, item_id=first_user.id)
    report.steps["delete"] = {
        "unheard_status": status(done)[0],
        "unheard_deleted": deleted["item_id"] == message_id,
        "chat_ctx_deleted": removed["item_id"] == first_user.id,
        "remote_items": len(rec.session.chat_ctx.items),
    }
    report.mark("delete")


def main() -> None:
    args = parse_args()
    report = Report("livekit")
    run(report, lambda: scenario(args, report))


if __name__ == "__main__":
    main()
