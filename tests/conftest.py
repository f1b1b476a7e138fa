"""Shared fixtures: real services on this machine.

Tests that need PostgreSQL, Redis, Mosquitto or Chromium take the fixture below.
Locally a missing service skips the test with a line saying what to start; with
KEFU_REQUIRE_SERVICES=1 (set by .ci/run) it fails instead, so CI never passes by
skipping.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

REQUIRE = os.environ.get("KEFU_REQUIRE_SERVICES") == "1"

POSTGRES_DSN = os.environ.get("KEFU_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KEFU_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _missing(what: str) -> None:
    if REQUIRE:
        pytest.fail(f"required service missing: {what}", pytrace=False)
    pytest.skip(f"service missing: {what}")


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_DSN, connect_timeout=3) as conn:
            conn.execute("select 1")
    except Exception as e:  # noqa: BLE001 - any failure means "not usable"
        _missing(f"PostgreSQL at {POSTGRES_DSN} ({e}); start it with "
                 "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`")
    return POSTGRES_DSN


@pytest.fixture(scope="session")
def timescale_dsn(postgres_dsn) -> str:
    """The PostgreSQL server, where it offers TimescaleDB (`CREATE EXTENSION timescaledb` works)."""
    import psycopg

    with psycopg.connect(postgres_dsn, connect_timeout=3) as conn:
        row = conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
        preload = conn.execute("SHOW shared_preload_libraries").fetchone()[0]
    if row is None or "timescaledb" not in preload:
        _missing(f"TimescaleDB on the PostgreSQL server at {postgres_dsn} (available: {row is not None}, "
                 f"preloaded: {'timescaledb' in preload}); install it with "
                 "`bash ../shared/vendor/timescaledb-2.28.3-pg15-amd64/install.sh` (as .ci/run does)")
    return postgres_dsn


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as e:  # noqa: BLE001
        _missing(f"Redis at {REDIS_URL} ({e}); start it with `redis-server --daemonize yes`")
    return REDIS_URL


@pytest.fixture(scope="session")
def mosquitto_bin() -> str:
    path = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if not path:
        _missing("the mosquitto binary (apt-get install mosquitto)")
    return path


@pytest.fixture(scope="session")
def chromium_bin() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        _missing("Debian's chromium (apt-get install chromium; scripts/setup.sh installs it)")
    return path


# Debian's chromium headless, offline: no sandbox in the test container, no background traffic.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser(chromium_bin):
    """One headless Chromium per test module (Playwright driving Debian's chromium); tests
    open their own contexts, which share nothing."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_bin, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (prefer binding port 0 directly where possible)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
