"""The learning store on SQLite: a file in the data directory (default), or `:memory:`.

`memory://` and `sqlite:///:memory:` give a private in-process database (tests, one-off
runs). A file database is shared by every process on the host (WAL mode, a busy timeout);
its writes are serialised by SQLite, so sequence numbers commit in order and a reader that
has seen `seq` N never later finds an event below N.

Calls on a file database run in a worker thread (`asyncio.to_thread`) so a slow disk never
blocks the event loop; an in-memory database is called inline.

A file that is not a database, or whose pages are corrupt, is renamed to
`<name>.corrupt-<time>` (never replacing an earlier one: its evidence may still be recovered
by hand), logged, and a fresh store takes its place, so learning goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

from ..errors import ConfigurationError, StorageError
from ..types import Execution
from .base import dumps, loads, storage_errors
from .learning_base import (
    EventKind,
    LearningEvent,
    check_execution_id,
    execution_from_dict,
    execution_to_dict,
)

__all__ = ["SqliteLearningStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

_SCHEMA = """
CREATE TABLE IF NOT EXISTS learning_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL,
    kind TEXT NOT NULL,
    ts REAL NOT NULL,
    origin TEXT NOT NULL,
    execution_id TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS learning_events_ns_seq ON learning_events (namespace, seq);
CREATE INDEX IF NOT EXISTS learning_events_ns_ts ON learning_events (namespace, ts);
CREATE TABLE IF NOT EXISTS learning_executions (
    namespace TEXT NOT NULL,
    id TEXT NOT NULL,
    ts REAL NOT NULL,
    data TEXT NOT NULL,
    quality REAL,
    PRIMARY KEY (namespace, id)
);
"""


def _path_of(url: str) -> str:
    if url.startswith("memory://"):
        return ":memory:"
    if not url.startswith("sqlite://"):
        raise ConfigurationError(f"Not a sqlite:// or memory:// URL: {url!r}")
    rest = url[len("sqlite://"):]
    # sqlite:///abs/path.db → /abs/path.db ; sqlite:////abs/path.db (SQLAlchemy style) too.
    if rest.startswith("//"):
        rest = rest[1:]
    if rest in ("", "/", "/:memory:", ":memory:"):
        return ":memory:"
    return str(Path(rest).expanduser())


def _is_corrupt(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


class SqliteLearningStore:
    """`LearningStore` on SQLite.

    Args:
        path: A database file, or `":memory:"`.
        namespace: Separates tenants sharing one file.
    """

    def __init__(self, path: str | Path = ":memory:", *, namespace: str = "default") -> None:
        self.path = str(path)
        self.namespace = namespace
        self._memory = self.path == ":memory:"
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self.recoveries = 0
        """Times an unreadable file was moved aside (for tests and statistics)."""

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "default", **_: Any) -> SqliteLearningStore:
        """`memory://`, `sqlite:///:memory:` or `sqlite:///absolute/path.db`."""
        return cls(_path_of(url), namespace=namespace)

    def __repr__(self) -> str:
        return f"<SqliteLearningStore {self.path} namespace={self.namespace!r}>"

    # -- plumbing ----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            if not self._memory:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=5.0, check_same_thread=False, isolation_level=None
            )
            if not self._memory:
                conn.execute("PRAGMA journal_mode=WAL")
                # One fsync per commit cost about 5 ms per recorded execution here. In WAL
                # mode NORMAL still keeps every commit through a crash of the process; only
                # an OS crash or power loss may take back the last few, never the file.
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    def _move_aside(self, exc: sqlite3.Error) -> None:
        """Keep an unreadable file's bytes under a new name and start an empty store."""
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        self.recoveries += 1
        if self._memory:
            logger.error("The in-memory learning store is corrupt (%s); starting over", exc)
            return
        base = Path(self.path)
        n = 0
        while True:
            target = base.with_name(f"{base.name}.corrupt-{int(time.time())}{f'-{n}' if n else ''}")
            if not target.exists():
                break
            n += 1
        with contextlib.suppress(FileNotFoundError):
            os.replace(base, target)
        for suffix in ("-wal", "-shm"):
            side = base.with_name(base.name + suffix)
            with contextlib.suppress(FileNotFoundError):
                os.replace(side, target.with_name(target.name + suffix))
        logger.error(
            "The learning store %s is unreadable (%s); kept it as %s and started an empty one",
            self.path,
            exc,
            target,
        )

    async def _run(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with storage_errors("sqlite", operation), self._lock:
                # Reopening after close would recreate a file its owner may be deleting.
                if self._closed:
                    raise StorageError(f"sqlite {operation} failed: the store is closed")
                try:
                    return fn(self._connect())
                except sqlite3.DatabaseError as exc:
                    if not _is_corrupt(exc):
                        raise
                    # A corrupt file (or something else's) must not stop learning: its bytes
                    # are kept aside for inspection, and recording starts over.
                    self._move_aside(exc)
                    return fn(self._connect())

        if self._memory:
            return call()
        return await asyncio.to_thread(call)

    @staticmethod
    def _append(
        conn: sqlite3.Connection,
        namespace: str,
        kind: EventKind,
        ts: float,
        origin: str,
        execution_id: str | None,
        data: Mapping[str, Any],
    ) -> int:
        cur = conn.execute(
            "INSERT INTO learning_events (namespace, kind, ts, origin, execution_id, data) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (namespace, kind, ts, origin, execution_id, dumps(dict(data))),
        )
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    # -- LearningStore -----------------------------------------------------------------------

    async def record(self, execution: Execution, *, origin: str) -> int:
        eid = check_execution_id(execution.execution_id)
        data = execution_to_dict(execution)
        ns = self.namespace

        text = dumps(data)

        def op(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")
            try:
                kept = conn.execute(
                    "SELECT data FROM learning_executions WHERE namespace = ? AND id = ?",
                    (ns, eid),
                ).fetchone()
                if kept is not None and kept[0] == text:
                    # Exactly this execution again (a retried write): logged once only.
                    row = conn.execute(
                        "SELECT MAX(seq) FROM learning_events WHERE namespace = ? AND "
                        "execution_id = ?",
                        (ns, eid),
                    ).fetchone()
                    conn.execute("COMMIT")
                    return int(row[0] or 0)
                conn.execute(
                    "INSERT OR REPLACE INTO learning_executions (namespace, id, ts, data, quality)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (ns, eid, execution.timestamp, text, execution.quality),
                )
                seq = self._append(conn, ns, "execution", execution.timestamp, origin, eid, data)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return seq

        return await self._run("record", op)

    async def add_summary(
        self, summary: Mapping[str, Any], *, timestamp: float, origin: str
    ) -> int:
        ns = self.namespace
        return await self._run(
            "add_summary",
            lambda conn: self._append(conn, ns, "summary", timestamp, origin, None, summary),
        )

    async def feedback(
        self, execution_id: str, quality: float, *, timestamp: float, origin: str
    ) -> Execution | None:
        eid = check_execution_id(execution_id)
        ns = self.namespace

        def op(conn: sqlite3.Connection) -> Execution | None:
            # IMMEDIATE takes the write lock first, so read-update-append is one step.
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT data, quality FROM learning_executions WHERE namespace = ? AND id = ?",
                    (ns, eid),
                ).fetchone()
                if row is None:
                    conn.execute("ROLLBACK")
                    return None
                before = dict(loads(row[0]))
                before["quality"] = row[1]
                conn.execute(
                    "UPDATE learning_executions SET quality = ? WHERE namespace = ? AND id = ?",
                    (quality, ns, eid),
                )
                self._append(
                    conn,
                    ns,
                    "feedback",
                    timestamp,
                    origin,
                    eid,
                    {"execution": before, "previous": row[1], "quality": quality},
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return execution_from_dict(before)

        return await self._run("feedback", op)

    async def get(self, execution_id: str) -> Execution | None:
        ns = self.namespace

        def op(conn: sqlite3.Connection) -> Execution | None:
            row = conn.execute(
                "SELECT data, quality FROM learning_executions WHERE namespace = ? AND id = ?",
                (ns, execution_id),
            ).fetchone()
            if row is None:
                return None
            d = dict(loads(row[0]))
            d["quality"] = row[1]
            return execution_from_dict(d)

        return await self._run("get", op)

    async def events(self, after: int = 0, *, limit: int = 1000) -> list[LearningEvent]:
        ns = self.namespace

        def op(conn: sqlite3.Connection) -> list[LearningEvent]:
            rows = conn.execute(
                "SELECT seq, kind, ts, origin, data FROM learning_events "
                "WHERE namespace = ? AND seq > ? ORDER BY seq LIMIT ?",
                (ns, after, limit),
            ).fetchall()
            return [
                LearningEvent(
                    seq=int(r[0]),
                    kind=cast(EventKind, r[1]),
                    timestamp=float(r[2]),
                    origin=str(r[3]),
                    data=loads(r[4]),
                )
                for r in rows
            ]

        return await self._run("events", op)

    async def prune(self, before: float) -> int:
        ns = self.namespace

        def op(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")
            try:
                n = conn.execute(
                    "DELETE FROM learning_events WHERE namespace = ? AND ts < ?", (ns, before)
                ).rowcount
                conn.execute(
                    "DELETE FROM learning_executions WHERE namespace = ? AND ts < ?", (ns, before)
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return int(n)

        return await self._run("prune", op)

    async def check(self) -> bool:
        try:
            await self._run("check", lambda conn: conn.execute("SELECT 1").fetchone())
        except Exception:
            return False
        return True

    async def aclose(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
