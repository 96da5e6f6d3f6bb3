"""The OpenAI Agents SDK's ``RealtimeAgent`` and ``RealtimeRunner`` against the embedded server.

The runner connects with the server's URL and token in its model config and a playback tracker that
plays the answer's audio at real speed, so its interruptions truncate at what was "heard". The SDK
itself sends ``conversation.item.retrieve`` after each transcription and truncation. Usage: see
tests/third_party/common.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from agents.realtime import RealtimeAgent, RealtimePlaybackTracker, RealtimeRunner, RealtimeSession
from agents.realtime.model_inputs import RealtimeModelSendRawMessage

from tests.third_party.common import Args, Report, audio_ms, chunks, parse_args, run, silence

STEP_TIMEOUT_S = 30.0
PLAY_TICK_MS = 20


class Player:
    """Plays the answer's audio in real time, as a speaker would, and tells the tracker what was heard."""

    def __init__(self) -> None:
        self.tracker = RealtimePlaybackTracker()
        self.queued: list[tuple[str, int, float]] = []  # item id, content index, ms not yet played
        self.played_ms: dict[str, float] = {}

    def add(self, item_id: str, content_index: int, pcm: bytes) -> None:
        self.queued.append((item_id, content_index, audio_ms(len(pcm))))

    def stop(self) -> None:
        self.queued.clear()

    async def play(self) -> None:
        while True:
            await asyncio.sleep(PLAY_TICK_MS / 1000)
            if not self.queued:
                continue
            item_id, index, left = self.queued[0]
            step = min(left, PLAY_TICK_MS)
            self.tracker.on_play_ms(item_id, index, step)
            self.played_ms[item_id] = self.played_ms.get(item_id, 0.0) + step
            if left - step <= 0:
                self.queued.pop(0)
            else:
                self.queued[0] = (item_id, index, left - step)


class Recorder:
    """The session's events and the raw server events under them, in order."""

    def __init__(self, session: RealtimeSession, report: Report, player: Player) -> None:
        self.session = session
        self.report = report
        self.player = player
        self.events: list[Any] = []  # session events
        self.raw: list[dict[str, Any]] = []  # server events as sent
        self.changed = asyncio.Event()

    async def read(self) -> None:
        async for event in self.session:
            self.events.append(event)
            if event.type == "raw_model_event" and event.data.type == "raw_server_event":
                raw: dict[str, Any] = event.data.data
                self.raw.append(raw)
                self.report.saw(str(raw.get("type")))
                if raw.get("type") == "error":
                    self.report.error(raw.get("error"))
            elif event.type == "error":
                self.report.error(repr(event.error))
            elif event.type == "audio":
                self.player.add(event.item_id, event.content_index, event.audio.data)
            elif event.type == "audio_interrupted":
                self.player.stop()
            self.changed.set()

    async def raw_event(self, kind: str, since: int = 0, **match: Any) -> dict[str, Any]:
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while True:
                found = self.raws(kind, since, **match)
                if found:
                    return found[0]
                self.changed.clear()
                await self.changed.wait()

    def raws(self, kind: str, since: int = 0, **match: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.raw[since:]
            if e.get("type") == kind and all(e.get(k) == v for k, v in match.items())
        ]

    async def response_done(self, response_id: str, since: int) -> dict[str, Any]:
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while True:
                for event in self.raws("response.done", since):
                    if event["response"]["id"] == response_id:
                        return event
                self.changed.clear()
                await self.changed.wait()

    def session_events(self, kind: str) -> list[Any]:
        return [e for e in self.events if e.type == kind]


async def send_audio(session: RealtimeSession, pcm: bytes) -> None:
    for chunk in chunks(pcm):
        await session.send_audio(chunk)


def status(done: dict[str, Any]) -> tuple[str, str | None]:
    response = done["response"]
    details = response.get("status_details") or {}
    return response["status"], details.get("reason")


async def scenario(args: Args, report: Report) -> None:
    agent = RealtimeAgent(name="helpdesk", instructions="You are an IT helpdesk assistant.")
    runner = RealtimeRunner(
        agent,
        config={
            "model_settings": {
                "model_name": "gpt-realtime",
                "output_modalities": ["audio"],
                "input_audio_transcription": {"model": "whisper-1"},
                "turn_detection": {
                    "type": "server_vad",
                    "silence_duration_ms": 500,
                    "interrupt_response": True,
                },
            }
        },
    )
    player = Player()
    session = await runner.run(
        model_config={"url": args.url, "api_key": args.token, "playback_tracker": player.tracker}
    )
    async with session:
        rec = Recorder(session, report, player)
        reader = asyncio.create_task(rec.read())
        playing = asyncio.create_task(player.play())
        await rec.raw_event("session.updated")
        report.mark("session_ready")
        await spoken_turn(args, report, rec)
        await speech_over_answer(args, report, rec)
        await interrupt_and_delete(report, rec)
        await asyncio.sleep(0.5)  # the SDK's own retrieve after the truncation
        report.steps["sdk_retrieves"] = len(rec.raws("conversation.item.retrieved"))
        history = session._history  # the SDK's view of the conversation, as its UI would show it
        report.steps["history"] = [
            {"role": getattr(item, "role", item.type), "status": getattr(item, "status", None)}
            for item in history
        ]
        for task in (reader, playing):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def spoken_turn(args: Args, report: Report, rec: Recorder) -> None:
    report.begin("spoken_turn")
    since = len(rec.raw)
    await send_audio(rec.session, silence(0.3) + args.speech[0] + silence(1.2))
    user = await rec.raw_event("conversation.item.input_audio_transcription.completed", since)
    created = await rec.raw_event("response.created", since)
    done = await rec.response_done(created["response"]["id"], since)
    answer = rec.raws("response.output_audio_transcript.done", since)
    report.steps["spoken_turn"] = {
        "user_transcript": user["transcript"],
        "status": status(done)[0],
        "answer_audio_ms": sum(audio_ms(len(e.audio.data)) for e in rec.session_events("audio")),
        "answer_transcript": answer[0]["transcript"] if answer else None,
        "audio_end_events": len(rec.session_events("audio_end")),
        "answer_item": answer[0]["item_id"] if answer else None,
    }
    report.mark("spoken_turn")


async def speech_over_answer(args: Args, report: Report, rec: Recorder) -> None:
    """New speech while the answer plays: the server cancels it, the SDK stops playback and truncates."""
    report.begin("speech_over_answer")
    await wait_quiet(rec)
    since = len(rec.raw)
    await send_audio(rec.session, silence(0.3) + args.speech[1] + silence(1.2))
    first = await rec.raw_event("response.output_audio.delta", since)
    rid, item_id = first["response_id"], first["item_id"]
    # A moment of the answer is heard; the server takes about 1 s to make all of it on an idle machine
    # (longer on a busy one), so the speech meets an answer in progress.
    await asyncio.sleep(0.3)
    speaking_at = len(rec.raw)
    await send_audio(rec.session, args.speech[0] + silence(1.2))
    started = await rec.raw_event("input_audio_buffer.speech_started", speaking_at)
    after_start = rec.raw.index(started)
    cut = await rec.response_done(rid, since)
    truncated = await rec.raw_event("conversation.item.truncated", since, item_id=item_id)
    next_created = await rec.raw_event("response.created", after_start)
    next_done = await rec.response_done(next_created["response"]["id"], after_start)
    # The SDK asks for its latest audio item after each transcription and each truncation.
    retrieved = [e["item"]["id"] for e in rec.raws("conversation.item.retrieved", since)]
    report.steps["speech_over_answer"] = {
        "status": status(cut)[0],
        "reason": status(cut)[1],
        "audio_deltas_after_speech_started": len(
            rec.raws("response.output_audio.delta", after_start, response_id=rid)
        ),
        "audio_interrupted_events": len(rec.session_events("audio_interrupted")),
        "truncated_at_ms": truncated["audio_end_ms"],
        "played_ms": rec.player.played_ms.get(item_id),
        "next_response_status": status(next_done)[0],
        "item_id": item_id,
        "retrieved_items": retrieved,
    }
    report.mark("speech_over_answer")


async def interrupt_and_delete(report: Report, rec: Recorder) -> None:
    """``session.interrupt()`` while a typed question's answer plays, then deleting that answer."""
    report.begin("interrupt_and_delete")
    await wait_quiet(rec)
    since = len(rec.raw)
    await rec.session.send_message("My VPN keeps dropping.")
    first = await rec.raw_event("response.output_audio.delta", since)
    rid, item_id = first["response_id"], first["item_id"]
    await asyncio.sleep(0.3)  # still in progress, as above
    await rec.session.interrupt()
    interrupted_at = len(rec.raw)
    truncated = await rec.raw_event("conversation.item.truncated", since, item_id=item_id)
    done = await rec.response_done(rid, since)
    retrieved = await rec.raw_event("conversation.item.retrieved", interrupted_at)
    report.steps["interrupt"] = {
        "status": status(done)[0],
        "reason": status(done)[1],
        "truncated_at_ms": truncated["audio_end_ms"],
        "played_ms": rec.player.played_ms.get(item_id),
        "audio_deltas_after_truncated": len(
            rec.raws("response.output_audio.delta", rec.raw.index(truncated), response_id=rid)
        ),
        "retrieved_item": retrieved["item"]["id"],
        "item_id": item_id,
        "transcript_kept": (retrieved["item"].get("content") or [{}])[0].get("transcript"),
    }
    report.mark("interrupt")
    # The SDK has no delete of its own; its raw-message path sends the GA event as an app would.
    after = len(rec.raw)
    message: Any = {"type": "conversation.item.delete", "other_data": {"item_id": item_id}}
    await rec.session.model.send_event(RealtimeModelSendRawMessage(message=message))
    deleted = await rec.raw_event("conversation.item.deleted", after)
    report.steps["delete"] = {"deleted_item": deleted["item_id"], "item_id": item_id}
    report.mark("delete")


async def wait_quiet(rec: Recorder) -> None:
    """Until no response is running and the player has played what it had."""
    async with asyncio.timeout(STEP_TIMEOUT_S):
        while len(rec.raws("response.created")) > len(rec.raws("response.done")) or rec.player.queued:
            rec.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await rec.changed.wait()


def main() -> None:
    args = parse_args()
    report = Report("openai-agents")
    run(report, lambda: scenario(args, report))


if __name__ == "__main__":
    main()
