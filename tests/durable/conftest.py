"""Fixtures for the broker-durability tests: a storage config on a real SQLite file or in a
throwaway PostgreSQL schema (dropped afterwards), and a kefu config around it."""

from __future__ import annotations

import uuid

import pytest
from durable_harness import drop_schema

from kefu.config.model import Storage


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
