"""The embedded default backend: one SQLite file in WAL mode.

WAL lets readers run beside the single writer without blocking it, and with
``synchronous = FULL`` a COMMIT is on disk before it returns (NORMAL is durable across a
process crash but may lose the last transactions on power loss). All writes go through
one writer thread with group commit (``storage.writer``); reads use a small pool of
``query_only`` connections in worker threads.

Errors that mean "the file cannot take writes now" (SQLITE_BUSY/LOCKED after the busy
timeout, SQLITE_FULL, SQLITE_IOERR, SQLITE_READONLY, SQLITE_CANTOPEN) make the store
not ready and are retried until they clear; anything else is the operation's own fault.

One kefu process per database file: the message-id allocation below reads max(id) under
the write lock, which is correct for any number of processes, but the replay windows
and counters of the keyring live in one process.
"""

from __future__ import annotations

import os
import queue
import sqlite3
from pathlib import Path
from typing import Any, Callable

import trio

from . import migrate
from .base import StorageUnavailable, StoredMessage
from .sqlstore import PRUNE_BATCH, SqlStore, like_escape

# primary result codes (sqlite3.h)
_UNAVAILABLE = {
    5: "database is locked by another process (SQLITE_BUSY after the busy timeout)",
    6: "database table is locked (SQLITE_LOCKED)",
    7: "out of memory (SQLITE_NOMEM)",
    8: "database is read-only (SQLITE_READONLY: file or directory permissions)",
    10: "disk I/O error (SQLITE_IOERR)",
    13: "database or disk is full (SQLITE_FULL)",
    14: "unable to open the database file (SQLITE_CANTOPEN)",
    15: "locking protocol error (SQLITE_PROTOCOL)",
}


def classify(e: BaseException) -> str | None:
    if isinstance(e, sqlite3.Error):
        code = getattr(e, "sqlite_errorcode", None)
        if code is not None and (code & 0xFF) in _UNAVAILABLE:
            return f"sqlite: {_UNAVAILABLE[code & 0xFF]}: {e}"
        msg = str(e).lower()
        if "locked" in msg or "disk is full" in msg or "disk i/o" in msg or "unable to open" in msg:
            return f"sqlite: {e}"
    if isinstance(e, OSError):
        return f"sqlite: {e}"
    return None


class SqliteStore(SqlStore):
    dialect = "sqlite"
    backend = "sqlite"

    def __init__(self, cfg, keyring=None, *, path: str | None = None, readers: int = 2) -> None:
        super().__init__(cfg, keyring)
        self.path = str(path if path is not None else getattr(cfg, "path", "kefu.db"))
        self.synchronous = str(getattr(cfg, "sqlite_synchronous", "full")).upper()
        self.busy_timeout_ms = int(getattr(cfg, "sqlite_busy_timeout_ms", 5000))
        self.n_readers = readers
        self._readers: queue.SimpleQueue = queue.SimpleQueue()
        self._reader_conns: list[sqlite3.Connection] = []
        self._limiter = trio.CapacityLimiter(readers)
        self.writer_conn: sqlite3.Connection | None = None  # for tests that must reach the writer's connection

    # ------------------------------------------------------------ connections

    def _connect(self, *, reader: bool = False) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            if not reader:
                # Transcripts and sessions are private: a new database is created owner-only
                # (0600); SQLite gives its -wal and -shm files the same permissions.
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=self.busy_timeout_ms / 1000)
        conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        if reader:
            conn.execute("PRAGMA query_only = 1")
        else:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageUnavailable(f"sqlite: cannot switch {self.path} to WAL (journal_mode is {mode})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _writer_connect(self) -> sqlite3.Connection:
        self.writer_conn = self._connect()
        return self.writer_conn

    def _writer_kwargs(self) -> dict:
        cfg = self.cfg
        return dict(
            connect=self._writer_connect,
            classify=classify,
            begin=lambda c: c.execute("BEGIN IMMEDIATE"),
            commit=lambda c: c.execute("COMMIT"),
            rollback=lambda c: c.in_transaction and c.execute("ROLLBACK"),
            max_batch=int(getattr(cfg, "group_commit_max", 2000)),
            buffer_limit=int(getattr(cfg, "max_pending", 10000)),
            commit_timeout=float(getattr(cfg, "commit_timeout", 10.0)),
        )

    async def open(self, *, upgrade: bool = True) -> "SqliteStore":
        def prepare():
            conn = self._connect()
            try:
                if upgrade:
                    migrate.upgrade_sqlite(conn)
                pending = [m for m in migrate.status(conn, "sqlite") if m.applied_at is None]
                fts = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'chat_fts'").fetchone() is not None
                return pending, fts
            finally:
                conn.close()

        try:
            pending, fts = await trio.to_thread.run_sync(prepare)
        except sqlite3.Error as e:
            raise StorageUnavailable(classify(e) or f"sqlite: {e}") from e
        if pending:
            raise StorageUnavailable(
                f"sqlite: {self.path} needs migrations {', '.join(f'{m.version:04d}' for m in pending)}; "
                "run `kefu db upgrade`")
        self.features = {
            "sqlite": sqlite3.sqlite_version, "path": self.path, "journal_mode": "wal",
            "synchronous": self.synchronous.lower(), "search": "fts5 trigram" if fts else "none",
        }
        for _ in range(self.n_readers):
            c = await trio.to_thread.run_sync(lambda: self._connect(reader=True))
            self._reader_conns.append(c)
            self._readers.put(c)
        await self._start_writer()
        return self

    async def close(self) -> None:
        await self._stop_writer()
        for c in self._reader_conns:
            c.close()
        self._reader_conns.clear()

    async def __aenter__(self) -> "SqliteStore":
        return await self.open()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _read(self, fn: Callable[[Any], Any]) -> Any:
        def run():
            conn = self._readers.get()
            try:
                return fn(conn)
            finally:
                self._readers.put(conn)

        try:
            return await trio.to_thread.run_sync(run, limiter=self._limiter)
        except sqlite3.Error as e:
            reason = classify(e)
            if reason:
                raise StorageUnavailable(reason) from e
            raise

    async def migration_status(self) -> list:
        return await self._read(lambda c: migrate.status(c, "sqlite"))

    # ------------------------------------------------------------ engine specifics

    def _insert_messages(self, conn, msgs: list[StoredMessage], now: float) -> list[int]:
        # ids allocated under the write lock (BEGIN IMMEDIATE), so max(id) is stable here
        first = (conn.execute("SELECT max(id) FROM mqtt_messages").fetchone()[0] or 0) + 1
        ids = list(range(first, first + len(msgs)))
        conn.executemany(
            "INSERT INTO mqtt_messages (id, topic, payload, qos, retain, properties, sender, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(i, m.topic, m.payload, m.qos, int(m.retain), m.properties, m.sender, m.created_at or now, m.expires_at)
             for i, m in zip(ids, msgs)])
        return ids

    def _index_message(self, conn, msg_id: int, text: str) -> None:
        conn.execute("INSERT INTO chat_fts (rowid, body) VALUES (?, ?)", (msg_id, text))

    def _search_rows(self, conn, terms: list[str], conv: str | None, limit: int) -> list:
        where, params = [], []
        long = [t for t in terms if len(t) >= 3]
        if long:  # trigram index: each term a phrase, all required
            where.append("chat_fts MATCH ?")
            params.append(" AND ".join('"' + t.replace('"', '""') + '"' for t in long))
        for t in terms:
            if len(t) < 3:  # shorter than a trigram: LIKE over the indexed text
                where.append("chat_fts.body LIKE ? ESCAPE '\\'")
                params.append("%" + like_escape(t) + "%")
        if conv is not None:
            where.append("m.conversation_id = ?")
            params.append(conv)
        sql = ("SELECT m.id, m.conversation_id, m.created_at, m.sender_kind, m.body, m.key_id FROM chat_fts "
               "JOIN chat_messages m ON m.id = chat_fts.rowid WHERE " + " AND ".join(where) +
               " ORDER BY m.id DESC LIMIT ?")
        return conn.execute(sql, (*params, limit)).fetchall()

    def _bucket_rows(self, conn, name, start, end, bucket_s, labels) -> list:
        sql = ("SELECT CAST(at / ? AS INTEGER) * ? AS b, count(*), avg(value), min(value), max(value) "
               "FROM metric_samples WHERE name = ? AND at >= ? AND at < ?")
        params = [bucket_s, bucket_s, name, start, end]
        if labels is not None:
            sql += " AND labels = ?"
            params.append(labels)
        return conn.execute(sql + " GROUP BY b ORDER BY b", params).fetchall()

    def _prune_extra(self, conn, now: float) -> dict[str, int]:
        out = {}
        for table, col, cutoff in self._retention_cutoffs(now):
            key = "id" if table != "metric_samples" else "rowid"
            ids = [(r[0],) for r in conn.execute(
                f"SELECT {key} FROM {table} WHERE {col} < ? LIMIT ?", (cutoff, PRUNE_BATCH)).fetchall()]
            if table == "chat_messages":
                conn.executemany("DELETE FROM chat_fts WHERE rowid = ?", ids)
            conn.executemany(f"DELETE FROM {table} WHERE {key} = ?", ids)
            out[table] = len(ids)
        return out


async def upgrade(path: str) -> list[str]:
    """Run pending migrations on a database file (`kefu db upgrade`)."""
    def run():
        conn = SqliteStore(None, path=path)._connect()
        try:
            return migrate.upgrade_sqlite(conn)
        finally:
            conn.close()

    return await trio.to_thread.run_sync(run)

