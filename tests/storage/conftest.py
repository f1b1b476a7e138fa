"""Fixtures for storage tests: a store on a real SQLite file or in a throwaway PostgreSQL
schema (dropped afterwards), a master key, and a unique Redis key prefix (cleaned up)."""

from __future__ import annotations

import os
import uuid

import pytest

from kefu.config.model import Storage
from kefu.storage import open_store
from kefu.storage.crypto import MasterKey


@pytest.fixture
def master() -> MasterKey:
    return MasterKey(os.urandom(16), "test")


def drop_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_cfg(postgres_dsn):
    """A storage config on the real PostgreSQL, in a schema of its own (TimescaleDB used where installed)."""
    schema = "kefu_test_" + uuid.uuid4().hex[:10]
    yield Storage(backend="postgres", dsn=postgres_dsn, pg_schema=schema, encrypt_at_rest=True)
    drop_schema(postgres_dsn, schema)


@pytest.fixture
def timescale_cfg(timescale_dsn):
    """A storage config on PostgreSQL with TimescaleDB, in a schema of its own."""
    schema = "kefu_ts_" + uuid.uuid4().hex[:10]
    yield Storage(backend="postgres", dsn=timescale_dsn, pg_schema=schema, encrypt_at_rest=True)
    drop_schema(timescale_dsn, schema)


@pytest.fixture
def sqlite_cfg(tmp_path):
    return Storage(backend="sqlite", path=str(tmp_path / "kefu.db"), encrypt_at_rest=True)


@pytest.fixture(params=["sqlite", "postgres", "timescale"])
def cfg(request, tmp_path):
    """The same behaviour checked on SQLite, plain PostgreSQL (``timescaledb = false``, plain
    tables even where the extension is installed) and PostgreSQL with TimescaleDB."""
    if request.param == "sqlite":
        yield Storage(backend="sqlite", path=str(tmp_path / "kefu.db"), encrypt_at_rest=True)
        return
    ts = request.param == "timescale"
    dsn = request.getfixturevalue("timescale_dsn" if ts else "postgres_dsn")
    schema = ("kefu_ts_" if ts else "kefu_test_") + uuid.uuid4().hex[:10]
    yield Storage(backend="postgres", dsn=dsn, pg_schema=schema, encrypt_at_rest=True, timescaledb=ts)
    drop_schema(dsn, schema)


@pytest.fixture
async def store(cfg, master):
    async with open_store(cfg, master=master, background=False) as s:
        yield s


@pytest.fixture
def redis_prefix(redis_url):
    prefix = f"kefu-test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    import redis

    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=prefix + "*"))
    if keys:
        r.delete(*keys)
    r.close()

