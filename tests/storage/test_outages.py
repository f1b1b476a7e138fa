"""The database goes away: kefu stops acknowledging, says why in health(), buffers within a
bound, and recovers when the database returns. Nothing it acknowledged is lost.

SQLite: a lock held by another process, and a full database (SQLITE_FULL through
max_page_count, the same error a full disk gives). PostgreSQL: the server disappears
behind a TCP proxy this test starts and stops (the machine's PostgreSQL itself is never
stopped), and a killed backend connection.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import psycopg
import pytest
import trio
import trio.testing

from kefu.storage import StorageUnavailable, StoredMessage, open_store


async def _publish_into(store, acked: list, payload: bytes) -> None:
    acked.append(await store.persist_publish(StoredMessage("t", payload), [("sub", 1)]))


async def test_sqlite_locked_by_another_process(sqlite_cfg, master):
    cfg = replace(sqlite_cfg, sqlite_busy_timeout_ms=50)
    async with open_store(cfg, master=master, background=False) as store:
        blocker = sqlite3.connect(cfg.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process takes the write lock
        acked: list = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_publish_into, store, acked, b"during")
            await store.wait_ready(False)
            h = store.health()
            assert not h.ready and "locked" in h.reason and h.pending == 1
            assert acked == []  # not acknowledged while it cannot commit
            blocker.execute("COMMIT")
            await store.wait_ready(True)
        assert len(acked) == 1
        assert [q.message.payload for q in await store.load_queue("sub")] == [b"during"]
        blocker.close()


async def test_sqlite_full_database(sqlite_cfg, master):
    async with open_store(sqlite_cfg, master=master, background=False) as store:
        await store.persist_publish(StoredMessage("t", b"before"))
        conn = store.writer_conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")  # the file cannot grow: SQLITE_FULL
        acked: list = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_publish_into, store, acked, b"x" * 100_000)
            await store.wait_ready(False)
            assert "full" in store.health().reason and acked == []
            await trio.to_thread.run_sync(conn.execute, "PRAGMA max_page_count = 1073741823")  # space freed
            await store.wait_ready(True)
        assert len(acked) == 1 and await store.count_messages() == 2


async def test_buffer_is_bounded_while_unavailable(sqlite_cfg, master):
    cfg = replace(sqlite_cfg, sqlite_busy_timeout_ms=20, max_pending=5)
    async with open_store(cfg, master=master, background=False) as store:
        blocker = sqlite3.connect(cfg.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        acked: list = []
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(_publish_into, store, acked, bytes([i]))
            await store.wait_ready(False)
            await trio.testing.wait_all_tasks_blocked()
            assert store.health().pending == 5
            with pytest.raises(StorageUnavailable, match="locked.*5 operations already buffered"):
                await store.persist_publish(StoredMessage("t", b"refused"))
            blocker.execute("COMMIT")
            await store.wait_ready(True)
        assert len(set(acked)) == 5
        payloads = sorted(q.message.payload for q in await store.load_queue("sub"))
        assert payloads == [bytes([i]) for i in range(5)]  # everything buffered committed; "refused" never was
        blocker.close()


async def test_commit_timeout_then_late_commit(sqlite_cfg, master):
    cfg = replace(sqlite_cfg, sqlite_busy_timeout_ms=20, commit_timeout=1.0)
    async with open_store(cfg, master=master, background=False) as store:
        blocker = sqlite3.connect(cfg.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StorageUnavailable, match=r"not committed within 1 s: sqlite: .*locked"):
            await store.persist_publish(StoredMessage("t", b"late"))
        blocker.execute("COMMIT")
        await store.wait_ready(True)
        await store.persist_publish(StoredMessage("t", b"next"))
        # the timed-out write was not acknowledged, but it was kept and committed (at least once)
        assert await store.count_messages() == 2
        blocker.close()


# ----------------------------------------------------------------------------- PostgreSQL


class Proxy:
    """A TCP proxy to PostgreSQL that a test can take down (closing every connection) and
    bring back on the same port: to kefu it is the database server going away."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._scope: trio.CancelScope | None = None

    async def _pipe(self, src, dst) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _handle(self, client) -> None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return
        async with client, upstream, trio.open_nursery() as n:
            n.start_soon(self._pipe, client, upstream)
            n.start_soon(self._pipe, upstream, client)

    async def _serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()
            await trio.serve_listeners(self._handle, listeners)

    async def start(self, nursery) -> None:
        await nursery.start(self._serve)

    def stop(self) -> None:
        self._scope.cancel()


async def test_postgres_goes_away_and_returns(pg_cfg, master):
    target = psycopg.conninfo.conninfo_to_dict(pg_cfg.dsn)
    async with trio.open_nursery() as nursery:
        proxy = Proxy(int(target.get("port", 5432)))
        await proxy.start(nursery)
        dsn = psycopg.conninfo.make_conninfo(pg_cfg.dsn, host="127.0.0.1", port=proxy.port)
        async with open_store(replace(pg_cfg, dsn=dsn, commit_timeout=60.0), master=master,
                              background=False) as store:
            await store.persist_publish(StoredMessage("t", b"before"), [("sub", 1)])
            store.read_timeout = 0.5
            proxy.stop()  # the server is gone: connections cut, new ones refused
            acked: list = []
            async with trio.open_nursery() as inner:
                inner.start_soon(_publish_into, store, acked, b"during")
                await store.wait_ready(False)
                assert store.health().reason.startswith("postgres:") and acked == []
                with pytest.raises(StorageUnavailable):
                    await store.load_queue("sub")  # reads say so too
                await proxy.start(nursery)  # the server is back, same address
                await store.wait_ready(True)
            assert len(acked) == 1
            assert [q.message.payload for q in await store.load_queue("sub")] == [b"before", b"during"]
        proxy.stop()


async def test_postgres_backend_killed_reconnects_without_losing_the_write(pg_cfg, master):
    async with open_store(pg_cfg, master=master, background=False) as store:
        pid = await store.run_in_writer(lambda cur: cur.connection.info.backend_pid)
        with psycopg.connect(pg_cfg.dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        mid = await store.persist_publish(StoredMessage("t", b"after-kill"), [("sub", 1)])
        assert [q.message.id for q in await store.load_queue("sub")] == [mid]
        assert store.health().ready


async def test_closing_during_an_outage_fails_the_buffered_writes_promptly(sqlite_cfg):
    from kefu.storage import make_store

    cfg = replace(sqlite_cfg, sqlite_busy_timeout_ms=20, encrypt_at_rest=False, commit_timeout=0.4)
    store = make_store(cfg)
    await store.open()
    blocker = sqlite3.connect(cfg.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    errors: list = []

    async def publish(i):
        try:
            await store.persist_publish(StoredMessage("t", bytes([i])))
        except StorageUnavailable as e:
            errors.append(e)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(publish, i)
            await store.wait_ready(False)
            await trio.testing.wait_all_tasks_blocked()
            await store.close()  # shutdown while the file stays locked
    # every caller is told (by its commit timeout or by the shutdown), and close() returned
    assert len(errors) == 30
    assert all("shutting down" in str(e) or "not committed within 0.4 s" in str(e) for e in errors)
    assert store.stats()["committed_ops"] == 0
    blocker.execute("ROLLBACK")
    blocker.close()
