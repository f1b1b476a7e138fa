"""PostgreSQL backend: psycopg 3 (sync API in worker threads), a pool for readers, one
group-commit writer connection, COPY for MQTT batches, optional TimescaleDB.

psycopg's async API is asyncio-only, so every call runs in a thread: reads through a
``psycopg_pool.ConnectionPool`` (checked on checkout, so connections killed by a server
restart are replaced), writes through the writer thread of ``storage.writer``. A batch
of PUBLISHes becomes one ``SELECT nextval`` for its ids plus one binary COPY for the
messages and one for the queue rows: three round trips for a thousand messages.

What the server offers is *detected* at open and reported in ``health().features``
(and by `kefu db status`): TimescaleDB installed (and ``storage.timescaledb`` on) ->
hypertables, compression, ``time_bucket``; absent -> plain tables and ``date_bin``.
pg_trgm present -> indexed ILIKE search; absent -> the same query by scan.

Time-based upkeep is kefu's own on both, in its maintenance task (``prune``), not
TimescaleDB background jobs: those follow their own schedule (retention a day late, by
whole chunks), need a working job scheduler, and race anything dropping the schema. On
TimescaleDB, retention drops the chunks wholly past the cut-off and deletes the older rows
of the chunk it falls in (so the cut-off holds to the row, as on plain tables), and chunks
past ``COMPRESS_AFTER_DAYS`` are compressed over a pooled connection, one at a time, so the
group-commit writer never waits for a compression.

Errors are split like SQLite's: connection loss, admin shutdown, disk full and other
server-side resource errors (SQLSTATE classes 08, 53, 57P, 58, and psycopg's
OperationalError) make the store not ready and are retried until the server is back.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Callable

import psycopg
import psycopg_pool
import trio

from . import migrate
from .base import StorageUnavailable, StoredMessage
from .sqlstore import PRUNE_BATCH, SqlStore, like_escape

log = logging.getLogger("kefu.storage")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# TimescaleDB: chunks whose end is older than this many days are compressed by maintenance.
COMPRESS_AFTER_DAYS = {"chat_messages": 30, "audit_log": 60, "metric_samples": 7}
# Background jobs on kefu's hypertables that older versions added; maintenance does their work.
_OLD_POLICIES = ("policy_retention", "policy_compression", "policy_refresh_continuous_aggregate")
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58", "40")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def classify(e: BaseException) -> str | None:
    if isinstance(e, psycopg_pool.PoolTimeout):
        return "postgres: no connection could be made in time (server down or pool exhausted)"
    if isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError)):
        return f"postgres: {_first_line(e)}"
    state = getattr(e, "sqlstate", None)
    if state and state.startswith(_UNAVAILABLE_CLASSES):
        return f"postgres: {_first_line(e)} (SQLSTATE {state})"
    if isinstance(e, OSError):
        return f"postgres: {e}"
    return None


def conn_kwargs(schema: str) -> dict:
    if not _IDENT.match(schema):
        raise ValueError(f"storage.pg_schema: {schema!r} is not a plain lower-case SQL identifier")
    path = schema if schema == "public" else f"{schema},public"
    return dict(
        options=f"-c search_path={path}",
        connect_timeout=3,
        keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
        tcp_user_timeout=10000,
        application_name="kefu",
    )


class PostgresStore(SqlStore):
    dialect = "postgres"
    backend = "postgres"

    def __init__(self, cfg, keyring=None, *, dsn: str | None = None, schema: str | None = None) -> None:
        super().__init__(cfg, keyring)
        self.dsn = dsn if dsn is not None else getattr(cfg, "dsn", "")
        if not self.dsn:
            raise ValueError("storage.dsn: required when storage.backend = \"postgres\" "
                             "(e.g. \"postgresql://kefu@127.0.0.1:5432/kefu\")")
        self.schema = schema if schema is not None else getattr(cfg, "pg_schema", "public")
        self.kwargs = conn_kwargs(self.schema)
        self.pool_size = int(getattr(cfg, "pool_size", 4))
        self.pool: psycopg_pool.ConnectionPool | None = None
        self.timescale = False
        self.use_timescale = bool(getattr(cfg, "timescaledb", True))
        self.read_timeout = 5.0  # seconds a read waits for a pooled connection
        self._limiter = trio.CapacityLimiter(self.pool_size)

    # ------------------------------------------------------------ connections

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=autocommit, **self.kwargs)

    def _writer_connect(self):
        return self.connect().cursor()

    def _writer_kwargs(self) -> dict:
        cfg = self.cfg

        def probe(cur):
            cur.execute("SELECT 1")
            cur.connection.rollback()

        return dict(
            connect=self._writer_connect,
            classify=classify,
            begin=lambda cur: None,  # psycopg opens the transaction at the first statement
            commit=lambda cur: cur.connection.commit(),
            rollback=lambda cur: cur.connection.rollback(),
            close=lambda cur: cur.connection.close(),
            probe=probe,
            max_batch=int(getattr(cfg, "group_commit_max", 2000)),
            buffer_limit=int(getattr(cfg, "max_pending", 10000)),
            commit_timeout=float(getattr(cfg, "commit_timeout", 10.0)),
        )

    def _prepare(self, upgrade: bool) -> tuple[list, dict, bool]:
        with self.connect() as conn:
            if not self.use_timescale:
                conn.execute("SET kefu.timescaledb = off")  # read by migration 0003
            if upgrade:
                with conn.transaction():
                    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                migrate.upgrade_postgres(conn)
            pending = [m for m in migrate.status(conn, "postgres") if m.applied_at is None]
            features, timescale = detect_features(conn, self.use_timescale)
            if timescale and not pending:
                self._remove_old_policies(conn)
            conn.commit()
            return pending, features, timescale

    async def open(self, *, upgrade: bool = True) -> "PostgresStore":
        try:
            pending, self.features, self.timescale = await trio.to_thread.run_sync(self._prepare, upgrade)
        except psycopg.Error as e:
            raise StorageUnavailable(classify(e) or f"postgres: {_first_line(e)}") from e
        if pending:
            raise StorageUnavailable(
                f"postgres: schema {self.schema} needs migrations {', '.join(f'{m.version:04d}' for m in pending)}; "
                "run `kefu db upgrade`")
        self.pool = psycopg_pool.ConnectionPool(
            self.dsn, min_size=1, max_size=self.pool_size, open=False, timeout=5.0,
            kwargs=dict(autocommit=True, **self.kwargs), check=psycopg_pool.ConnectionPool.check_connection,
            name=f"kefu-{self.schema}")
        await trio.to_thread.run_sync(lambda: self.pool.open(wait=True, timeout=10.0))
        await self._start_writer()
        return self

    async def close(self) -> None:
        await self._stop_writer()
        if self.pool is not None:
            pool, self.pool = self.pool, None
            await trio.to_thread.run_sync(pool.close)

    async def __aenter__(self) -> "PostgresStore":
        return await self.open()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _read(self, fn: Callable[[Any], Any]) -> Any:
        def run():
            with self.pool.connection(timeout=self.read_timeout) as conn, conn.cursor() as cur:
                return fn(cur)

        if self.pool is None:
            raise StorageUnavailable("postgres store is not open")
        try:
            return await trio.to_thread.run_sync(run, limiter=self._limiter)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
            reason = classify(e)
            if reason:
                raise StorageUnavailable(reason) from e
            raise

    async def migration_status(self) -> list:
        return await self._read(lambda c: migrate.status(c, "postgres"))

    @staticmethod
    def _remove_old_policies(conn) -> None:
        """Delete the retention, compression and refresh jobs earlier kefu versions added to
        this schema (maintenance does that work now); touches nothing where there are none."""
        for (job,) in conn.execute(
                "SELECT job_id FROM timescaledb_information.jobs WHERE hypertable_schema = current_schema() "
                "AND proc_name = ANY(%s)", (list(_OLD_POLICIES),)).fetchall():
            conn.execute("SELECT delete_job(%s)", (job,))

    async def prune(self, now: float | None = None) -> dict[str, int]:
        out = await super().prune(now)
        if self.timescale:
            try:
                await self.compress_chunks(time.time() if now is None else now)
            except psycopg.Error as e:  # e.g. a chunk locked by another node's pass: next pass retries
                log.warning("timescaledb: compression postponed: %s", _first_line(e))
        return out

    async def compress_chunks(self, now: float, limit: int = 4) -> int:
        """TimescaleDB: compress up to ``limit`` chunks past ``COMPRESS_AFTER_DAYS`` (oldest
        first), each in its own transaction on a pooled connection; returns how many."""
        def run(cur) -> int:
            done = 0
            for table, days in COMPRESS_AFTER_DAYS.items():
                chunks = cur.execute(
                    "SELECT c.chunk_schema || '.' || c.chunk_name FROM timescaledb_information.chunks c "
                    "WHERE c.hypertable_schema = current_schema() AND c.hypertable_name = %s "
                    "AND NOT c.is_compressed AND c.range_end <= to_timestamp(%s) ORDER BY c.range_end LIMIT %s",
                    (table, now - days * 86400.0, limit - done)).fetchall()
                for (chunk,) in chunks:
                    cur.execute("SELECT compress_chunk(%s::regclass, if_not_compressed => true)", (chunk,))
                    done += 1
                if done >= limit:
                    break
            return done

        return await self._read(run)

    # ------------------------------------------------------------ engine specifics

    def _insert_messages(self, cur, msgs: list[StoredMessage], now: float) -> list[int]:
        ids = sorted(r[0] for r in cur.execute(
            "SELECT nextval('mqtt_messages_id_seq') FROM generate_series(1, %s)", (len(msgs),)).fetchall())
        with cur.copy("COPY mqtt_messages (id, topic, payload, qos, retain, properties, sender, created_at, expires_at) "
                      "FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["int8", "text", "bytea", "int2", "int2", "bytea", "text", "float8", "float8"])
            for i, m in zip(ids, msgs):
                cp.write_row((i, m.topic, m.payload, m.qos, int(m.retain), m.properties, m.sender,
                              m.created_at or now, m.expires_at))
        return ids

    def _insert_queue(self, cur, rows: list[tuple[str, int, int, int | None, str]]) -> None:
        with cur.copy("COPY mqtt_queue (client_id, message_id, qos, packet_id, state) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["text", "int8", "int2", "int4", "text"])
            for r in rows:
                cp.write_row(r)

    def _h_mark_sent(self, cur, batch):
        # one statement for the whole run: (packet id, client id, message id) rows
        cur.execute(
            "UPDATE mqtt_queue SET packet_id = v.pid, state = 'sent' "
            "FROM unnest(%s::int4[], %s::text[], %s::int8[]) AS v(pid, cid, mid) "
            "WHERE mqtt_queue.seq = (SELECT min(q.seq) FROM mqtt_queue q WHERE q.client_id = v.cid "
            "AND q.message_id = v.mid AND q.state = 'queued')",
            ([r[0] for r in batch], [r[1] for r in batch], [r[2] for r in batch]))
        return [None] * len(batch)

    def _h_ack(self, cur, batch):
        # one statement per client instead of a round trip per PUBACK (the broker sends many)
        by_client: dict[str, list[int]] = {}
        for cid, pid in batch:
            by_client.setdefault(cid, []).append(pid)
        for cid, pids in by_client.items():
            cur.execute("DELETE FROM mqtt_queue WHERE client_id = %s AND packet_id = ANY(%s)", (cid, pids))
        return [None] * len(batch)

    def _search_rows(self, cur, terms: list[str], conv: str | None, limit: int) -> list:
        where = ["search_text ILIKE %s"] * len(terms)
        params: list = ["%" + like_escape(t) + "%" for t in terms]
        if conv is not None:
            where.append("conversation_id = %s")
            params.append(conv)
        return cur.execute(
            "SELECT id, conversation_id, extract(epoch from created_at)::float8, sender_kind, body, key_id "
            "FROM chat_messages WHERE " + " AND ".join(where) + " ORDER BY id DESC LIMIT %s",
            (*params, limit)).fetchall()

    def _bucket_rows(self, cur, name, start, end, bucket_s, labels) -> list:
        fn = ("time_bucket(make_interval(secs => %s), at, origin => 'epoch'::timestamptz)" if self.timescale
              else "date_bin(make_interval(secs => %s), at, 'epoch'::timestamptz)")
        sql = (f"SELECT extract(epoch from {fn})::float8 AS b, count(*), avg(value), min(value), max(value) "
               "FROM metric_samples WHERE name = %s AND at >= to_timestamp(%s) AND at < to_timestamp(%s)")
        params = [bucket_s, name, start, end]
        if labels is not None:
            sql += " AND labels = %s"
            params.append(labels)
        return cur.execute(sql + " GROUP BY b ORDER BY b", params).fetchall()

    def _prune_extra(self, cur, now: float) -> dict[str, int]:
        out = {}
        for table, col, cutoff in self._retention_cutoffs(now):
            if self.timescale:
                # Whole chunks past the cut-off go at once; the chunk it falls in loses its
                # older rows by DELETE (compressed chunks take DML too). ctid is per chunk,
                # so the batched ctid delete below is for plain tables only.
                n = cur.execute(f"SELECT count(*) FROM {table} WHERE {col} < to_timestamp(%s)", (cutoff,)).fetchone()[0]
                if n:
                    cur.execute("SELECT count(*) FROM drop_chunks(%s::regclass, older_than => to_timestamp(%s))",
                                (table, cutoff))
                    cur.execute(f"DELETE FROM {table} WHERE {col} < to_timestamp(%s)", (cutoff,))
                out[table] = int(n)
                continue
            n = cur.execute(
                f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {col} < to_timestamp(%s) "
                "LIMIT %s))", (cutoff, PRUNE_BATCH)).rowcount
            out[table] = max(n, 0)
        return out


def detect_features(conn, use_timescale: bool = True) -> tuple[dict[str, str], bool]:
    """What this server offers, as reported by `kefu db status` and /readyz."""
    version = conn.execute("SHOW server_version").fetchone()[0]
    ext = dict(conn.execute(
        "SELECT extname, extversion FROM pg_extension WHERE extname IN ('timescaledb', 'pg_trgm')").fetchall())
    avail = dict(conn.execute(
        "SELECT name, default_version FROM pg_available_extensions WHERE name IN ('timescaledb', 'pg_trgm')").fetchall())
    hyper = False
    if "timescaledb" in ext:  # tables already converted stay hypertables whatever the setting
        hyper = conn.execute(
            "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_schema = current_schema() "
            "AND hypertable_name = 'chat_messages'").fetchone()[0] > 0
    if not use_timescale and not hyper and "timescaledb" in (ext | avail):
        ts = "off (storage.timescaledb = false); plain tables, date_bin"
    elif "timescaledb" in ext:
        ts = f"installed {ext['timescaledb']}" + ("; hypertables, compression, continuous aggregate, time_bucket"
                                                   if hyper else "; tables not converted yet: run `kefu db upgrade`")
    elif "timescaledb" in avail:
        ts = f"available {avail['timescaledb']}, not installed; plain tables, date_bin"
    else:
        ts = "absent; plain tables, date_bin"
    index = conn.execute("SELECT to_regclass('chat_messages_search')").fetchone()[0]
    if "pg_trgm" in ext:
        trgm = f"installed {ext['pg_trgm']}" + ("; trigram GIN index on transcripts" if index else
                                                "; no index in this schema yet: run `kefu db upgrade`")
    elif "pg_trgm" in avail:
        trgm = f"available {avail['pg_trgm']}, not installed; search by sequential scan"
    else:
        trgm = "absent; search by sequential scan"
    schema = conn.execute("SELECT current_schema()").fetchone()[0]
    return {"postgres": version, "schema": schema or "", "timescaledb": ts, "pg_trgm": trgm}, hyper


async def upgrade(dsn: str, schema: str = "public") -> list[str]:
    """Run pending migrations (`kefu db upgrade`)."""
    def run():
        kw = conn_kwargs(schema)
        with psycopg.connect(dsn, **kw) as conn:
            with conn.transaction():
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            return migrate.upgrade_postgres(conn)

    return await trio.to_thread.run_sync(run)
