"""The local ticket outbox and the ``create_ticket`` tool.

A ticket the assistant creates is first written to a folder on this computer, one JSON file per
ticket, with status ``queued``; a later sync hands the folder's contents to the company's ticket
system. The ticket id is read aloud to the user straight away, so it must be short, must never be
given to two tickets, and the ticket must survive a crash or power cut once its id has been spoken.

- **Unique ids across processes**: an id is reserved by creating a marker file with
  ``O_CREAT | O_EXCL``, which the file system grants to exactly one creator. That works the same on
  every desktop OS, where advisory file locks do not. Markers are kept after the ticket is written,
  so ids are never reused even after a sync has removed the tickets it sent.
- **Durable writes**: temporary file in the same folder, ``fsync``, ``os.replace``, then ``fsync``
  of the folder where the OS allows it, so a reader sees either no ticket or a whole one.
- **Readable**: a corrupt or foreign file costs that file, reported in ``problems``; never the list.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias, get_args

from app.paths import DATA_DIR_ENV, default_data_dir
from app.tools.registry import Tool, ToolError

__all__ = [
    "CATEGORIES",
    "DATA_DIR_ENV",
    "URGENCIES",
    "Category",
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
_FIELDS: Final = ("id", "created_at", "summary", "description", "category", "urgency", "contact", "status")


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


def _fsync_dir(directory: Path) -> None:
    # Makes a rename or a new name durable on POSIX; Windows cannot open a folder this way, and its
    # file systems journal the metadata anyway, so failure here is not an error.
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(directory, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class TicketOutbox:
    """Queued tickets in one folder. Safe to use from several threads and processes at once."""

    def __init__(self, directory: Path | None = None) -> None:
        self._directory = Path(directory) if directory is not None else default_outbox_dir()

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
        reserved.mkdir(parents=True, exist_ok=True)
        number = self._highest_number() + 1
        while True:
            ticket_id = _ticket_id(number)
            try:
                fd = os.open(reserved / ticket_id, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                # Someone else took it between our scan and now; the next number is the next candidate.
                number += 1
                continue
            os.close(fd)
            _fsync_dir(reserved)
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

        Raises ValueError for bad fields and OSError when the folder cannot be written.
        """
        summary = _clean("summary", summary, SUMMARY_MAX)
        description = _clean("description", description, DESCRIPTION_MAX)
        if category not in CATEGORIES:
            raise ValueError(f"category must be one of {', '.join(CATEGORIES)}, not {category!r}")
        if urgency not in URGENCIES:
            raise ValueError(f"urgency must be one of {', '.join(URGENCIES)}, not {urgency!r}")
        if contact is not None:
            contact = _clean("contact", contact, CONTACT_MAX, required=False) or None

        self._directory.mkdir(parents=True, exist_ok=True)
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
        self._write_atomically(self._directory / f"{ticket.id}.json", payload)
        return ticket

    def _write_atomically(self, target: Path, payload: bytes) -> None:
        # The dot prefix and .tmp suffix keep a half-written file out of list() and out of a sync.
        temp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0), 0o644)
        try:
            try:
                view = memoryview(payload)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)

    # -- reading -------------------------------------------------------------------------------------

    def find(self, ticket_id: str) -> Ticket | None:
        """The ticket with ``ticket_id``, or None when the outbox has none (never queued here, or synced).

        Read-only. Raises ValueError when its file is not a valid ticket, OSError when it cannot be read.
        """
        if not _ID.fullmatch(ticket_id):
            return None  # not an id this outbox gives out; also keeps the name inside the folder
        try:
            text = (self._directory / f"{ticket_id}.json").read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        ticket = Ticket.from_dict(json.loads(text))
        if ticket.id != ticket_id:
            raise ValueError(f"{ticket_id}.json holds ticket {ticket.id}")
        return ticket

    def list(self) -> TicketListing:
        """All readable tickets, newest (highest id) first; unreadable files go to ``problems``."""
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
                data = json.loads((self._directory / name).read_text(encoding="utf-8"))
                ticket = Ticket.from_dict(data)
            except (OSError, ValueError, RecursionError) as exc:  # ValueError covers bad JSON and UTF-8
                problems.append(f"{name}: {exc}")
                continue
            if f"{ticket.id}.json" != name:
                problems.append(f"{name}: holds ticket {ticket.id}, which belongs in another file")
                continue
            tickets.append(ticket)
        tickets.sort(key=lambda ticket: ticket.number, reverse=True)
        return TicketListing(tuple(tickets), tuple(problems))


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


def create_ticket_tool(outbox: TicketOutbox, *, contact: str | None = None) -> Tool:
    """The ``create_ticket`` tool writing to ``outbox``; ``contact`` is stored on every ticket."""

    async def handler(arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            # A thread, so an fsync on a slow disk never stalls audio or the receive loop.
            ticket = await asyncio.to_thread(
                outbox.create,
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
        return {"ticket_id": ticket.id, "status": ticket.status, "message": f"Ticket {ticket.id} created"}

    return Tool(
        name="create_ticket",
        description=(
            "Create an IT helpdesk ticket for a technician. Use it when the knowledge base steps did not "
            "solve the problem, when an article says to escalate, or when the user asks for a ticket. "
            "Tell the user the ticket id that comes back, for example 'HD-1001'."
        ),
        parameters=CREATE_TICKET_PARAMETERS,
        handler=handler,
    )
