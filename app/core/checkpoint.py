"""SQLite WAL checkpoints on a thread of their own, off the commit path.

SQLite's automatic checkpoint runs inside the COMMIT that takes the WAL past 1,000 pages: in
an alert storm every few group commits also copied 4 MB into the database file (and synced
it) while every request of the group, and the next group, waited. Here the writers'
automatic checkpoint only guards a far larger WAL, and a thread copies the WAL in PASSIVE
mode, which never holds writers up. Under continuous writes a passive checkpoint never
finds the WAL wholly copied, so the next writer never starts it afresh and the file would
only grow: past RESTART_FRAMES a RESTART checkpoint (right after a passive one, so little is
left to copy) holds writers off for that moment, and the WAL starts again from its beginning.
A reader of an older snapshot (a long report) makes a RESTART wait, and writers with it: it
gives up after BUSY_TIMEOUT_MS and backs off before trying again.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from urllib.parse import quote

log = logging.getLogger("crisisflow.db")

INTERVAL_S = 0.1
# Writers check-point by themselves only past this many pages (64 MB at 4 KiB): a safety net
# for a process whose checkpointer is not running (the CLI, a stopped thread).
WRITER_AUTOCHECKPOINT = 16384
# A WAL file longer than this (after a checkpoint) is cut back to it.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
RESTART_FRAMES = 4096  # 16 MB of WAL not yet copied while writers keep coming
# How long a RESTART may hold writers off waiting for the current writer and for readers of
# an older snapshot (a long report); past it, it gives up, and waits longer each time before
# it tries again (up to MAX_BACKOFF_S), so a reader that lasts minutes costs writers a few
# per cent of their time rather than all of it.
BUSY_TIMEOUT_MS = 200
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0


class Checkpointer:
    def __init__(self, path: str) -> None:
        self.path = path
        self._backoff = 0.0
        self._restart_after = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crisisflow-checkpoint",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop.wait(INTERVAL_S):
                try:
                    if conn is None:
                        # mode=rw: never create the file (migrations do).
                        conn = sqlite3.connect(f"file:{quote(self.path)}?mode=rw", uri=True,
                                               isolation_level=None, check_same_thread=False)
                        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                    self._checkpoint(conn)
                except sqlite3.Error as exc:
                    # A busy or vanished file: the writers' own checkpoint still guards the
                    # WAL; try again next round on a fresh connection.
                    log.debug("WAL checkpoint skipped: %s", exc)
                    if conn is not None:
                        conn.close()
                        conn = None
        finally:
            if conn is not None:
                conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        _busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        # frames is -1 before the file is in WAL mode, and small after a restart.
        if frames < RESTART_FRAMES or time.monotonic() < self._restart_after:
            return
        # Copied whole or not, a WAL that writers kept appending to is started afresh only
        # by a restart: a writer finds it wholly copied only between commits.
        busy, _frames, _copied = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        if busy:
            self._backoff = min(MAX_BACKOFF_S, self._backoff * 2 or FIRST_BACKOFF_S)
            self._restart_after = time.monotonic() + self._backoff
        else:
            self._backoff = 0.0
