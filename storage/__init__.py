"""kefu storage: SQLite (embedded default) or PostgreSQL, Redis for shared node state, SM4.

    async with open_store(cfg.storage) as store:
        mid = await store.persist_publish(StoredMessage("t/1", b"hi"), [("dev-1", 1)])
        ...
        store.health()          # for /readyz
        store.keys              # KeyService (SM4 device envelopes, rotation) or None

See storage/base.py for the interfaces and docs/storage.md for the operator's view.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

import trio

from .base import (  # noqa: F401 - the public names
    AuditEntry, ChatMessage, Contact, Conversation, Health, MetricBucket, MetricSample, QueuedMessage, SearchHit,
    SearchUnavailable, SessionRecord, StaleFence, StorageError, StorageUnavailable, StoredMessage, SubscriptionRecord,
    Ticket,
)

log = logging.getLogger("kefu.storage")


def master_key_configured(cfg) -> bool:
    env = getattr(cfg, "master_key_env", "")
    return bool((env and os.environ.get(env)) or getattr(cfg, "master_key_file", ""))


def make_store(cfg, keyring=None):
    backend = getattr(cfg, "backend", "sqlite")
    if backend == "sqlite":
        from .sqlite import SqliteStore
        return SqliteStore(cfg, keyring)
    if backend == "postgres":
        from .postgres import PostgresStore
        return PostgresStore(cfg, keyring)
    raise ValueError(f"storage.backend: unknown backend {backend!r} (sqlite or postgres)")


async def _maintenance(store, every: float) -> None:
    while True:
        await trio.sleep(every)
        try:
            deleted = await store.prune()
            expired = await store.expire_sessions(time.time())
            if expired or any(deleted.values()):
                log.info("storage maintenance: pruned %s, expired %d sessions", deleted, expired)
        except StorageUnavailable as e:
            log.warning("storage maintenance skipped: %s", e.reason)


@asynccontextmanager
async def open_store(cfg, *, upgrade: bool | None = None, master=None,
                     background: bool = True) -> AsyncIterator:
    """Open the configured store (running migrations when ``storage.auto_migrate``), load
    the keyring when a master key is configured, and run the background maintenance
    (pruning, session expiry, key refresh and re-encryption) until the block exits."""
    from .crypto import Keyring, load_master_key
    from .keys import KeyService

    keyring = None
    if master is None and (getattr(cfg, "encrypt_at_rest", False) or master_key_configured(cfg)):
        master = load_master_key(getattr(cfg, "master_key_file", ""), getattr(cfg, "master_key_env", "KEFU_MASTER_KEY"))
    if master is not None:
        keyring = Keyring(master)
    store = make_store(cfg, keyring)
    await store.open(upgrade=getattr(cfg, "auto_migrate", True) if upgrade is None else upgrade)
    store.keys = None
    try:
        if keyring is not None:
            store.keys = await KeyService.load(store, keyring)
            if getattr(cfg, "encrypt_at_rest", False):
                await store.keys.ensure_data_key()
        body_error: BaseException | None = None
        async with trio.open_nursery() as nursery:
            if background:
                if store.keys is not None:
                    await nursery.start(store.keys.run)
                nursery.start_soon(_maintenance, store, 60.0)
            try:
                yield store
            except BaseException as e:  # re-raised below as itself, not inside an ExceptionGroup
                body_error = e
            nursery.cancel_scope.cancel()
        if body_error is not None:
            raise body_error
    finally:
        with trio.CancelScope(shield=True):
            await store.close()
