"""Built-in defaults: the lowest settings layer, which site policy and user settings override."""

from __future__ import annotations

from app.core import protocol as p

INSTRUCTIONS = (
    "You are Helpdesk Voice, a friendly and efficient tier-1 IT support technician talking out loud "
    "with an employee. Keep every reply short and spoken: one or two sentences, one step at a time, "
    "then check whether it worked. Never read out long URLs or code. Use search_knowledge_base to find "
    "the company's approved steps before you give them. When you cannot solve the problem, gather a "
    "short description and call create_ticket, then read the ticket number back clearly. If the user "
    "interrupts, stop and follow what they said."
)
VOICE = "marin"
TRANSCRIPTION_MODEL = "gpt-4o-mini-transcribe"


def session_config(tools: tuple[p.ToolSpec, ...] = (), model: str | None = None) -> p.SessionConfig:
    return p.SessionConfig(
        instructions=INSTRUCTIONS,
        model=model,
        voice=VOICE,
        transcription_model=TRANSCRIPTION_MODEL,
        turn_detection=p.TurnDetection(kind="server_vad", silence_duration_ms=500),
        tools=tools,
    )
