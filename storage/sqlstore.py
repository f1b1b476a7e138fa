"""The Store implementation shared by SQLite and PostgreSQL.

One set of SQL with two small macros serves both engines:

* ``?`` placeholders become ``%s`` for psycopg;
* ``TS(?)`` is a timestamp parameter (``to_timestamp(%s)`` on PostgreSQL, where the
  time-ordered tables use timestamptz for TimescaleDB), ``EPOCH(col)`` reads one back
  as float seconds; on SQLite both are the bare value (REAL seconds);
* ``GREATEST(`` is SQLite's two-argument ``MAX(``.

Writes are *handlers* run by the group-commit writer thread (``storage.writer``) on a
batch of same-kind operations; reads run on reader connections in worker threads. The
engine modules add what differs: connections, error classification, the bulk insert of
MQTT messages (COPY on PostgreSQL), transcript search and time bucketing.

SM4 work (at-rest encryption of chat message bodies and contact personal data) happens
on the trio side before a write is queued and after a read returns, so the writer
thread only moves bytes.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from typing import Any, Callable, Sequence

from .base import (
    AuditEntry, ChatMessage, Contact, Conversation, Health, MetricBucket, MetricSample, QueuedMessage,
    SearchHit, SearchUnavailable, SessionRecord, StaleFence, StorageUnavailable, StoredMessage,
    SubscriptionRecord, Ticket,
)
from .crypto import KeyRecord, Keyring
from .writer import Writer

NEVER_EXPIRES = 0xFFFFFFFF
MQTT_LOG_SECONDS = 60.0  # delivered / unaddressed MQTT messages: kept this long, then pruned (storage.mqtt_log_seconds)
BODY_CTX = b"chat_messages.body"
PII_CTX = b"contacts.pii"
RECORD_CTX = b"desk_records.record"
PRUNE_BATCH = 5000


def _json(v) -> str:
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def translate(sql: str, dialect: str) -> str:
    if dialect == "sqlite":
        sql = sql.replace("TS(?)", "?").replace("GREATEST(", "MAX(")
        return re.sub(r"EPOCH\(([\w.]+)\)", r"\1", sql)
    sql = sql.replace("TS(?)", "to_timestamp(?)")
    sql = re.sub(r"EPOCH\(([\w.]+)\)", r"extract(epoch from \1)::float8", sql)
    return sql.replace("?", "%s")


def _subs_json(subs: Sequence[SubscriptionRecord]) -> str:
    return _json([[s.topic_filter, s.qos, int(s.no_local), int(s.retain_as_published), s.retain_handling,
                   s.subscription_id] for s in subs])


def _subs_from(text: str) -> tuple[SubscriptionRecord, ...]:
    return tuple(SubscriptionRecord(f, q, bool(nl), bool(rap), rh, sid) for f, q, nl, rap, rh, sid in json.loads(text))


def make_snippet(body: str, terms: list[str], width: int = 40) -> str:
    low = body.casefold()
    for t in terms:
        i = low.find(t.casefold())
        if i >= 0:
            a, b = max(0, i - width), min(len(body), i + len(t) + width)
            return ("…" if a else "") + body[a:i] + "[" + body[i:i + len(t)] + "]" + body[i + len(t):b] + ("…" if b < len(body) else "")
    return body[: 2 * width]


def like_escape(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class SqlStore:
    """Everything both SQL engines share. Subclasses set ``dialect`` and the hooks below."""

    dialect = "sqlite"
    backend = "sqlite"

    def __init__(self, cfg, keyring: Keyring | None = None) -> None:
        self.cfg = cfg
        self.keyring = keyring
        self.features: dict[str, str] = {}
        self._w: Writer | None = None
        self._sql: dict[str, str] = {}
        self.encrypt = bool(getattr(cfg, "encrypt_at_rest", False))
        self.search_index = bool(getattr(cfg, "search_index", True))
        self.ack_after_commit = bool(getattr(cfg, "ack_after_commit", True))

    # ------------------------------------------------------------ hooks for the engines

    def _writer_kwargs(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    async def _read(self, fn: Callable[[Any], Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _insert_messages(self, conn, msgs: list[StoredMessage], now: float) -> list[int]:  # pragma: no cover
        raise NotImplementedError

    def _insert_queue(self, conn, rows: list[tuple[str, int, int, int | None, str]]) -> None:
        conn.executemany(self.q(
            "INSERT INTO mqtt_queue (client_id, message_id, qos, packet_id, state) VALUES (?, ?, ?, ?, ?)"), rows)

    def _index_message(self, conn, msg_id: int, text: str) -> None:
        pass

    def _search_rows(self, conn, terms: list[str], conv: str | None, limit: int) -> list:  # pragma: no cover
        raise NotImplementedError

    def _bucket_rows(self, conn, name, start, end, bucket_s, labels) -> list:  # pragma: no cover
        raise NotImplementedError

    def _prune_extra(self, conn, now: float) -> dict[str, int]:
        return {}

    # ------------------------------------------------------------ lifecycle

    def q(self, sql: str) -> str:
        out = self._sql.get(sql)
        if out is None:
            out = self._sql[sql] = translate(sql, self.dialect)
        return out

    def handlers(self) -> dict[str, Callable]:
        return {
            "publish": self._h_publish, "publish_many": self._h_publish_many, "mark_sent": self._h_mark_sent, "pubrec": self._h_pubrec,
            "ack": self._h_ack, "release": self._h_release, "session": self._h_session,
            "del_session": self._h_del_session, "expire": self._h_expire, "conversation": self._h_conversation,
            "chat": self._h_chat, "ticket": self._h_ticket, "contact": self._h_contact, "audit": self._h_audit,
            "metrics": self._h_metrics, "key": self._h_key, "key_state": self._h_key_state,
            "tx_next": self._h_tx_next, "rx_high": self._h_rx_high, "reencrypt": self._h_reencrypt,
            "prune": self._h_prune, "call": self._h_call, "broker": self._h_broker, "desk": self._h_desk,
        }

    async def _start_writer(self) -> None:
        self._w = Writer(self.backend, handlers=self.handlers(), **self._writer_kwargs())
        await self._w.start()

    async def _stop_writer(self) -> None:
        if self._w is not None:
            await self._w.stop()

    def health(self) -> Health:
        if self._w is None:
            return Health(False, self.backend, "not open")
        return self._w.health(self.backend, self.features)

    def stats(self) -> dict[str, int]:
        """Writer counters for metrics: commits, operations committed, operations waiting."""
        w = self._w
        if w is None:
            return {"commits": 0, "committed_ops": 0, "pending": 0}
        return {"commits": w.committed_batches, "committed_ops": w.committed_ops, "pending": w.pending}

    async def wait_ready(self, ready: bool = True) -> None:
        """Return once ``health().ready`` equals ``ready``."""
        if self._w is None:
            raise StorageUnavailable(f"{self.backend} store is not open")
        await self._w.wait_ready(ready)

    async def _submit(self, kind: str, args, wait: bool = True):
        if self._w is None:
            raise StorageUnavailable(f"{self.backend} store is not open")
        return await self._w.submit(kind, args, wait=wait)

    async def run_in_writer(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(conn)`` inside the writer's next transaction (tests, maintenance)."""
        return await self._submit("call", fn)

    # ------------------------------------------------------------ encryption helpers (trio side)

    def _seal(self, data: bytes, ctx: bytes) -> tuple[bytes, int | None]:
        if not self.encrypt:
            return data, None
        if self.keyring is None:
            raise StorageUnavailable("storage.encrypt_at_rest is on but no master key is loaded")
        blob = self.keyring.encrypt_field(data, ctx)
        return blob, Keyring.key_id_of(blob)

    def _unseal(self, data: bytes, key_id: int | None, ctx: bytes) -> bytes:
        if key_id is None:
            return bytes(data)
        if self.keyring is None:
            raise StorageUnavailable("this row is encrypted (key %d) but no master key is loaded" % key_id)
        return self.keyring.decrypt_field(bytes(data), ctx)

    # ------------------------------------------------------------ MQTT: writes

    async def persist_publish(self, message: StoredMessage, recipients: Sequence[tuple[str, int]] = (), *,
                              inbound: tuple[str, int] | None = None, replay: tuple[int, int] | None = None,
                              wait: bool | None = None) -> int | None:
        w = self.ack_after_commit if wait is None else wait
        return await self._submit("publish", (message, tuple(recipients), inbound, replay), wait=w)

    def _h_publish(self, conn, batch: list) -> list:
        now = time.time()
        results: list = [None] * len(batch)
        todo = []
        for i, (msg, recipients, inbound, replay) in enumerate(batch):
            if inbound is not None:
                row = conn.execute(self.q("SELECT message_id FROM mqtt_inbound WHERE client_id = ? AND packet_id = ?"),
                                   inbound).fetchone()
                if row is not None:  # QoS 2 redelivery of a message already stored
                    results[i] = int(row[0])
                    continue
            todo.append(i)
        if not todo:
            return results
        ids = self._insert_messages(conn, [batch[i][0] for i in todo], now)
        queue_rows, inbound_rows, replays = [], [], []
        for i, mid in zip(todo, ids):
            msg, recipients, inbound, replay = batch[i]
            results[i] = mid
            for r in recipients:  # (client, qos) queued, or (client, qos, packet id, state) already sent
                queue_rows.append((r[0], mid, r[1], None, "queued") if len(r) == 2 else (r[0], mid, r[1], r[2], r[3]))
            if inbound is not None:
                inbound_rows.append((inbound[0], inbound[1], mid, now))
            if replay is not None:
                replays.append((replay[1], replay[0]))
            if msg.retain:
                if msg.payload:
                    conn.execute(self.q(
                        "INSERT INTO mqtt_retained (topic, payload, qos, properties, sender, created_at, expires_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (topic) DO UPDATE SET payload = excluded.payload, "
                        "qos = excluded.qos, properties = excluded.properties, sender = excluded.sender, "
                        "created_at = excluded.created_at, expires_at = excluded.expires_at"),
                        (msg.topic, msg.payload, msg.qos, msg.properties, msg.sender, msg.created_at or now,
                         msg.expires_at))
                else:
                    conn.execute(self.q("DELETE FROM mqtt_retained WHERE topic = ?"), (msg.topic,))
        if queue_rows:
            self._insert_queue(conn, queue_rows)
        if inbound_rows:
            conn.executemany(self.q(
                "INSERT INTO mqtt_inbound (client_id, packet_id, message_id, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (client_id, packet_id) DO NOTHING"), inbound_rows)
        if replays:
            conn.executemany(self.q("UPDATE keys SET rx_high = GREATEST(rx_high, ?) WHERE key_id = ?"), replays)
        return results

    async def persist_many(self, items: Sequence[tuple]) -> list[int]:
        """Several ``(message, recipients, inbound, replay)`` as one operation (same commit),
        in order: what one persister task in the broker submits per wake-up."""
        return await self._submit("publish_many", [(m, tuple(r), i, rp) for m, r, i, rp in items])

    def _h_publish_many(self, conn, batch: list[list]) -> list:
        flat = [x for items in batch for x in items]
        ids = self._h_publish(conn, flat) if flat else []
        out, k = [], 0
        for items in batch:
            out.append(ids[k:k + len(items)])
            k += len(items)
        return out

    # The broker's ordered log (kefu.broker.persist): one operation per persister wake-up.
    # Entries are applied in order in one transaction; a publish entry stores its id in
    # ``ref.id`` (``ref`` is any object with an ``id`` attribute) in the writer thread, so a
    # later "sent" entry (same batch or a later one) can name the message by that ref.
    B_PUBLISH, B_SENT, B_PUBREC, B_ACK, B_RELEASE, B_SESSION, B_DEL_SESSION, B_RX_HIGH, B_DROP = range(9)

    async def broker_batch(self, entries: list[tuple]) -> None:
        """Apply the broker's log in order, awaiting the commit. Entry shapes:
        (B_PUBLISH, StoredMessage, recipients, inbound, replay, ref), (B_SENT, client, ref, packet id),
        (B_PUBREC | B_ACK | B_RELEASE, client, packet id), (B_SESSION, SessionRecord),
        (B_DEL_SESSION, client), (B_RX_HIGH, key id, counter), (B_DROP, client, ref)."""
        await self._submit("broker", entries)

    def _h_broker(self, conn, batch: list[list[tuple]]) -> list:
        flat = [e for entries in batch for e in entries]
        i, n = 0, len(flat)
        while i < n:
            kind = flat[i][0]
            j = i + 1
            while j < n and flat[j][0] == kind:
                j += 1
            run = flat[i:j]
            if kind == 0:
                ids = self._h_publish(conn, [(e[1], e[2], e[3], e[4]) for e in run])
                for e, mid in zip(run, ids):
                    e[5].id = mid
            elif kind == 1:
                self._h_mark_sent(conn, [(e[3], e[1], e[2].id) for e in run])
            elif kind == 2:
                self._h_pubrec(conn, [(e[1], e[2]) for e in run])
            elif kind == 3:
                self._h_ack(conn, [(e[1], e[2]) for e in run])
            elif kind == 4:
                self._h_release(conn, [(e[1], e[2]) for e in run])
            elif kind == 5:
                self._h_session(conn, [e[1] for e in run])
            elif kind == 6:
                self._h_del_session(conn, [e[1] for e in run])
            elif kind == 7:
                self._h_rx_high(conn, [(e[2], e[1]) for e in run])
            elif kind == 8:
                conn.executemany(self.q(
                    "DELETE FROM mqtt_queue WHERE seq = (SELECT min(seq) FROM mqtt_queue WHERE client_id = ? "
                    "AND message_id = ? AND state = 'queued')"), [(e[1], e[2].id) for e in run])
            else:
                raise ValueError(f"unknown broker log entry kind {kind!r}")
            i = j
        return [None] * len(batch)

    async def mark_sent(self, client_id: str, message_id: int, packet_id: int) -> None:
        await self._submit("mark_sent", (packet_id, client_id, message_id), wait=False)

    def _h_mark_sent(self, conn, batch):
        conn.executemany(self.q(
            "UPDATE mqtt_queue SET packet_id = ?, state = 'sent' WHERE seq = (SELECT min(seq) FROM mqtt_queue "
            "WHERE client_id = ? AND message_id = ? AND state = 'queued')"), batch)
        return [None] * len(batch)

    async def mark_pubrec(self, client_id: str, packet_id: int) -> None:
        await self._submit("pubrec", (client_id, packet_id), wait=False)

    def _h_pubrec(self, conn, batch):
        conn.executemany(self.q("UPDATE mqtt_queue SET state = 'pubrec' WHERE client_id = ? AND packet_id = ?"), batch)
        return [None] * len(batch)

    async def ack_delivery(self, client_id: str, packet_id: int) -> None:
        await self._submit("ack", (client_id, packet_id), wait=False)

    def _h_ack(self, conn, batch):
        conn.executemany(self.q("DELETE FROM mqtt_queue WHERE client_id = ? AND packet_id = ?"), batch)
        return [None] * len(batch)

    async def release_inbound(self, client_id: str, packet_id: int) -> None:
        await self._submit("release", (client_id, packet_id), wait=False)

    def _h_release(self, conn, batch):
        conn.executemany(self.q("DELETE FROM mqtt_inbound WHERE client_id = ? AND packet_id = ?"), batch)
        return [None] * len(batch)

    async def save_session(self, session: SessionRecord) -> None:
        await self._submit("session", session)

    def _h_session(self, conn, batch: list[SessionRecord]):
        now = time.time()
        conn.executemany(self.q(
            "INSERT INTO mqtt_sessions (client_id, protocol_level, expiry_interval, subscriptions, connected, "
            "disconnected_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (client_id) DO UPDATE SET "
            "protocol_level = excluded.protocol_level, expiry_interval = excluded.expiry_interval, "
            "subscriptions = excluded.subscriptions, connected = excluded.connected, "
            "disconnected_at = excluded.disconnected_at, updated_at = excluded.updated_at"),
            [(s.client_id, s.protocol_level, s.expiry_interval, _subs_json(s.subscriptions), int(s.connected),
              s.disconnected_at, s.updated_at or now) for s in batch])
        return [None] * len(batch)

    async def delete_session(self, client_id: str) -> None:
        await self._submit("del_session", client_id)

    def _h_del_session(self, conn, batch: list[str]):
        rows = [(c,) for c in batch]
        for table in ("mqtt_sessions", "mqtt_queue", "mqtt_inbound"):
            conn.executemany(self.q(f"DELETE FROM {table} WHERE client_id = ?"), rows)
        return [None] * len(batch)

    async def expire_sessions(self, now: float) -> int:
        return await self._submit("expire", now)

    def _h_expire(self, conn, batch: list[float]):
        out = []
        for now in batch:
            ids = [r[0] for r in conn.execute(self.q(
                "SELECT client_id FROM mqtt_sessions WHERE connected = 0 AND expiry_interval <> ? "
                "AND disconnected_at + expiry_interval <= ?"), (NEVER_EXPIRES, now)).fetchall()]
            self._h_del_session(conn, ids)
            out.append(len(ids))
        return out

    # ------------------------------------------------------------ MQTT: reads

    async def load_session(self, client_id: str) -> SessionRecord | None:
        rows = await self._read(lambda c: c.execute(self.q(
            "SELECT client_id, protocol_level, expiry_interval, subscriptions, connected, disconnected_at, updated_at "
            "FROM mqtt_sessions WHERE client_id = ?"), (client_id,)).fetchall())
        return self._session(rows[0]) if rows else None

    async def load_sessions(self) -> list[SessionRecord]:
        rows = await self._read(lambda c: c.execute(self.q(
            "SELECT client_id, protocol_level, expiry_interval, subscriptions, connected, disconnected_at, updated_at "
            "FROM mqtt_sessions ORDER BY client_id")).fetchall())
        return [self._session(r) for r in rows]

    @staticmethod
    def _session(r) -> SessionRecord:
        return SessionRecord(r[0], int(r[1]), int(r[2]), _subs_from(r[3]), bool(r[4]), r[5], float(r[6]))

    async def load_queue(self, client_id: str, limit: int = 1000) -> list[QueuedMessage]:
        rows = await self._read(lambda c: c.execute(self.q(
            "SELECT q.seq, q.qos, q.packet_id, q.state, m.id, m.topic, m.payload, m.qos, m.retain, m.properties, "
            "m.sender, m.created_at, m.expires_at FROM mqtt_queue q JOIN mqtt_messages m ON m.id = q.message_id "
            "WHERE q.client_id = ? ORDER BY CASE WHEN q.state = 'queued' THEN 1 ELSE 0 END, q.seq LIMIT ?"),
            (client_id, limit)).fetchall())
        return [QueuedMessage(client_id, StoredMessage(r[5], bytes(r[6]), int(r[7]), bool(r[8]), bytes(r[9]), r[10],
                                                       float(r[11]), r[12], int(r[4])),
                              int(r[1]), r[2], r[3], int(r[0])) for r in rows]

    async def load_retained(self) -> list[StoredMessage]:
        now = time.time()
        rows = await self._read(lambda c: c.execute(self.q(
            "SELECT topic, payload, qos, properties, sender, created_at, expires_at FROM mqtt_retained "
            "WHERE expires_at IS NULL OR expires_at > ? ORDER BY topic"), (now,)).fetchall())
        return [StoredMessage(r[0], bytes(r[1]), int(r[2]), True, bytes(r[3]), r[4], float(r[5]), r[6]) for r in rows]

    async def inbound_pending(self, client_id: str) -> list[int]:
        rows = await self._read(lambda c: c.execute(self.q(
            "SELECT packet_id FROM mqtt_inbound WHERE client_id = ? ORDER BY packet_id"), (client_id,)).fetchall())
        return [int(r[0]) for r in rows]

    async def count_messages(self) -> int:
        return (await self._read(lambda c: c.execute("SELECT count(*) FROM mqtt_messages").fetchone()))[0]

    # ------------------------------------------------------------ conversations

    async def save_conversation(self, conv: Conversation, *, fence: int | None = None) -> None:
        now = time.time()
        conv = replace(conv, created_at=conv.created_at or now, updated_at=conv.updated_at or now)
        await self._submit("conversation", (conv, fence))

    _CONV_UPSERT = (
        "INSERT INTO conversations (id, contact_id, channel, state, assigned_agent, priority, subject, created_at, "
        "updated_at, closed_at, meta, fence) VALUES (?, ?, ?, ?, ?, ?, ?, TS(?), TS(?), TS(?), ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET contact_id = excluded.contact_id, channel = excluded.channel, "
        "state = excluded.state, assigned_agent = excluded.assigned_agent, priority = excluded.priority, "
        "subject = excluded.subject, updated_at = excluded.updated_at, closed_at = excluded.closed_at, "
        "meta = excluded.meta, fence = GREATEST(conversations.fence, excluded.fence)"
    )

    def _h_conversation(self, conn, batch):
        out = []
        for conv, fence in batch:
            sql = self._CONV_UPSERT + (" WHERE conversations.fence <= excluded.fence" if fence is not None else "")
            cur = conn.execute(self.q(sql), (
                conv.id, conv.contact_id, conv.channel, conv.state, conv.assigned_agent, conv.priority, conv.subject,
                conv.created_at, conv.updated_at, conv.closed_at, _json(conv.meta), fence or 0))
            if fence is not None and cur.rowcount == 0:
                stored = conn.execute(self.q("SELECT fence FROM conversations WHERE id = ?"), (conv.id,)).fetchone()
                out.append(StaleFence(f"conversation {conv.id}: fencing token {fence} is older than {stored[0]}"))
            else:
                out.append(None)
        return out

    _CONV_COLS = ("id, contact_id, channel, state, assigned_agent, priority, subject, EPOCH(created_at), "
                  "EPOCH(updated_at), EPOCH(closed_at), meta, fence")

    @staticmethod
    def _conv(r) -> Conversation:
        return Conversation(r[0], r[1], r[2], r[3], r[4], int(r[5]), r[6], float(r[7]), float(r[8]),
                            None if r[9] is None else float(r[9]), json.loads(r[10]), int(r[11]))

    async def get_conversation(self, conv_id: str) -> Conversation | None:
        rows = await self._read(lambda c: c.execute(self.q(
            f"SELECT {self._CONV_COLS} FROM conversations WHERE id = ?"), (conv_id,)).fetchall())
        return self._conv(rows[0]) if rows else None

    async def list_conversations(self, *, state: str | None = None, contact_id: str | None = None,
                                 limit: int = 100) -> list[Conversation]:
        where, params = [], []
        if state is not None:
            where.append("state = ?")
            params.append(state)
        if contact_id is not None:
            where.append("contact_id = ?")
            params.append(contact_id)
        sql = f"SELECT {self._CONV_COLS} FROM conversations" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY updated_at DESC LIMIT ?"
        rows = await self._read(lambda c: c.execute(self.q(sql), (*params, limit)).fetchall())
        return [self._conv(r) for r in rows]

    async def max_numbered_id(self, table: str, prefix: str) -> int:
        """The largest N among ids ``<prefix>N`` in ``table`` (conversations, tickets); 0 if none.

        The desk numbers conversations and tickets from its live state; after a restart it
        continues from here so a new conversation never reuses a stored one's id."""
        if table not in ("conversations", "tickets"):
            raise ValueError(f"no numbered ids in {table!r}")
        start = len(prefix) + 1
        if self.dialect == "postgres":
            sql = (f"SELECT MAX(CAST(substr(id, {start}) AS BIGINT)) FROM {table} "
                   f"WHERE id ~ ?")
            arg = "^" + prefix.replace("-", "\\-") + "[0-9]+$"
        else:
            sql = (f"SELECT MAX(CAST(substr(id, {start}) AS INTEGER)) FROM {table} "
                   f"WHERE id GLOB ?")
            arg = prefix + "[0-9]*"
        row = await self._read(lambda c: c.execute(self.q(sql), (arg,)).fetchone())
        return int(row[0] or 0) if row else 0

    # ------------------------------------------------------------ the desk's record
    #
    # The desk (kefu/record.py) queues its writes here without waiting, in the order it
    # made them, and waits for the last one before it acknowledges anything to a user:
    # the writer commits in queue order, so that one wait covers them all (group commit).

    async def queue_write(self, kind: str, args) -> Any:
        """Queue one write without waiting; returns a handle for ``wait_written``."""
        if self._w is None:
            raise StorageUnavailable(f"{self.backend} store is not open")
        return await self._w.enqueue(kind, args)

    def queue_write_nowait(self, kind: str, args) -> Any:
        """``queue_write`` from synchronous code (no back-pressure)."""
        if self._w is None:
            raise StorageUnavailable(f"{self.backend} store is not open")
        return self._w.enqueue_nowait(kind, args)

    def desk_record_delete_row(self, kind: str, rid: str) -> tuple:
        return ("record_delete", kind, rid)

    async def wait_written(self, handle) -> Any:
        """Wait until a queued write (and so every write queued before it) is committed;
        raises its error, or StorageUnavailable when it could not be committed in time."""
        return await self._w.wait(handle)

    def desk_conversation_row(self, c: dict, version: int) -> tuple:
        """Row for one conversation (``c``: the desk record's dict)."""
        closed = c["updated_at"] if c["status"] == "closed" else None
        meta = {"thread": c["thread"], "team": c.get("team"), "labels": c.get("labels", []), "csat": c.get("csat"),
                "ticket_id": c.get("ticket_id"), "handoff_reason": c.get("handoff_reason")}
        return ("conversation", c["id"], c["customer_id"], c["channel"], c["status"], c.get("assignee"),
                int(c.get("priority", 2)), c.get("intent") or "", c["created_at"], c["updated_at"], closed,
                _json(meta), version, _json(c))

    def desk_ticket_row(self, t: dict, version: int) -> tuple:
        fields = {k: v for k, v in t.items() if k not in ("id", "title", "status", "priority", "conv_id",
                                                          "customer_id", "assignee", "created_at", "updated_at",
                                                          "version")}
        return ("ticket", t["id"], t.get("conv_id"), t.get("customer_id"), t["title"], t["status"],
                int(t["priority"]), t.get("assignee"), t["created_at"], t["updated_at"], _json(fields), version,
                _json(t))

    def desk_contact_row(self, c: dict, version: int) -> tuple:
        """Contacts' personal data (everything but id and times) is sealed when encryption is on."""
        pii = {k: v for k, v in c.items() if k not in ("id", "created_at", "updated_at", "version")}
        blob, key_id = self._seal(_json(pii).encode(), PII_CTX)
        now = time.time()
        return ("contact", c["id"], None, blob, key_id, c.get("created_at") or now, c.get("updated_at") or now,
                version)

    def desk_record_row(self, kind: str, rid: str, version: int, record: dict, *, secret: bool = False) -> tuple:
        """Any other desk record (agent, webhook, setting); ``secret`` ones are sealed."""
        data = _json(record).encode()
        blob, key_id = self._seal(data, RECORD_CTX) if secret else (data, None)
        return ("record", kind, rid, version, blob, key_id, time.time())

    def _h_desk(self, conn, batch: list[list[tuple]]):
        rows: dict[str, list] = {"conversation": [], "ticket": [], "contact": [], "record": []}
        for r in (r for rs in batch for r in rs):
            if r[0] == "record_delete":  # in order with the record rows around it
                if rows["record"]:
                    self._h_desk(conn, [[("record", *x) for x in rows["record"]]])
                    rows["record"] = []
                conn.execute(self.q("DELETE FROM desk_records WHERE kind = ? AND id = ?"), r[1:])
                continue
            rows[r[0]].append(r[1:])
        if rows["conversation"]:
            conn.executemany(self.q(
                "INSERT INTO conversations (id, contact_id, channel, state, assigned_agent, priority, subject, "
                "created_at, updated_at, closed_at, meta, version, record) VALUES (?, ?, ?, ?, ?, ?, ?, TS(?), TS(?), "
                "TS(?), ?, ?, ?) ON CONFLICT (id) DO UPDATE SET contact_id = excluded.contact_id, "
                "channel = excluded.channel, state = excluded.state, assigned_agent = excluded.assigned_agent, "
                "priority = excluded.priority, subject = excluded.subject, updated_at = excluded.updated_at, "
                "closed_at = excluded.closed_at, meta = excluded.meta, version = excluded.version, "
                "record = excluded.record WHERE excluded.version > conversations.version"), rows["conversation"])
        if rows["ticket"]:
            conn.executemany(self.q(
                "INSERT INTO tickets (id, conversation_id, contact_id, subject, status, priority, assignee, "
                "created_at, updated_at, fields, version, record) VALUES (?, ?, ?, ?, ?, ?, ?, TS(?), TS(?), ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET conversation_id = excluded.conversation_id, "
                "contact_id = excluded.contact_id, subject = excluded.subject, status = excluded.status, "
                "priority = excluded.priority, assignee = excluded.assignee, updated_at = excluded.updated_at, "
                "fields = excluded.fields, version = excluded.version, record = excluded.record "
                "WHERE excluded.version > tickets.version"), rows["ticket"])
        if rows["contact"]:
            conn.executemany(self.q(
                "INSERT INTO contacts (id, external_id, pii, key_id, created_at, updated_at, version) "
                "VALUES (?, ?, ?, ?, TS(?), TS(?), ?) ON CONFLICT (id) DO UPDATE SET pii = excluded.pii, "
                "key_id = excluded.key_id, updated_at = excluded.updated_at, version = excluded.version "
                "WHERE excluded.version > contacts.version"), rows["contact"])
        if rows["record"]:
            conn.executemany(self.q(
                "INSERT INTO desk_records (kind, id, version, record, key_id, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (kind, id) DO UPDATE SET version = excluded.version, record = excluded.record, "
                "key_id = excluded.key_id, updated_at = excluded.updated_at "
                "WHERE excluded.version > desk_records.version"), rows["record"])
        return [None] * len(batch)

    async def load_desk(self) -> dict[str, list]:
        """Everything the desk keeps, to rebuild it at start: {"conversation": [(version, record dict or
        None, legacy row)], "ticket": [...], "contact": [(version, dict)], kind: [(id, version, dict)]}."""
        def read(c):
            convs = c.execute(self.q(
                "SELECT version, record, id, contact_id, channel, state, assigned_agent, priority, subject, "
                "EPOCH(created_at), EPOCH(updated_at), meta FROM conversations")).fetchall()
            tickets = c.execute(self.q(
                "SELECT version, record, id, conversation_id, contact_id, subject, status, priority, assignee, "
                "EPOCH(created_at), EPOCH(updated_at), fields FROM tickets")).fetchall()
            contacts = c.execute(self.q(
                "SELECT version, id, pii, key_id, EPOCH(created_at), EPOCH(updated_at) FROM contacts")).fetchall()
            records = c.execute(self.q("SELECT kind, id, version, record, key_id FROM desk_records "
                                       "WHERE kind = 'agent'")).fetchall()
            return convs, tickets, contacts, records

        convs, tickets, contacts, records = await self._read(read)
        out: dict[str, list] = {"conversation": [], "ticket": [], "contact": []}
        for r in convs:
            out["conversation"].append((int(r[0]), json.loads(r[1]) if r[1] else None, r[2:]))
        for r in tickets:
            out["ticket"].append((int(r[0]), json.loads(r[1]) if r[1] else None, r[2:]))
        for version, cid, pii, key_id, created, updated in contacts:
            d = json.loads(self._unseal(pii, key_id, PII_CTX))
            d.update(id=cid, created_at=float(created), updated_at=float(updated))
            out["contact"].append((int(version), d))
        for kind, rid, version, blob, key_id in records:
            out.setdefault(kind, []).append((rid, int(version), json.loads(self._unseal(blob, key_id, RECORD_CTX))))
        return out

    async def desk_records(self, kind: str) -> list[tuple[str, int, dict]]:
        """(id, version, record) of one kind of ``desk_records`` (webhooks, settings)."""
        rows = await self._read(lambda c: c.execute(self.q(
            "SELECT id, version, record, key_id FROM desk_records WHERE kind = ? ORDER BY id"), (kind,)).fetchall())
        return [(rid, int(v), json.loads(self._unseal(blob, key_id, RECORD_CTX))) for rid, v, blob, key_id in rows]

    async def desk_messages(self, conv_id: str) -> list[ChatMessage]:
        """A conversation's transcript in its own order (``seq``), notes included."""
        msgs = await self.list_messages(conv_id, limit=1_000_000)
        return sorted(msgs, key=lambda m: (m.seq, m.id))

    # ------------------------------------------------------------ transcripts

    async def append_message(self, msg: ChatMessage) -> int:
        return await self._submit("chat", self.chat_args(msg))

    def chat_args(self, msg: ChatMessage) -> tuple:
        """What the writer needs for one transcript line (sealed here, on the trio side)."""
        body, key_id = self._seal(msg.body.encode(), BODY_CTX)
        return msg, body, key_id, (msg.body if self.search_index else None)

    def _h_chat(self, conn, batch):
        now = time.time()
        ids = []
        for msg, body, key_id, index in batch:
            row = conn.execute(self.q(
                "INSERT INTO chat_messages (conversation_id, sender_kind, sender_id, body, key_id, created_at, meta, "
                "seq, private" + (", search_text" if self.dialect == "postgres" else "") + ") VALUES (?, ?, ?, ?, ?, "
                "TS(?), ?, ?, ?" + (", ?" if self.dialect == "postgres" else "") + ") RETURNING id"),
                (msg.conversation_id, msg.sender_kind, msg.sender_id, body, key_id, msg.created_at or now,
                 _json(msg.meta), msg.seq, msg.private)
                + ((index,) if self.dialect == "postgres" else ())).fetchone()
            ids.append(int(row[0]))
            if index is not None:
                self._index_message(conn, int(row[0]), index)
        return ids

    async def list_messages(self, conv_id: str, *, after_id: int = 0, limit: int = 500) -> list[ChatMessage]:
        def read(c) -> list[ChatMessage]:
            rows = c.execute(self.q(
                "SELECT id, conversation_id, sender_kind, sender_id, body, key_id, EPOCH(created_at), meta, seq, private "
                "FROM chat_messages WHERE conversation_id = ? AND id > ? ORDER BY id LIMIT ?"),
                (conv_id, after_id, limit)).fetchall()
            # up to `limit` SM4 decryptions: in the reader thread, off the event loop
            return [ChatMessage(r[1], r[2], self._unseal(r[4], r[5], BODY_CTX).decode(), r[3], float(r[6]),
                                json.loads(r[7]), int(r[0]), int(r[8]), bool(r[9])) for r in rows]

        return await self._read(read)

    async def search(self, text: str, *, limit: int = 20, conversation_id: str | None = None) -> list[SearchHit]:
        if not self.search_index:
            raise SearchUnavailable("transcript search is off (storage.search_index = false)")
        terms = text.split()
        if not terms:
            return []
        def read(c) -> list[SearchHit]:
            hits = []  # decrypted (SM4) and cut into snippets in the reader thread, off the event loop
            for mid, conv, created, kind, body, key_id in self._search_rows(c, terms, conversation_id, limit):
                plain = self._unseal(body, key_id, BODY_CTX).decode()
                hits.append(SearchHit(int(mid), conv, float(created), kind, plain, make_snippet(plain, terms)))
            return hits

        return await self._read(read)

    # ------------------------------------------------------------ tickets, contacts, audit

    async def save_ticket(self, ticket: Ticket) -> None:
        now = time.time()
        await self._submit("ticket", replace(ticket, created_at=ticket.created_at or now, updated_at=ticket.updated_at or now))

    def _h_ticket(self, conn, batch: list[Ticket]):
        conn.executemany(self.q(
            "INSERT INTO tickets (id, conversation_id, contact_id, subject, status, priority, assignee, created_at, "
            "updated_at, fields) VALUES (?, ?, ?, ?, ?, ?, ?, TS(?), TS(?), ?) ON CONFLICT (id) DO UPDATE SET "
            "conversation_id = excluded.conversation_id, contact_id = excluded.contact_id, subject = excluded.subject, "
            "status = excluded.status, priority = excluded.priority, assignee = excluded.assignee, "
            "updated_at = excluded.updated_at, fields = excluded.fields"),
            [(t.id, t.conversation_id, t.contact_id, t.subject, t.status, t.priority, t.assignee, t.created_at,
              t.updated_at, _json(t.fields)) for t in batch])
        return [None] * len(batch)

    _TICKET_COLS = ("id, subject, status, priority, conversation_id, contact_id, assignee, EPOCH(created_at), "
                    "EPOCH(updated_at), fields")

    @staticmethod
    def _ticket(r) -> Ticket:
        return Ticket(r[0], r[1], r[2], int(r[3]), r[4], r[5], r[6], float(r[7]), float(r[8]), json.loads(r[9]))

    async def get_ticket(self, ticket_id: str) -> Ticket | None:
        rows = await self._read(lambda c: c.execute(self.q(
            f"SELECT {self._TICKET_COLS} FROM tickets WHERE id = ?"), (ticket_id,)).fetchall())
        return self._ticket(rows[0]) if rows else None

    async def list_tickets(self, *, status: str | None = None, limit: int = 100) -> list[Ticket]:
        sql = f"SELECT {self._TICKET_COLS} FROM tickets" + (" WHERE status = ?" if status else "")
        sql += " ORDER BY updated_at DESC LIMIT ?"
        params = ((status,) if status else ()) + (limit,)
        rows = await self._read(lambda c: c.execute(self.q(sql), params).fetchall())
        return [self._ticket(r) for r in rows]

    async def save_contact(self, contact: Contact) -> None:
        now = time.time()
        contact = replace(contact, created_at=contact.created_at or now, updated_at=contact.updated_at or now)
        pii = _json({"name": contact.name, "email": contact.email, "phone": contact.phone,
                     "attributes": contact.attributes}).encode()
        blob, key_id = self._seal(pii, PII_CTX)
        await self._submit("contact", (contact, blob, key_id))

    def _h_contact(self, conn, batch):
        conn.executemany(self.q(
            "INSERT INTO contacts (id, external_id, pii, key_id, created_at, updated_at) VALUES (?, ?, ?, ?, TS(?), TS(?)) "
            "ON CONFLICT (id) DO UPDATE SET external_id = excluded.external_id, pii = excluded.pii, "
            "key_id = excluded.key_id, updated_at = excluded.updated_at"),
            [(c.id, c.external_id, blob, kid, c.created_at, c.updated_at) for c, blob, kid in batch])
        return [None] * len(batch)

    def _contact(self, r) -> Contact:
        pii = json.loads(self._unseal(r[2], r[3], PII_CTX))
        return Contact(r[0], r[1], pii["name"], pii["email"], pii["phone"], pii["attributes"], float(r[4]), float(r[5]))

    async def get_contact(self, contact_id: str) -> Contact | None:
        rows = await self._read(lambda c: c.execute(self.q(
            "SELECT id, external_id, pii, key_id, EPOCH(created_at), EPOCH(updated_at) FROM contacts WHERE id = ?"),
            (contact_id,)).fetchall())
        return self._contact(rows[0]) if rows else None

    async def find_contact(self, external_id: str) -> Contact | None:
        rows = await self._read(lambda c: c.execute(self.q(
            "SELECT id, external_id, pii, key_id, EPOCH(created_at), EPOCH(updated_at) FROM contacts "
            "WHERE external_id = ?"), (external_id,)).fetchall())
        return self._contact(rows[0]) if rows else None

    async def audit(self, entry: AuditEntry) -> int:
        return await self._submit("audit", replace(entry, at=entry.at or time.time()))

    def _h_audit(self, conn, batch: list[AuditEntry]):
        return [int(conn.execute(self.q(
            "INSERT INTO audit_log (at, actor, action, subject, detail) VALUES (TS(?), ?, ?, ?, ?) RETURNING id"),
            (e.at, e.actor, e.action, e.subject, _json(e.detail))).fetchone()[0]) for e in batch]

    async def list_audit(self, *, since: float = 0.0, limit: int = 100) -> list[AuditEntry]:
        rows = await self._read(lambda c: c.execute(self.q(
            "SELECT id, EPOCH(at), actor, action, subject, detail FROM audit_log WHERE at >= TS(?) "
            "ORDER BY id DESC LIMIT ?"), (since, limit)).fetchall())
        return [AuditEntry(r[2], r[3], r[4], json.loads(r[5]), float(r[1]), int(r[0])) for r in rows]

    # ------------------------------------------------------------ metrics, retention

    async def record_metrics(self, samples: Sequence[MetricSample]) -> None:
        now = time.time()
        await self._submit("metrics", [(s.at or now, s.name, s.labels, float(s.value)) for s in samples], wait=False)

    def _h_metrics(self, conn, batch: list[list]):
        rows = [r for rs in batch for r in rs]
        conn.executemany(self.q("INSERT INTO metric_samples (at, name, labels, value) VALUES (TS(?), ?, ?, ?)"), rows)
        return [None] * len(batch)

    async def metric_buckets(self, name: str, start: float, end: float, bucket_s: int,
                             labels: str | None = None) -> list[MetricBucket]:
        if bucket_s <= 0:
            raise ValueError("bucket_s must be positive")
        rows = await self._read(lambda c: self._bucket_rows(c, name, start, end, int(bucket_s), labels))
        return [MetricBucket(float(r[0]), int(r[1]), float(r[2]), float(r[3]), float(r[4])) for r in rows]

    async def prune(self, now: float | None = None) -> dict[str, int]:
        return await self._submit("prune", time.time() if now is None else now)

    def _h_prune(self, conn, batch: list[float]):
        now = max(batch)
        out: dict[str, int] = {}
        cur = conn.execute(self.q(
            "DELETE FROM mqtt_messages WHERE id IN (SELECT m.id FROM mqtt_messages m WHERE m.created_at < ? "
            "AND NOT EXISTS (SELECT 1 FROM mqtt_queue q WHERE q.message_id = m.id) "
            "AND NOT EXISTS (SELECT 1 FROM mqtt_inbound i WHERE i.message_id = m.id) LIMIT ?)"),
            (now - float(getattr(self.cfg, "mqtt_log_seconds", MQTT_LOG_SECONDS)), PRUNE_BATCH))
        out["mqtt_messages"] = max(cur.rowcount, 0)
        conn.execute(self.q("DELETE FROM mqtt_retained WHERE expires_at IS NOT NULL AND expires_at <= ?"), (now,))
        out.update(self._prune_extra(conn, now))
        return [out] * len(batch)

    def _retention_cutoffs(self, now: float) -> list[tuple[str, str, float]]:
        days = float(getattr(self.cfg, "retention_days", 0) or 0)
        mdays = float(getattr(self.cfg, "metrics_retention_days", 0) or 0)
        out = []
        if days > 0:
            out += [("chat_messages", "created_at", now - days * 86400), ("audit_log", "at", now - days * 86400)]
        if mdays > 0:
            out.append(("metric_samples", "at", now - mdays * 86400))
        return out

    # ------------------------------------------------------------ keys

    async def load_keys(self) -> list[KeyRecord]:
        rows = await self._read(lambda c: c.execute(
            "SELECT key_id, purpose, device_id, wrapped, master_fp, state, created_at, rx_high, tx_next FROM keys "
            "ORDER BY created_at").fetchall())
        return [KeyRecord(int(r[0]), r[1], r[2], bytes(r[3]), r[4], r[5], float(r[6]), int(r[7]), int(r[8]))
                for r in rows]

    async def save_key(self, rec: KeyRecord) -> None:
        await self._submit("key", rec)

    def _h_key(self, conn, batch: list[KeyRecord]):
        conn.executemany(self.q(
            "INSERT INTO keys (key_id, purpose, device_id, wrapped, master_fp, state, created_at, rx_high, tx_next) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key_id) DO UPDATE SET state = excluded.state"),
            [(r.key_id, r.purpose, r.device_id, r.wrapped, r.master_fp, r.state, r.created_at, r.rx_high, r.tx_next)
             for r in batch])
        return [None] * len(batch)

    async def set_key_state(self, key_id: int, state: str) -> None:
        await self._submit("key_state", (state, key_id))

    def _h_key_state(self, conn, batch):
        conn.executemany(self.q("UPDATE keys SET state = ? WHERE key_id = ?"), batch)
        return [None] * len(batch)

    async def save_tx_next(self, key_id: int, tx_next: int) -> None:
        await self._submit("tx_next", (tx_next, key_id))

    def _h_tx_next(self, conn, batch):
        conn.executemany(self.q("UPDATE keys SET tx_next = GREATEST(tx_next, ?) WHERE key_id = ?"), batch)
        return [None] * len(batch)

    async def save_rx_high(self, key_id: int, counter: int) -> None:
        await self._submit("rx_high", (counter, key_id), wait=False)

    def _h_rx_high(self, conn, batch):
        conn.executemany(self.q("UPDATE keys SET rx_high = GREATEST(rx_high, ?) WHERE key_id = ?"), batch)
        return [None] * len(batch)

    # (table, primary key column, blob column, context): every column sealed with a data key
    ENCRYPTED = (("chat_messages", "id", "body", BODY_CTX), ("contacts", "id", "pii", PII_CTX),
                 ("desk_records", "kind || ':' || id", "record", RECORD_CTX))

    async def reencrypt(self, old_key_id: int, recrypt, limit: int = 500) -> int:
        return await self._submit("reencrypt", (old_key_id, recrypt, limit))

    def _h_reencrypt(self, conn, batch):
        out = []
        for old, recrypt, limit in batch:
            n = 0
            for table, pk, col, ctx in self.ENCRYPTED:
                rows = conn.execute(self.q(f"SELECT {pk}, {col} FROM {table} WHERE key_id = ? LIMIT ?"),
                                    (old, limit - n)).fetchall()
                for rid, blob in rows:
                    new = recrypt(bytes(blob), ctx)
                    conn.execute(self.q(f"UPDATE {table} SET {col} = ?, key_id = ? WHERE {pk} = ? AND key_id = ?"),
                                 (new, Keyring.key_id_of(new), rid, old))
                n += len(rows)
                if n >= limit:
                    break
            out.append(n)
        return out

    async def count_key_uses(self, key_id: int) -> int:
        def count(c):
            return sum(c.execute(self.q(f"SELECT count(*) FROM {t} WHERE key_id = ?"), (key_id,)).fetchone()[0]
                       for t, _, _, _ in self.ENCRYPTED)
        return await self._read(count)

    def _h_call(self, conn, batch):
        return [fn(conn) for fn in batch]
