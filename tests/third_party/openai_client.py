"""The official ``openai`` SDK's realtime client against the embedded server.

``AsyncOpenAI(websocket_base_url=...).realtime.connect()`` as an application would use it: a spoken
turn, speech over a playing answer, ``response.cancel``, ``conversation.item.truncate`` of a playing
answer, and retrieving and deleting items. Usage: see tests/third_party/common.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from typing import Any

from openai import AsyncOpenAI

from tests.third_party.common import Args, Report, audio_ms, chunks, parse_args, run, silence

STEP_TIMEOUT_S = 30.0


class Recorder:
    """Every server event in order, read by one task, so that steps can wait for what they need."""

    def __init__(self, connection: Any, report: Report) -> None:
        self.connection = connection
        self.report = report
        self.seen: list[Any] = []
        self.changed = asyncio.Event()

    async def read(self) -> None:
        async for event in self.connection:
            self.seen.append(event)
            self.report.saw(event.type)
            if event.type == "error":
                self.report.error(event.error.model_dump())
            self.changed.set()

    async def wait(self, kind: str, since: int = 0, timeout: float = STEP_TIMEOUT_S, **match: Any) -> Any:
        """The first event of ``kind`` at index ``since`` or later whose fields equal ``match``."""
        async with asyncio.timeout(timeout):
            index = since
            while True:
                while index < len(self.seen):
                    event = self.seen[index]
                    index += 1
                    if event.type == kind and all(getattr(event, k, None) == v for k, v in match.items()):
                        return event
                self.changed.clear()
                await self.changed.wait()

    def of(self, kind: str, since: int = 0, **match: Any) -> list[Any]:
        return [
            e
            for e in self.seen[since:]
            if e.type == kind and all(getattr(e, k, None) == v for k, v in match.items())
        ]


async def send_audio(connection: Any, pcm: bytes) -> None:
    for chunk in chunks(pcm):
        await connection.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())


async def ask(connection: Any, text: str) -> None:
    await connection.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    )
    await connection.response.create()


async def scenario(args: Args, report: Report) -> None:
    client = AsyncOpenAI(api_key=args.token, base_url=args.http_base, websocket_base_url=args.ws_base)
    async with client.realtime.connect(model="gpt-realtime") as connection:
        rec = Recorder(connection, report)
        reader = asyncio.create_task(rec.read())
        await rec.wait("session.created")
        await connection.session.update(
            session={
                "type": "realtime",
                "output_modalities": ["audio"],
                "audio": {
                    "input": {
                        "transcription": {"model": "whisper-1"},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                    }
                },
            }
        )
        await rec.wait("session.updated")
        report.mark("session_ready")
        await spoken_turn(args, report, rec)
        await speech_over_answer(args, report, rec)
        await client_cancel(report, rec)
        await truncate_and_delete(report, rec)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def spoken_turn(args: Args, report: Report, rec: Recorder) -> None:
    """Speech in, then the user's transcript, the answer's audio and its transcript out."""
    report.begin("spoken_turn")
    since = len(rec.seen)
    await send_audio(rec.connection, silence(0.3) + args.speech[0] + silence(1.2))
    user = await rec.wait("conversation.item.input_audio_transcription.completed", since)
    created = await rec.wait("response.created", since)
    rid = created.response.id
    done = await wait_response_done(rec, rid, since)
    deltas = rec.of("response.output_audio.delta", since, response_id=rid)
    answer = rec.of("response.output_audio_transcript.done", since, response_id=rid)
    report.steps["spoken_turn"] = {
        "user_transcript": user.transcript,
        "status": done.response.status,
        "answer_audio_ms": audio_ms(sum(len(base64.b64decode(d.delta)) for d in deltas)),
        "answer_transcript": answer[0].transcript if answer else None,
        "speech_started": len(rec.of("input_audio_buffer.speech_started", since)),
        "committed": len(rec.of("input_audio_buffer.committed", since)),
    }
    report.mark("spoken_turn")
    # The user's item as the server keeps it: the transcript, never the audio.
    since = len(rec.seen)
    await rec.connection.conversation.item.retrieve(item_id=user.item_id)
    retrieved = await rec.wait("conversation.item.retrieved", since)
    report.steps["retrieve_user_item"] = {
        "id": retrieved.item.id,
        "role": retrieved.item.role,
        "transcript": retrieved.item.content[0].transcript,
    }


async def wait_response_done(rec: Recorder, response_id: str, since: int) -> Any:
    async with asyncio.timeout(STEP_TIMEOUT_S):
        while True:
            done = await rec.wait("response.done", since)
            since = rec.seen.index(done) + 1
            if done.response.id == response_id:
                return done


async def speech_over_answer(args: Args, report: Report, rec: Recorder) -> None:
    """New speech while an answer plays: the server cuts the answer off and answers the new turn."""
    report.begin("speech_over_answer")
    since = len(rec.seen)
    await send_audio(rec.connection, silence(0.3) + args.speech[1] + silence(1.2))
    first = await rec.wait("response.output_audio.delta", since)
    rid = first.response_id
    speaking_at = len(rec.seen)
    await send_audio(rec.connection, args.speech[0] + silence(1.2))
    started = await rec.wait("input_audio_buffer.speech_started", speaking_at)
    after_start = rec.seen.index(started)
    cut = await wait_response_done(rec, rid, since)
    next_created = await rec.wait("response.created", after_start)
    next_done = await wait_response_done(rec, next_created.response.id, after_start)
    report.steps["speech_over_answer"] = {
        "status": cut.response.status,
        "reason": cut.response.status_details.reason if cut.response.status_details else None,
        "audio_deltas_after_speech_started": len(
            rec.of("response.output_audio.delta", after_start, response_id=rid)
        ),
        "next_response_status": next_done.response.status,
        "next_user_transcript": [
            e.transcript for e in rec.of("conversation.item.input_audio_transcription.completed", after_start)
        ],
    }
    report.mark("speech_over_answer")


async def client_cancel(report: Report, rec: Recorder) -> None:
    """``response.cancel`` while the answer plays."""
    report.begin("client_cancel")
    since = len(rec.seen)
    await ask(rec.connection, "My VPN keeps dropping.")
    first = await rec.wait("response.output_audio.delta", since)
    rid = first.response_id
    await rec.connection.response.cancel()
    done = await wait_response_done(rec, rid, since)
    # Deltas already on the wire when the cancel left may still come; none may follow response.done.
    deltas = rec.of("response.output_audio.delta", since, response_id=rid)
    report.steps["client_cancel"] = {
        "status": done.response.status,
        "reason": done.response.status_details.reason if done.response.status_details else None,
        "audio_ms_received": audio_ms(sum(len(base64.b64decode(d.delta)) for d in deltas)),
        "audio_deltas_after_done": len(
            rec.of("response.output_audio.delta", rec.seen.index(done), response_id=rid)
        ),
    }
    report.mark("client_cancel")


async def truncate_and_delete(report: Report, rec: Recorder) -> None:
    """The user heard 400 ms of a playing answer: truncate it there, read it back, then delete it."""
    report.begin("truncate_and_delete")
    since = len(rec.seen)
    await ask(rec.connection, "I forgot my password.")
    first = await rec.wait("response.output_audio.delta", since)
    rid, item_id = first.response_id, first.item_id

    def received_ms() -> float:
        deltas = rec.of("response.output_audio.delta", since, response_id=rid)
        return audio_ms(sum(len(base64.b64decode(d.delta)) for d in deltas))

    async with asyncio.timeout(STEP_TIMEOUT_S):
        while received_ms() < 400 and not rec.of("response.done", since):
            rec.changed.clear()
            await rec.changed.wait()
    await rec.connection.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=400)
    truncated = await rec.wait("conversation.item.truncated", since)
    done = await wait_response_done(rec, rid, since)
    after = len(rec.seen)
    await rec.connection.conversation.item.retrieve(item_id=item_id)
    retrieved = await rec.wait("conversation.item.retrieved", after)
    full = rec.of("response.output_audio_transcript.done", since, response_id=rid)
    await rec.connection.conversation.item.delete(item_id=item_id)
    deleted = await rec.wait("conversation.item.deleted", after)
    report.steps["truncate"] = {
        "truncated_item": truncated.item_id,
        "audio_end_ms": truncated.audio_end_ms,
        "item_id": item_id,
        "status": done.response.status,
        "transcript_sent": full[0].transcript if full else None,
        "transcript_kept": retrieved.item.content[0].transcript,
        "audio_deltas_after_truncated": len(
            rec.of("response.output_audio.delta", rec.seen.index(truncated), response_id=rid)
        ),
    }
    report.steps["delete"] = {"deleted_item": deleted.item_id, "item_id": item_id}
    report.mark("truncate_and_delete")


def main() -> None:
    args = parse_args()
    report = Report("openai")
    run(report, lambda: scenario(args, report))


if __name__ == "__main__":
    main()
