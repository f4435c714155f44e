"""L3: the persistent cache tier, one SQLite file (`<data_dir>/cache.db` by default).

Threading: the store owns one `sqlite3` connection and one worker thread, and every write
runs on that thread (`loop.run_in_executor` with a private single-thread executor), so the
async verbs can be awaited from any event loop and a write never blocks one. A `get` is the
exception: it is on every cache miss's path, and the hop to the worker thread (and the wait
behind a write-behind `set` queued there) cost more than the query (about 250 µs against
20 µs, `benchmarks/bench_engine.py`). So a get first reads its one row inline, on a read
connection of the calling thread's own that never waits (WAL readers do not wait for the
writer; a busy or failing read, and a row that must be deleted, go to the worker thread).

Durability: WAL journal with `synchronous=NORMAL`: readers never wait for the writer, a
commit does not fsync, and a crash loses at most the last few writes, never the file. Several
processes may share one file.

Faults: a file that is not a database, or whose pages are corrupt, is renamed to
`<name>.corrupt` (replacing an older one), logged, and replaced by a fresh, empty cache; the
operation then runs once more on the new file, so the caller sees a miss, never a crash. Other
SQLite errors (a lock held too long, a full disk) are raised as `StorageError`. An entry whose
bytes are not UTF-8 text is deleted and reported as absent.

Bound: at most about `max_entries` rows. Every `trim_every` writes, expired rows are deleted
and, if still over the bound, the oldest rows by write time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

from ..clock import Clock
from ..errors import ConfigurationError, StorageError
from .base import storage_errors

__all__ = ["SqliteCacheStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ymera_cache (
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    expires_at REAL NOT NULL,
    stored_at  REAL NOT NULL,
    PRIMARY KEY (namespace, key)
);
CREATE INDEX IF NOT EXISTS ymera_cache_stored_at ON ymera_cache (stored_at);
CREATE INDEX IF NOT EXISTS ymera_cache_expires_at ON ymera_cache (expires_at);
"""

_UPSERT = (
    "INSERT INTO ymera_cache (namespace, key, value, expires_at, stored_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (namespace, key) DO UPDATE SET "
    "value = excluded.value, expires_at = excluded.expires_at, stored_at = excluded.stored_at"
)

_SELECT_ONE = "SELECT value, expires_at FROM ymera_cache WHERE namespace = ? AND key = ?"

_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


def _is_corrupt(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


class SqliteCacheStore:
    """A `CacheStore` in one SQLite file.

    Args:
        path: The database file (created with its directory), or `":memory:"`.
        max_entries: The bound on rows (all namespaces together).
        clock: Wall clock for expiry.
        timeout: Seconds to wait for another process's write lock before failing.
        trim_every: Writes between bound checks; default: 1 % of `max_entries`, 1 to 1000.
    """

    name = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_entries: int = 1_000_000,
        clock: Clock = time.time,
        timeout: float = 1.0,
        trim_every: int | None = None,
    ) -> None:
        if max_entries <= 0:
            raise ConfigurationError("max_entries must be positive", setting="cache_l3_max_entries")
        self.path = str(path) if str(path) == ":memory:" else str(Path(path).expanduser())
        self.max_entries = max_entries
        self._clock = clock
        self._timeout = timeout
        self._trim_every = trim_every or max(1, min(1000, max_entries // 100))
        self._writes = 0
        self._conn: sqlite3.Connection | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ymera-sqlite-cache"
        )
        self._closed = False
        self.recoveries = 0
        """How many times a corrupt file was replaced (for tests and statistics)."""
        self._close_lock = threading.Lock()
        # Inline readers, one per calling thread; `_generation` changes when the file is
        # replaced (corruption), so a reader of the old file reconnects.
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._generation = 0

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> SqliteCacheStore:
        """Build from `sqlite:///abs/path.db`, `sqlite:///~/x.db` or `sqlite:///:memory:`."""
        parsed = urlparse(url)
        if parsed.scheme != "sqlite":
            raise ConfigurationError(f"Not an sqlite:// URL: {url!r}")
        path = unquote(parsed.netloc + parsed.path)
        if path in ("/:memory:", ":memory:", ""):
            path = ":memory:"
        elif path.startswith(("/~", "//")):
            path = path[1:]  # sqlite:///~/x.db and SQLAlchemy's sqlite:////abs/x.db
        return cls(path, **kwargs)

    def __repr__(self) -> str:
        return f"<SqliteCacheStore {self.path} max_entries={self.max_entries}>"

    # -- the worker thread ---------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        try:
            # Values are read as bytes so that a row that is not UTF-8 is a miss, not a crash.
            conn.text_factory = bytes
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _recover(self, exc: sqlite3.Error) -> None:
        self.recoveries += 1
        logger.warning(
            "SQLite cache %s is unreadable (%s); moving it aside and starting empty",
            self.path,
            exc,
        )
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        if self.path == ":memory:":
            return
        self._generation += 1
        base = Path(self.path)
        with contextlib.suppress(FileNotFoundError):
            os.replace(base, base.with_name(base.name + ".corrupt"))
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(base.with_name(base.name + suffix))

    def _call(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on the worker thread's connection, recovering once from corruption."""
        with storage_errors("sqlite", operation):
            for attempt in (1, 2):
                try:
                    if self._conn is None:
                        self._conn = self._connect()
                    return fn(self._conn)
                except sqlite3.DatabaseError as exc:
                    if attempt == 2 or not _is_corrupt(exc):
                        raise
                    self._recover(exc)
            raise AssertionError("unreachable")

    async def _run(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StorageError(f"sqlite {operation} failed: the store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(self._call, operation, fn)
        )

    # -- CacheStore ------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection | None:
        """This thread's read connection, or `None` when an inline read is not possible."""
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        pid = os.getpid()
        if conn is not None and local.generation == self._generation and local.pid == pid:
            return conn
        if conn is not None:
            local.conn = None
            if local.pid == pid:  # a connection inherited through fork is left alone
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        # An in-memory database is private to its connection; a file the worker has not
        # created yet has no table to read.
        if self.path == ":memory:" or self._conn is None:
            return None
        conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
        conn.text_factory = bytes
        with self._close_lock:
            if self._closed:
                conn.close()
                return None
            self._readers.append(conn)
        local.conn, local.generation, local.pid = conn, self._generation, pid
        return conn

    def _read_inline(self, namespace: str, key: str, now: float) -> str | bool | None:
        """The live value, `None` for no row, or `False`: ask the worker thread instead."""
        try:
            conn = self._reader()
            if conn is None:
                return False
            rows = conn.execute(_SELECT_ONE, (namespace, key)).fetchall()
        except sqlite3.Error:
            return False  # busy, corrupt, closed: the worker's path knows what to do
        if not rows:
            return None
        raw, expires_at = rows[0]
        if expires_at <= now:
            return False
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return False

    async def get(self, namespace: str, key: str) -> str | None:
        if self._closed:
            raise StorageError("sqlite cache get failed: the store is closed")
        now = self._clock()
        found = self._read_inline(namespace, key, now)
        if found is not False:
            return found  # type: ignore[return-value]

        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(_SELECT_ONE, (namespace, key)).fetchone()
            if row is None:
                return None
            raw, expires_at = row
            if expires_at <= now:
                self._delete(conn, namespace, key)
                return None
            try:
                return bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                logger.warning("Removing an undecodable L3 cache entry in %s", self.path)
                self._delete(conn, namespace, key)
                return None

        return await self._run("cache get", op)

    @staticmethod
    def _delete(conn: sqlite3.Connection, namespace: str, key: str) -> None:
        conn.execute("DELETE FROM ymera_cache WHERE namespace = ? AND key = ?", (namespace, key))

    async def set(self, namespace: str, key: str, value: str, ttl: float) -> None:
        now = self._clock()

        def op(conn: sqlite3.Connection) -> None:
            if ttl <= 0:
                self._delete(conn, namespace, key)
                return
            conn.execute(_UPSERT, (namespace, key, value, now + ttl, now))
            self._writes += 1
            if self._writes >= self._trim_every:
                self._writes = 0
                self._trim(conn, now)

        await self._run("cache set", op)

    async def set_many(self, items: Sequence[tuple[str, str, str, float]]) -> None:
        """`set` for many `(namespace, key, value, ttl)` items in one transaction."""
        now = self._clock()
        rows = [(ns, key, value, now + ttl, now) for ns, key, value, ttl in items if ttl > 0]
        gone = [(ns, key) for ns, key, _, ttl in items if ttl <= 0]

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_UPSERT, rows)
                conn.executemany("DELETE FROM ymera_cache WHERE namespace = ? AND key = ?", gone)
                self._writes += len(rows)
                if self._writes >= self._trim_every:
                    self._writes = 0
                    self._trim(conn, now)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

        await self._run("cache set", op)

    def _trim(self, conn: sqlite3.Connection, now: float) -> None:
        conn.execute("DELETE FROM ymera_cache WHERE expires_at <= ?", (now,))
        (count,) = conn.execute("SELECT COUNT(*) FROM ymera_cache").fetchone()
        excess = int(count) - self.max_entries
        if excess > 0:
            conn.execute(
                "DELETE FROM ymera_cache WHERE rowid IN "
                "(SELECT rowid FROM ymera_cache ORDER BY stored_at LIMIT ?)",
                (excess,),
            )

    async def delete(self, namespace: str, key: str) -> None:
        await self._run("cache delete", lambda conn: self._delete(conn, namespace, key))

    async def clear(self, namespace: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM ymera_cache WHERE namespace = ?", (namespace,))

        await self._run("cache clear", op)

    async def size(self, namespace: str | None = None) -> int:
        now = self._clock()

        def op(conn: sqlite3.Connection) -> int:
            if namespace is None:
                row = conn.execute(
                    "SELECT COUNT(*) FROM ymera_cache WHERE expires_at > ?", (now,)
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT COUNT(*) FROM ymera_cache WHERE namespace = ? AND expires_at > ?",
                    (namespace, now),
                ).fetchone()
            return int(row[0])

        return await self._run("cache size", op)

    async def check(self) -> bool:
        try:
            await self._run("cache check", lambda conn: conn.execute("SELECT 1").fetchone())
        except Exception:
            return False
        return True

    async def journal_mode(self) -> str:
        """The journal mode in force (`"wal"`), for tests and diagnostics."""

        def op(conn: sqlite3.Connection) -> str:
            (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
            return bytes(mode).decode() if isinstance(mode, bytes) else str(mode)

        return await self._run("cache journal_mode", op)

    def _mark_closed(self) -> bool:
        with self._close_lock:
            closed, self._closed = self._closed, True
            return not closed

    def _close_conn(self) -> None:
        with self._close_lock:
            readers, self._readers = self._readers, []
        for reader in readers:
            with contextlib.suppress(sqlite3.Error):
                reader.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def aclose(self) -> None:
        """Close the connection and stop the worker thread (idempotent)."""
        if not self._mark_closed():
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._close_conn)
        finally:
            self._executor.shutdown(wait=False)

    def close(self) -> None:
        """Close from sync code (idempotent)."""
        if not self._mark_closed():
            return
        self._executor.submit(self._close_conn).result()
        self._executor.shutdown(wait=True)
