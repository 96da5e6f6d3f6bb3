"""Keeping each session's transcript on disk for ``transcript.retention_days``, and no longer.

One JSON file per app session (``TranscriptModel.to_json``), named by the local time the session
began, under ``<data dir>/transcripts/``. The GUI thread hands over the text; a writer thread does
the file work (``write_atomically`` syncs to disk, which a slow or network disk can stall for
seconds), so saving never holds up the GUI, and quitting waits for the last write only as long as
it can afford. Only the newest text waiting to be written is kept: a slow disk skips versions
rather than falling behind.

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

from app.fileio import write_atomically
from app.paths import default_data_dir

__all__ = ["TranscriptStore", "default_transcripts_dir", "prune_transcripts"]

log = logging.getLogger("app.ui.transcripts")

# Local time, without the colons Windows forbids in file names.
FILE_TIME_FORMAT = "%Y-%m-%d_%H-%M-%S"
SUFFIX = ".json"


def default_transcripts_dir() -> Path:
    return default_data_dir() / "transcripts"


def _is_ours(name: str) -> bool:
    # Saved transcripts, and the temporary files write_atomically leaves if the process dies mid-write
    # (those hold transcript text too, so retention covers them).
    return name.endswith(SUFFIX) or (name.startswith(".") and name.endswith(".tmp"))


def prune_transcripts(directory: Path, retention_days: int, now: datetime | None = None) -> list[Path]:
    """Delete the transcripts in ``directory`` last written more than ``retention_days`` ago.

    Retention 0 deletes them all. Returns what was deleted; OSError when the folder cannot be read
    or a file cannot be deleted (after trying the rest).
    """
    cutoff = (now or datetime.now()) - timedelta(days=retention_days)
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    deleted: list[Path] = []
    failure: OSError | None = None
    for entry in entries:
        if not _is_ours(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            written = datetime.fromtimestamp(entry.stat(follow_symlinks=False).st_mtime)
            if retention_days == 0 or written < cutoff:
                os.unlink(entry.path)
                deleted.append(Path(entry.path))
        except FileNotFoundError:
            continue  # gone already (another instance pruned it)
        except OSError as exc:
            failure = failure or exc
    if failure is not None:
        raise failure
    return deleted


class TranscriptStore:
    """This session's transcript file and the folder's retention, worked on by one writer thread.

    ``save`` and ``set_retention`` only hand work over; ``flush`` waits for it with a time limit.
    ``on_error`` is called once, on the writer thread, with a sentence for the user.
    """

    def __init__(
        self,
        retention_days: int,
        directory: Path | None = None,
        *,
        on_error: Callable[[str], None] | None = None,
        clock: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.directory = directory if directory is not None else default_transcripts_dir()
        self.path = self.directory / f"{clock():{FILE_TIME_FORMAT}}{SUFFIX}"
        self._on_error = on_error
        self._clock = clock
        self._retention = retention_days
        self._reported = False
        self._cond = threading.Condition()
        self._pending_text: str | None = None
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
            while self._busy or self._pending_text is not None or self._pending_prune:
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
                while self._pending_text is None and not self._pending_prune and not self._closed:
                    self._cond.wait()
                if self._pending_text is None and not self._pending_prune:
                    return  # closed, and nothing left to do
                text, self._pending_text = self._pending_text, None
                prune, self._pending_prune = self._pending_prune, False
                retention = self._retention
                self._busy = True
            try:
                self._work(text, prune, retention)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _work(self, text: str | None, prune: bool, retention: int) -> None:
        if prune:
            try:
                deleted = prune_transcripts(self.directory, retention, self._clock())
            except OSError as exc:
                self._report(f"Old transcripts could not be deleted from {self.directory}: {_reason(exc)}")
            else:
                if deleted:
                    log.info("deleted %d transcript(s) older than %d day(s)", len(deleted), retention)
        if text is not None and retention > 0:
            try:
                write_atomically(self.path, text + "\n")
            except OSError as exc:
                self._report(f"The transcript could not be saved to {self.path}: {_reason(exc)}")

    def _report(self, message: str) -> None:
        if self._reported:
            log.debug("%s", message)
            return
        self._reported = True
        log.warning("%s", message)
        if self._on_error is not None:
            try:
                self._on_error(message)
            except Exception:  # the reporter's failure must not end the writer thread
                log.exception("reporting a transcript problem failed")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
