"""Fixtures for the broker-durability tests: a storage config on a real SQLite file or in a
throwaway PostgreSQL schema (dropped afterwards), and a kefu config around it."""

from __future__ import annotations

import uuid

import pytest

from kefu.config import Config
from kefu.config.model import Storage


def drop_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def storage_cfg(request, tmp_path):
    """The same behaviour checked on both SQL backends."""
    if request.param == "sqlite":
        yield Storage(backend="sqlite", path=str(tmp_path / "kefu.db"))
        return
    dsn = request.getfixturevalue("postgres_dsn")
    schema = "kefu_durable_" + uuid.uuid4().hex[:10]
    yield Storage(backend="postgres", dsn=dsn, pg_schema=schema)
    drop_schema(dsn, schema)


@pytest.fixture
def sqlite_storage(tmp_path):
    return Storage(backend="sqlite", path=str(tmp_path / "kefu.db"))


def broker_cfg(storage: Storage, **mqtt) -> Config:
    cfg = Config()
    cfg.listeners.mqtt.host = "127.0.0.1"
    cfg.listeners.mqtt.port = 0
    cfg.listeners.ws.enabled = False
    cfg.listeners.http.enabled = False
    cfg.desk.enabled = False
    cfg.nlp.enabled = False
    cfg.mqtt.sys_interval = 0
    for k, v in mqtt.items():
        setattr(cfg.mqtt, k, v)
    cfg.storage = storage
    return cfg
