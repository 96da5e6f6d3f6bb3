"""Keeping each session's transcript on disk, sealed, for ``transcript.retention_days``, and no longer.

One file per app session (``TranscriptModel.to_json``), named by the local time the session began,
under ``<data dir>/transcripts/``. What the user said is personal data, so the file is sealed with
the data key from the OS keyring (``app/sealed_files.py``: AES-GCM, 0600 in a 0700 folder) and
:func:`read_transcript` is the way to read it back. The GUI thread hands over the text; a writer
thread does the file work and the keyring (``write_atomically`` syncs to disk, which a slow or
network disk can stall for seconds, and the keyring may wait on D-Bus or an unlock prompt), so
saving never holds up the GUI, and quitting waits for the last write only as long as it can afford.
Only the newest text waiting to be written is kept: a slow disk skips versions rather than falling
behind.

With no usable keyring nothing is written: the transcript stays in the window, in memory only, and
the first save says so once. At start, the writer thread also tidies the folder: temporary files a
crashed write left are deleted once no live writer can own them, plain transcripts from earlier
versions are sealed (their times kept, so retention still counts from their last write), and
transcripts sealed with a key the keyring no longer holds are reported once and kept, until
retention deletes them like any other.

Retention 0 means keep nothing: no file is written and the existing ones are deleted. A failure to
write or delete (read-only or full disk) is logged and reported once per session, never raised.
No Qt here: the caller turns ``on_error`` into whatever its surface shows.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from app.fileio import STALE_TEMP_AGE_S, delete_files_where, ensure_private_dir, is_temp_name
from app.paths import default_data_dir
from app.sealed_files import (
    DataKey,
    DataKeyring,
    DataKeyUnavailable,
    NoDataKey,
    data_keys,
    is_sealed,
    read_file,
    seal_in_place,
    sealed_key_id,
    write_sealed,
)

__all__ = ["TranscriptStore", "default_transcripts_dir", "prune_transcripts", "read_transcript"]

log = logging.getLogger("app.ui.transcripts")

# Local time, without the colons Windows forbids in file names.
FILE_TIME_FORMAT = "%Y-%m-%d_%H-%M-%S"
SUFFIX = ".json"


def default_transcripts_dir() -> Path:
    return default_data_dir() / "transcripts"


def read_transcript(path: Path, keys: DataKeyring = data_keys) -> str:
    """A saved transcript's JSON text, unsealed (a plain one from an earlier version is read as is).

    Blocking when the data key is not in memory yet. OSError when the file cannot be read,
    ValueError (``UnreadableFile``) when it cannot be unsealed here, or is not UTF-8.
    """
    return read_file(path, keys).decode("utf-8")


def prune_transcripts(directory: Path, retention_days: int, now: datetime | None = None) -> list[Path]:
    """Delete the transcripts in ``directory`` last written more than ``retention_days`` ago.

    Retention 0 deletes them all. The temporary files of writes a crash cut short go too, once
    ``STALE_TEMP_AGE_S`` old (a younger one may be another instance's write in progress). Returns
    what was deleted; OSError when the folder cannot be read or a file cannot be deleted (after
    trying the rest).
    """
    moment = now or datetime.now()
    # Naive local times on both sides, as the files' times are read: a day is a calendar day.
    cutoff = (moment - timedelta(days=retention_days)).timestamp()
    temp_cutoff = (moment - timedelta(seconds=STALE_TEMP_AGE_S)).timestamp()

    def expired(name: str, written: float) -> bool:
        if is_temp_name(name):
            return written < temp_cutoff
        return retention_days == 0 or written < cutoff

    return delete_files_where(directory, lambda name: is_temp_name(name) or name.endswith(SUFFIX), expired)


def _saved_transcripts(directory: Path) -> list[Path]:
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []  # a missing or unreadable folder: the prune reports the latter
    found: list[Path] = []
    for entry in entries:
        try:
            if entry.name.endswith(SUFFIX) and entry.is_file(follow_symlinks=False):
                found.append(Path(entry.path))
        except OSError:
            continue
    return found


def _head(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(64)


class TranscriptStore:
    """This session's transcript file and the folder's retention, worked on by one writer thread.

    ``save`` and ``set_retention`` only hand work over; ``flush`` waits for it with a time limit.
    ``on_error`` is called on the writer thread with a sentence for the user, at most once for each
    kind of trouble (the disk, no keyring, files sealed with a lost key). ``keys`` holds the data key
    (the process's shared one by default).
    """

    def __init__(
        self,
        retention_days: int,
        directory: Path | None = None,
        *,
        on_error: Callable[[str], None] | None = None,
        clock: Callable[[], datetime] = datetime.now,
        keys: DataKeyring | None = None,
    ) -> None:
        self.directory = directory if directory is not None else default_transcripts_dir()
        self.path = self.directory / f"{clock():{FILE_TIME_FORMAT}}{SUFFIX}"
        self._on_error = on_error
        self._clock = clock
        self._keys = keys if keys is not None else data_keys
        self._retention = retention_days
        self._reported: set[str] = set()
        # Writer thread only: the key once fetched, or why there is none. Asked once per session, so
        # a keyring that refused (or an unlock prompt the user dismissed) is not asked on every save.
        self._key: DataKey | None = None
        self._key_problem: str | None = None
        self._cond = threading.Condition()
        self._pending_text: str | None = None
        self._pending_start = True  # tidy the folder and fetch the key as the app starts
        self._pending_prune = True  # old transcripts go as the app starts
        self._busy = False
        self._closed = False
        # A daemon: a write stuck on a dead disk must not keep the process alive after quitting.
        self._thread = threading.Thread(target=self._run, name="helpdesk-transcripts", daemon=True)
        self._thread.start()

    @property
    def retention_days(self) -> int:
        with self._cond:
            return self._retention

    @property
    def enabled(self) -> bool:
        """Whether transcripts are kept at all (retention above 0)."""
        return self.retention_days > 0

    def save(self, text: str) -> None:
        """Write ``text`` as this session's transcript soon; a later call replaces it if not yet written."""
        with self._cond:
            if self._closed or self._retention == 0:
                return
            self._pending_text = text
            self._cond.notify()

    def set_retention(self, days: int) -> None:
        """A new retention: prune with it; with 0, also drop what waits to be written."""
        with self._cond:
            self._retention = days
            if days == 0:
                self._pending_text = None
            self._pending_prune = True
            self._cond.notify()

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the work handed over so far; False if it is still going."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy or self._pending_text is not None or self._pending_prune or self._pending_start:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def close(self) -> None:
        """No more work after what is pending; the thread then ends."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    # ------------------------------------------------------------------------------------------
    # The writer thread
    # ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while (
                    self._pending_text is None
                    and not self._pending_prune
                    and not self._pending_start
                    and not self._closed
                ):
                    self._cond.wait()
                if self._pending_text is None and not self._pending_prune and not self._pending_start:
                    return  # closed, and nothing left to do
                text, self._pending_text = self._pending_text, None
                prune, self._pending_prune = self._pending_prune, False
                start, self._pending_start = self._pending_start, False
                retention = self._retention
                self._busy = True
            try:
                self._work(text, prune, start, retention)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _work(self, text: str | None, prune: bool, start: bool, retention: int) -> None:
        if prune:
            try:
                deleted = prune_transcripts(self.directory, retention, self._clock())
            except OSError as exc:
                self._report(
                    "disk", f"Old transcripts could not be deleted from {self.directory}: {_reason(exc)}"
                )
            else:
                if deleted:
                    log.info(
                        "deleted %d transcript file(s) past %d day(s) or left by a crash",
                        len(deleted),
                        retention,
                    )
        if start:  # after the prune: what it deletes need not be sealed first
            self._start(retention)
        if text is not None and retention > 0:
            key = self._fetch_key(create=True)
            if key is None:
                self._report(
                    "keyring",
                    f"This session's transcript is kept in memory only, not saved on this computer: "
                    f"{self._key_problem}.",
                )
                return
            try:
                write_sealed(self.path, (text + "\n").encode("utf-8"), key)
            except OSError as exc:
                self._report("disk", f"The transcript could not be saved to {self.path}: {_reason(exc)}")

    def _fetch_key(self, *, create: bool) -> DataKey | None:
        if self._key is not None or self._key_problem is not None:
            return self._key
        try:
            self._key = self._keys.get(create=create)
        except NoDataKey:
            pass  # only looked for, and none made yet: the first save makes it
        except DataKeyUnavailable as exc:
            self._key_problem = str(exc)
        return self._key

    def _start(self, retention: int) -> None:
        # The key is looked up now even when nothing will be written, so a ticket link opened later
        # on the GUI thread finds it in memory; it is made only once there is something to seal. A
        # failure is told at the first save, when it matters.
        key = self._fetch_key(create=False)
        try:
            if self.directory.is_dir():
                ensure_private_dir(self.directory)
        except OSError:
            pass  # an unusable folder is reported by the prune or the write
        if retention == 0:
            return  # the prune has deleted everything
        plain: list[Path] = []
        sealed_with: list[bytes | None] = []
        for path in _saved_transcripts(self.directory):
            try:
                head = _head(path)
            except OSError:
                continue  # deleted meanwhile, or unreadable: nothing to seal or count
            if is_sealed(head):
                sealed_with.append(sealed_key_id(head))
            else:
                plain.append(path)
        if plain:
            key = self._fetch_key(create=True)
        if key is not None:
            for path in plain:
                try:
                    seal_in_place(path, key)
                    log.info("sealed %s, written plain by an earlier version", path.name)
                except OSError as exc:
                    self._report("disk", f"A saved transcript could not be sealed ({path}): {_reason(exc)}")
        if key is not None:
            lost = sum(key_id != key.key_id for key_id in sealed_with)
        else:  # a keyring that works but holds no key has lost them all; one that fails may not have
            lost = 0 if self._key_problem is not None else len(sealed_with)
        if lost:
            self._report(
                "lost-key",
                f"{lost} saved transcript(s) in {self.directory} were sealed with a data key the "
                "keyring no longer holds, so they cannot be opened; they are kept until the "
                "retention period deletes them.",
            )

    def _report(self, kind: str, message: str) -> None:
        if kind in self._reported:
            log.debug("%s", message)
            return
        self._reported.add(kind)
        log.warning("%s", message)
        if self._on_error is not None:
            try:
                self._on_error(message)
            except Exception:  # the reporter's failure must not end the writer thread
                log.exception("reporting a transcript problem failed")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
