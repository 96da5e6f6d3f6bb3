"""The local ticket outbox and the ``create_ticket`` tool.

A ticket the assistant creates is first written to a folder on this computer, one JSON file per
ticket, with status ``queued``; the delivery (:mod:`app.tools.delivery`) hands each one to the
company's ticket system when one is set up, and the file stays as the record of what was filed.
The ticket id is read aloud to the user straight away, so it must be short, must never be given to
two tickets, and the ticket must survive a crash or power cut once its id has been spoken.

- **Unique ids across processes**: an id is reserved by creating a marker file with
  ``O_CREAT | O_EXCL``, which the file system grants to exactly one creator. That works the same on
  every desktop OS, where advisory file locks do not. Markers are kept after the ticket is written,
  so ids are never reused even after a sync has removed the tickets it sent.
- **Durable writes**: temporary file in the same folder, ``fsync``, ``os.replace``, then ``fsync``
  of the folder where the OS allows it, so a reader sees either no ticket or a whole one.
- **Readable**: a corrupt or foreign file costs that file, reported in ``problems``; never the list.
- **Sealed at rest** (``app/sealed_files.py``): a ticket holds the user's own words, so its file is
  sealed with the data key from the OS keyring, 0600 in a 0700 folder. With no usable keyring the
  ticket is still written, plain but 0600, and the tool's answer says so: the id has been promised
  to the user, and a ticket lost is worse than one unsealed. Plain tickets (those, and earlier
  versions' 0644 files) are sealed by :meth:`TicketOutbox.tidy` once a key can be had.
- **Tidied at start** (:meth:`TicketOutbox.tidy`, on a thread of its own when the tool is made):
  temporary files a crash left behind are deleted once no live writer can own them (a crashed
  write's id was never spoken: it is only read out after the rename), modes are narrowed, plain
  tickets sealed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeAlias, get_args

from app.fileio import ensure_private_dir, fsync_dir, remove_stale_temp_files, write_atomically
from app.paths import DATA_DIR_ENV, default_data_dir
from app.sealed_files import MAGIC as SEALED_MAGIC
from app.sealed_files import (
    DataKey,
    DataKeyring,
    DataKeyUnavailable,
    NoDataKey,
    data_keys,
    is_sealed,
    read_file,
    seal_in_place,
    write_sealed,
)
from app.tools.registry import Tool, ToolError

__all__ = [
    "CATEGORIES",
    "DATA_DIR_ENV",
    "URGENCIES",
    "Category",
    "CreatedTicket",
    "Ticket",
    "TicketListing",
    "TicketOutbox",
    "Urgency",
    "create_ticket_tool",
    "default_data_dir",
    "default_outbox_dir",
]

Category: TypeAlias = Literal["account", "network", "hardware", "software", "email", "security", "other"]
Urgency: TypeAlias = Literal["low", "normal", "high", "critical"]
CATEGORIES: Final[tuple[str, ...]] = get_args(Category)
URGENCIES: Final[tuple[str, ...]] = get_args(Urgency)


SUMMARY_MAX: Final = 200
DESCRIPTION_MAX: Final = 4000
CONTACT_MAX: Final = 200
FIRST_NUMBER: Final = 1001  # four digits from the start: "H D one oh oh one" reads aloud well
SCHEMA_VERSION: Final = 1

_ID: Final = re.compile(r"HD-(\d{4,})")
_TICKET_FILE: Final = re.compile(r"HD-(\d{4,})\.json")
_RESERVED_DIR: Final = ".reserved"
_NOTES_DIR: Final = ".notes"  # text to add to a delivered ticket (a handoff, diagnostics), sealed
# HD-1042-000001-9f3a61c2.txt: the ticket, the note's place in its order and a random part, which
# keeps the name (and the key the delivery derives from it) unique even when the counter restarts
# after delivered notes were removed, or two processes add a note at once. Notes of earlier versions
# have no random part and are read the same.
_NOTE_FILE: Final = re.compile(r"(HD-\d{4,})-(\d{6})(?:-([0-9a-f]{8}))?\.txt")
_FIELDS: Final = ("id", "created_at", "summary", "description", "category", "urgency", "contact", "status")
_HAS_MODES: Final = sys.platform != "win32"

log = logging.getLogger(__name__)


def default_outbox_dir() -> Path:
    return default_data_dir() / "outbox"


def _ticket_id(number: int) -> str:
    return f"HD-{number:04d}"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _clean(name: str, value: object, limit: int, *, required: bool = True) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {type(value).__name__}")
    text = value.strip()
    if required and not text:
        raise ValueError(f"{name} must not be empty")
    if len(text) > limit:
        raise ValueError(f"{name} must be at most {limit} characters, not {len(text)}")
    return text


@dataclass(frozen=True, slots=True)
class Ticket:
    """One queued ticket, exactly as stored."""

    id: str
    created_at: str  # ISO 8601, UTC
    summary: str
    description: str
    category: str
    urgency: str
    contact: str | None
    status: str = "queued"

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **asdict(self)}

    @property
    def number(self) -> int:
        match = _ID.fullmatch(self.id)
        return int(match.group(1)) if match else -1

    @classmethod
    def from_dict(cls, data: object) -> Ticket:
        """A ticket from its stored form; ValueError says what is wrong with it."""
        if not isinstance(data, Mapping):
            raise ValueError("not a JSON object")
        missing = [name for name in _FIELDS if name not in data]
        if missing:
            raise ValueError(f"missing fields: {', '.join(missing)}")
        for name in _FIELDS:
            value = data[name]
            if not (isinstance(value, str) or (name == "contact" and value is None)):
                raise ValueError(f"field {name!r} must be a string")
        if not _ID.fullmatch(data["id"]):
            raise ValueError(f"bad ticket id {data['id']!r}")
        if data["category"] not in CATEGORIES:
            raise ValueError(f"unknown category {data['category']!r}")
        if data["urgency"] not in URGENCIES:
            raise ValueError(f"unknown urgency {data['urgency']!r}")
        try:
            datetime.fromisoformat(data["created_at"])
        except ValueError:
            raise ValueError(f"created_at is not an ISO 8601 time: {data['created_at']!r}") from None
        return cls(**{name: data[name] for name in _FIELDS})


@dataclass(frozen=True, slots=True)
class TicketListing:
    """What :meth:`TicketOutbox.list` found: readable tickets, newest first, and unreadable files."""

    tickets: tuple[Ticket, ...]
    problems: tuple[str, ...]

    def __iter__(self) -> Iterator[Ticket]:
        return iter(self.tickets)

    def __len__(self) -> int:
        return len(self.tickets)


@dataclass(frozen=True, slots=True)
class CreatedTicket:
    """A ticket just written, and why it is not sealed when it is not (for the user)."""

    ticket: Ticket
    unsealed_reason: str | None = None


class TicketOutbox:
    """Queued tickets in one folder. Safe to use from several threads and processes at once.

    ``keys`` holds the data key that seals the files (the process's shared one by default).
    """

    def __init__(self, directory: Path | None = None, keys: DataKeyring | None = None) -> None:
        self._directory = Path(directory) if directory is not None else default_outbox_dir()
        self._keys = keys if keys is not None else data_keys

    @property
    def directory(self) -> Path:
        return self._directory

    def __repr__(self) -> str:
        return f"TicketOutbox({str(self._directory)!r})"

    # -- ids -----------------------------------------------------------------------------------------

    def _highest_number(self) -> int:
        highest = FIRST_NUMBER - 1
        for folder, pattern in ((self._directory / _RESERVED_DIR, _ID), (self._directory, _TICKET_FILE)):
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                continue
            for name in names:
                match = pattern.fullmatch(name)
                if match:
                    highest = max(highest, int(match.group(1)))
        return highest

    def _reserve(self) -> str:
        reserved = self._directory / _RESERVED_DIR
        ensure_private_dir(reserved)
        number = self._highest_number() + 1
        while True:
            ticket_id = _ticket_id(number)
            try:
                fd = os.open(reserved / ticket_id, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                # Someone else took it between our scan and now; the next number is the next candidate.
                number += 1
                continue
            os.close(fd)
            fsync_dir(reserved)
            return ticket_id

    # -- writing -------------------------------------------------------------------------------------

    def create(
        self,
        summary: str,
        description: str,
        category: str,
        urgency: str = "normal",
        contact: str | None = None,
    ) -> Ticket:
        """Write a new queued ticket durably and return it. Blocking: call it off the event loop.

        Raises ValueError for bad fields and OSError when the folder cannot be written. Sealed when
        the keyring allows, else written plain (:meth:`create_reporting` says which).
        """
        return self.create_reporting(summary, description, category, urgency, contact).ticket

    def create_reporting(
        self,
        summary: str,
        description: str,
        category: str,
        urgency: str = "normal",
        contact: str | None = None,
    ) -> CreatedTicket:
        """:meth:`create`, also saying why the ticket is not sealed when it could not be."""
        summary = _clean("summary", summary, SUMMARY_MAX)
        description = _clean("description", description, DESCRIPTION_MAX)
        if category not in CATEGORIES:
            raise ValueError(f"category must be one of {', '.join(CATEGORIES)}, not {category!r}")
        if urgency not in URGENCIES:
            raise ValueError(f"urgency must be one of {', '.join(URGENCIES)}, not {urgency!r}")
        if contact is not None:
            contact = _clean("contact", contact, CONTACT_MAX, required=False) or None

        key, problem = self._lookup_key(create=True)
        unsealed_reason = problem if key is None else None
        ensure_private_dir(self._directory)
        ticket = Ticket(
            id=self._reserve(),
            created_at=_now_iso(),
            summary=summary,
            description=description,
            category=category,
            urgency=urgency,
            contact=contact,
        )
        payload = json.dumps(ticket.to_dict(), ensure_ascii=False, indent=2).encode("utf-8") + b"\n"
        target = self._directory / f"{ticket.id}.json"
        # The dot prefix and .tmp suffix of the temporary file keep a half-written ticket out of
        # list() and out of a sync.
        if key is not None:
            write_sealed(target, payload, key)
        else:
            write_atomically(target, payload, private=True)
            log.warning("ticket %s is saved unencrypted: %s", ticket.id, unsealed_reason)
        return CreatedTicket(ticket, unsealed_reason)

    # -- notes for a ticket ----------------------------------------------------------------------------

    def add_note(self, ticket_id: str, text: str) -> str:
        """Keeps ``text`` to be added to the ticket in the company's system (sealed like the ticket).

        Returns the note's name. Raises ValueError for an unknown ticket id, OSError when it cannot
        be written. With no usable keyring the note is written plain (0600), as a ticket is.
        """
        if not _ID.fullmatch(ticket_id) or not (self._directory / f"{ticket_id}.json").exists():
            raise ValueError(f"there is no ticket {ticket_id} on this computer")
        folder = self._directory / _NOTES_DIR
        ensure_private_dir(folder)
        taken = [
            int(m.group(2))
            for n in os.listdir(folder)
            if (m := _NOTE_FILE.fullmatch(n)) and m.group(1) == ticket_id
        ]
        name = f"{ticket_id}-{max(taken, default=0) + 1:06d}-{secrets.token_hex(4)}.txt"
        key, _problem = self._lookup_key(create=True)
        if key is not None:
            write_sealed(folder / name, text.encode("utf-8"), key)
        else:
            write_atomically(folder / name, text, private=True)
        return name

    def notes(self, ticket_id: str) -> list[tuple[str, str]]:
        """The ticket's notes not yet added, oldest first, as (name, text); unreadable ones are skipped."""
        found = []
        for name in self.note_names().get(ticket_id, []):
            try:
                found.append((name, self.read_note(name)))
            except (OSError, ValueError) as exc:
                log.warning("ticket note %s cannot be read: %s", name, exc)
        return found

    def note_names(self) -> dict[str, list[str]]:
        """Every ticket's notes not yet added, by ticket id, oldest first; names only, nothing unsealed.

        Raises OSError when the notes' folder exists but cannot be listed.
        """
        try:
            names = os.listdir(self._directory / _NOTES_DIR)
        except FileNotFoundError:
            return {}
        found: dict[str, list[tuple[int, str]]] = {}
        for name in names:
            match = _NOTE_FILE.fullmatch(name)
            if match:
                found.setdefault(match.group(1), []).append((int(match.group(2)), name))
        return {ticket_id: [name for _, name in sorted(notes)] for ticket_id, notes in found.items()}

    def read_note(self, name: str) -> str:
        """A note's text. Raises ValueError for a name that is no note or a note that cannot be
        unsealed or decoded, OSError when it cannot be read."""
        if not _NOTE_FILE.fullmatch(name):
            raise ValueError(f"{name!r} is not a ticket note")
        return read_file(self._directory / _NOTES_DIR / name, self._keys).decode("utf-8")

    def remove_note(self, name: str) -> None:
        """A note the ticket system took: it is not added again."""
        if _NOTE_FILE.fullmatch(name):
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._directory / _NOTES_DIR / name)

    @staticmethod
    def note_id(name: str) -> str:
        """The part of a note's name that tells it from the ticket's other notes, ever: "000001-9f3a61c2"."""
        match = _NOTE_FILE.fullmatch(name)
        if match is None:
            raise ValueError(f"{name!r} is not a ticket note")
        return "-".join(part for part in match.group(2, 3) if part)

    # -- tidying at start ----------------------------------------------------------------------------

    def tidy(self) -> tuple[str, ...]:
        """Clean up after earlier runs: crash leftovers, loose modes, plain tickets. Blocking.

        Deletes temporary files old enough that no live writer owns them, makes the folders 0700 and
        the tickets 0600, and seals plain tickets when a data key can be had (a corrupt file is left
        as found). Looking the key up here also brings a keyring's unlock prompt now, not in the
        middle of the first ticket. Never raises; returns what it could not do, each as a sentence.
        """
        key, key_problem = self._lookup_key(create=False)
        try:
            if not self._directory.is_dir():
                return ()
            ensure_private_dir(self._directory)
            if (self._directory / _RESERVED_DIR).is_dir():
                ensure_private_dir(self._directory / _RESERVED_DIR)
            names = sorted(os.listdir(self._directory))
        except OSError as exc:
            return (f"{self._directory}: cannot tidy the outbox: {exc.strerror or exc}",)
        problems: list[str] = []
        try:
            removed = remove_stale_temp_files(self._directory)
        except OSError as exc:
            problems.append(
                f"{self._directory}: a crashed write's temporary file could not be deleted: {exc}"
            )
        else:
            if removed:
                log.info("deleted %d temporary file(s) a crash left in %s", len(removed), self._directory)
        left_plain = 0
        for name in names:
            if _TICKET_FILE.fullmatch(name) is None:
                continue
            path = self._directory / name
            try:
                if _HAS_MODES and path.stat().st_mode & 0o077:
                    os.chmod(path, 0o600)
                if not _is_plain(path):
                    continue
                if key is None and not key_problem:  # a key is made only once there is something to seal
                    key, key_problem = self._lookup_key(create=True)
                if key is None:
                    left_plain += 1
                elif seal_in_place(path, key, check=_ticket_check(name)):
                    log.info("sealed %s, written plain by an earlier version or without a keyring", name)
            except (ValueError, RecursionError):
                continue  # corrupt or foreign: list() reports it; it stays as found
            except OSError as exc:
                problems.append(f"{name}: could not be tidied: {exc.strerror or exc}")
        if left_plain:
            problems.append(
                f"{left_plain} ticket(s) stay unencrypted until a keyring can be used: {key_problem}"
            )
        return tuple(problems)

    def _lookup_key(self, *, create: bool) -> tuple[DataKey | None, str]:
        """The data key, or None and why not ("" when there is simply none yet)."""
        try:
            return self._keys.get(create=create), ""
        except NoDataKey:
            return None, ""
        except DataKeyUnavailable as exc:
            return None, str(exc)

    def tidy_and_log(self) -> None:
        """:meth:`tidy`, with what it could not do logged as warnings (for a background thread)."""
        for problem in self.tidy():
            log.warning("ticket outbox: %s", problem)

    # -- reading -------------------------------------------------------------------------------------

    def _read(self, name: str) -> Ticket:
        data = json.loads(read_file(self._directory / name, self._keys).decode("utf-8"))
        return Ticket.from_dict(data)

    def find(self, ticket_id: str) -> Ticket | None:
        """The ticket with ``ticket_id``, or None when the outbox has none (never queued here, or synced).

        Read-only; blocking if the data key is not in memory yet. Raises ValueError when its file is
        not a valid ticket or cannot be unsealed (the file is kept), OSError when it cannot be read.
        """
        if not _ID.fullmatch(ticket_id):
            return None  # not an id this outbox gives out; also keeps the name inside the folder
        try:
            ticket = self._read(f"{ticket_id}.json")
        except FileNotFoundError:
            return None
        if ticket.id != ticket_id:
            raise ValueError(f"{ticket_id}.json holds ticket {ticket.id}")
        return ticket

    def ticket_ids(self) -> list[str]:
        """The ids of the tickets in the outbox, from their file names: nothing is read or unsealed.

        Raises OSError when the folder exists but cannot be listed.
        """
        try:
            names = os.listdir(self._directory)
        except FileNotFoundError:
            return []
        return sorted(
            (m.group(0)[: -len(".json")] for n in names if (m := _TICKET_FILE.fullmatch(n))),
            key=lambda ticket_id: int(ticket_id[3:]),
        )

    def list(self) -> TicketListing:
        """All readable tickets, newest (highest id) first; unreadable files go to ``problems``.

        A sealed ticket this keyring's key cannot open is a problem too, and stays on disk.
        """
        try:
            names = sorted(os.listdir(self._directory))
        except FileNotFoundError:
            return TicketListing((), ())
        except OSError as exc:
            return TicketListing((), (f"{self._directory}: cannot read the outbox: {exc}",))
        tickets: list[Ticket] = []
        problems: list[str] = []
        for name in names:
            if name.startswith(".") or not name.endswith(".json"):
                continue  # temporary files, the reservation folder, anything else that is not a ticket
            match = _TICKET_FILE.fullmatch(name)
            if match is None:
                problems.append(f"{name}: not a ticket file name (expected HD-<number>.json)")
                continue
            try:
                ticket = self._read(name)
            except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, UTF-8 or seal
                problems.append(f"{name}: {exc}")
                continue
            if f"{ticket.id}.json" != name:
                problems.append(f"{name}: holds ticket {ticket.id}, which belongs in another file")
                continue
            tickets.append(ticket)
        tickets.sort(key=lambda ticket: ticket.number, reverse=True)
        return TicketListing(tuple(tickets), tuple(problems))


def _is_plain(path: Path) -> bool:
    with path.open("rb") as handle:
        return not is_sealed(handle.read(len(SEALED_MAGIC)))


def _ticket_check(name: str) -> Callable[[bytes], object]:
    """Only a valid ticket in its own file is sealed by the tidy; anything else stays as found."""

    def check(data: bytes) -> None:
        ticket = Ticket.from_dict(json.loads(data.decode("utf-8")))
        if f"{ticket.id}.json" != name:
            raise ValueError(f"{name} holds ticket {ticket.id}")

    return check


# ---------------------------------------------------------------------------------------------------
# The tool
# ---------------------------------------------------------------------------------------------------

CREATE_TICKET_PARAMETERS: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "summary": {
            "type": "string",
            "description": "One line saying what is wrong, in the user's terms.",
            "minLength": 1,
            "maxLength": SUMMARY_MAX,
        },
        "description": {
            "type": "string",
            "description": "What the user reported, what was tried and what happened, including any "
            "error messages and device names mentioned.",
            "minLength": 1,
            "maxLength": DESCRIPTION_MAX,
        },
        "category": {"type": "string", "enum": list(CATEGORIES)},
        "urgency": {
            "type": "string",
            "enum": list(URGENCIES),
            "default": "normal",
            "description": "critical only when many people or a security incident are involved; high "
            "when the user cannot work at all.",
        },
    },
    "required": ["summary", "description", "category"],
    "additionalProperties": False,
}


# How long the tool waits for the ticket system's own number before answering with the local id
# (the delivery goes on; the user hears the real number in a notice when it comes).
DELIVERY_WAIT_S: Final = 3.0


class Delivery(Protocol):
    """What the tool needs of :class:`app.tools.delivery.DeliveryWorker`."""

    def deliver_soon(self) -> None: ...

    def wait_delivered(self, ticket_id: str, timeout: float) -> Any: ...

    def add_note(self, ticket_id: str, text: str) -> None: ...


_SPEAKERS: Final = {"user": "User", "assistant": "Assistant"}


def conversation_text(lines: list[tuple[str, str]]) -> str:
    """The conversation as a technician reads it: one line per turn, as the user heard it."""
    return "\n".join(f"{_SPEAKERS.get(role, role)}: {text}" for role, text in lines if text.strip())


def create_ticket_tool(
    outbox: TicketOutbox,
    *,
    contact: str | None = None,
    delivery: Delivery | None = None,
    transcript: Callable[[], list[tuple[str, str]]] | None = None,
) -> Tool:
    """The ``create_ticket`` tool writing to ``outbox``; ``contact`` is stored on every ticket.

    With ``transcript`` (the conversation as the user heard it), the ticket gets it as a note, so the
    technician reads what was said and tried, not only the model's summary.

    With ``delivery`` (a ticket system is set up), the new ticket goes to the system at once and the
    answer carries the system's own number when it arrives within :data:`DELIVERY_WAIT_S`.

    Making the tool is the outbox's start: its :meth:`TicketOutbox.tidy` runs on a thread of its own,
    so neither a slow disk nor the keyring holds up the conversation starting.
    """
    threading.Thread(target=outbox.tidy_and_log, name="helpdesk-outbox-tidy", daemon=True).start()

    async def handler(arguments: dict[str, Any]) -> dict[str, Any]:
        # Read on the loop, before any thread: the conversation is not thread-safe.
        heard = conversation_text(transcript()) if transcript is not None else ""
        try:
            # A thread, so an fsync on a slow disk or the keyring never stalls audio or the receive loop.
            created = await asyncio.to_thread(
                outbox.create_reporting,
                arguments["summary"],
                arguments["description"],
                arguments["category"],
                arguments.get("urgency", "normal"),
                contact,
            )
        except ValueError as exc:
            raise ToolError("invalid_arguments", f"The ticket was not created: {exc}.") from exc
        except OSError as exc:
            message = f"The ticket could not be saved on this computer ({exc.strerror or exc})."
            raise ToolError("ticket_not_saved", message) from exc
        ticket = created.ticket
        answer = {"ticket_id": ticket.id, "status": ticket.status, "message": f"Ticket {ticket.id} created"}
        if heard:
            note = f"The conversation when the ticket was filed, as the user heard it:\n{heard}"
            try:
                await asyncio.to_thread(outbox.add_note, ticket.id, note)
            except OSError as exc:  # the ticket itself is safe; only the note is missing
                log.warning("the conversation could not be kept with ticket %s: %s", ticket.id, exc)
        if delivery is not None:
            delivery.deliver_soon()
            state = await asyncio.to_thread(delivery.wait_delivered, ticket.id, DELIVERY_WAIT_S)
            if state is not None:
                answer |= {
                    "status": "delivered",
                    "ticket_number": state.number,
                    "system": state.system,
                    "message": f"Ticket {ticket.id} is filed in {state.system} as {state.number}",
                }
            else:
                answer["message"] = (
                    f"Ticket {ticket.id} created; it is being sent to the IT helpdesk, and the user will "
                    "be told its number there"
                )
        if created.unsealed_reason is not None:
            # Shown in the transcript and read by the model: the user hears the id either way, and
            # learns that this ticket sits on the disk unencrypted until a keyring can seal it.
            unsealed = (
                f"saved on this computer without encryption, because {created.unsealed_reason}; "
                "it will be encrypted once a keyring can be used"
            )
            answer |= {
                "message": f"Ticket {ticket.id} created, but it is {unsealed}.",
                "warning": f"Ticket {ticket.id} is {unsealed}.",
            }
        return answer

    return Tool(
        name="create_ticket",
        description=(
            "Create an IT helpdesk ticket for a technician. Use it when the knowledge base steps did not "
            "solve the problem, when an article says to escalate, or when the user asks for a ticket. "
            "Tell the user the ticket number that comes back: the helpdesk's own (ticket_number, for "
            "example 'RT #123') when there is one, else the ticket id, for example 'HD-1001'."
        ),
        parameters=CREATE_TICKET_PARAMETERS,
        handler=handler,
    )
