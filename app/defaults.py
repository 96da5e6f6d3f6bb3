"""Built-in defaults: the lowest settings layer, which site policy and user settings override."""

from __future__ import annotations

from app.core import protocol as p

INSTRUCTIONS = (
    "You are Helpdesk Voice, a friendly and efficient tier-1 IT support technician talking out loud "
    "with an employee. Keep every reply short and spoken: one or two sentences, one step at a time, "
    "then check whether it worked. Never read out long URLs or code. Use search_knowledge_base to find "
    "the company's approved steps before you give them. When you cannot solve the problem, gather a "
    "short description and call create_ticket, then read the ticket number back clearly. When they ask "
    "about a ticket, call get_ticket_status. When they want a person, call request_human and tell them "
    "exactly how and when someone will reach them. If the user interrupts, stop and follow what they said."
)
VOICE = "marin"
TRANSCRIPTION_MODEL = "gpt-4o-mini-transcribe"
SILENCE_MS = 500  # end of the user's turn after this much silence (cloud models)
# The embedded server prepares its answer during the first 150 ms of a pause, so it can afford to
# take the turn sooner: 400 ms still lets people pause between words without being cut off.
EMBEDDED_SILENCE_MS = 400


def session_config(
    tools: tuple[p.ToolSpec, ...] = (), model: str | None = None, backend: str = "custom"
) -> p.Session:
    # End of turn by meaning (semantic_vad) is a choice in Settings: on the offline assistant it
    # still drops a short "done" now and then (docs/architecture.md), so pauses stay the default.
    silence = EMBEDDED_SILENCE_MS if backend == "embedded" else SILENCE_MS
    detection = p.TurnDetection(kind="server_vad", silence_duration_ms=silence)
    return p.Session(
        instructions=INSTRUCTIONS,
        model=model,
        voice=VOICE,
        transcription=p.Transcription(TRANSCRIPTION_MODEL),
        turn_detection=detection,
        tools=tools,
    )
