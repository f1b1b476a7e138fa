"""Versioned schema migrations for the SQL backends.

Files in ``storage/migrations/`` are named ``NNNN_name.DIALECT.sql`` or
``NNNN_name.DIALECT.py`` (DIALECT: sqlite | postgres). A version may exist for one
dialect only (FTS5 is SQLite's, TimescaleDB PostgreSQL's); the other records it as
applied with nothing to do, so both keep one version sequence.

SQL files run as they are. A Python file defines ``upgrade(conn) -> (done, report)``
for steps that depend on what the server offers (an extension). ``done = False`` means
"skipped, try again": it is recorded with its report and retried by every later
upgrade, so installing pg_trgm or TimescaleDB later and upgrading picks it up.

Each migration runs in its own transaction, recorded in ``schema_migrations`` in the
same transaction: a crash mid-upgrade leaves the previous version, never half of one.
Concurrent upgraders serialise on a lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: an
advisory transaction lock).
"""

from __future__ import annotations

import importlib.util
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sqlite|postgres)\.(sql|py)$")

TABLE_SQL = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL, "
    "done INTEGER NOT NULL, report TEXT NOT NULL)"
)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path | None  # None: nothing to do for this dialect


@dataclass(frozen=True)
class MigrationState:
    version: int
    name: str
    applied_at: float | None
    done: bool
    report: str


def discover(dialect: str, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: dict[int, tuple[str, Path | None]] = {}
    for p in sorted(directory.iterdir()):
        m = _NAME.match(p.name)
        if not m:
            continue
        version, name, d = int(m.group(1)), m.group(2), m.group(3)
        if version in found and found[version][0] != name:
            raise RuntimeError(f"migration {version:04d} has two names: {found[version][0]} and {name}")
        prev = found.get(version, (name, None))[1]
        if d == dialect:
            if prev is not None:
                raise RuntimeError(f"migration {version:04d} has two {dialect} files")
            prev = p
        found[version] = (name, prev)
    return [Migration(v, n, p) for v, (n, p) in sorted(found.items())]


def split_sql(text: str) -> list[str]:
    """Statements of a SQL file (SQLite needs them one at a time inside a transaction)."""
    out, buf = [], []
    for line in text.splitlines(keepends=True):
        if not buf and (not line.strip() or line.lstrip().startswith("--")):
            continue
        buf.append(line)
        stmt = "".join(buf)
        if sqlite3.complete_statement(stmt):
            out.append(stmt.strip())
            buf = []
    if "".join(buf).strip():
        raise RuntimeError(f"unterminated SQL statement: {''.join(buf)[:80]!r}")
    return out


def _load_py(path: Path):
    spec = importlib.util.spec_from_file_location(f"kefu_migration_{path.stem.replace('.', '_')}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _states(rows) -> dict[int, MigrationState]:
    return {int(r[0]): MigrationState(int(r[0]), r[1], float(r[2]), bool(r[3]), r[4]) for r in rows}


def status(conn, dialect: str) -> list[MigrationState]:
    """Every known migration with its state (applied_at None: pending)."""
    if dialect == "sqlite":
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_migrations'").fetchone()
    else:
        exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0]
    rows = conn.execute("SELECT version, name, applied_at, done, report FROM schema_migrations").fetchall() if exists else []
    applied = _states(rows)
    out = []
    for m in discover(dialect):
        out.append(applied.get(m.version) or MigrationState(m.version, m.name, None, False, "pending"))
    return out


def upgrade_sqlite(conn: sqlite3.Connection) -> list[str]:
    """Apply pending migrations on a connection in autocommit mode (isolation_level=None)."""
    reports = []
    conn.execute(TABLE_SQL)
    for m in discover("sqlite"):
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT done FROM schema_migrations WHERE version = ?", (m.version,)).fetchone()
            if row is not None and row[0]:
                conn.execute("ROLLBACK")
                continue
            done, report = True, "nothing to do for sqlite"
            if m.path is not None and m.path.suffix == ".sql":
                for stmt in split_sql(m.path.read_text(encoding="utf-8")):
                    conn.execute(stmt)
                report = "applied"
            elif m.path is not None:
                done, report = _load_py(m.path).upgrade(conn)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at, done, report) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (version) DO UPDATE SET applied_at = excluded.applied_at, done = excluded.done, "
                "report = excluded.report",
                (m.version, m.name, time.time(), int(done), report),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        reports.append(f"{m.version:04d} {m.name}: {report}")
    return reports


def upgrade_postgres(conn) -> list[str]:
    """Apply pending migrations on a psycopg connection (autocommit off)."""
    reports = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('kefu-migrations:' || current_schema()))")
        conn.execute(TABLE_SQL)
    for m in discover("postgres"):
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('kefu-migrations:' || current_schema()))")
            row = conn.execute("SELECT done FROM schema_migrations WHERE version = %s", (m.version,)).fetchone()
            if row is not None and row[0]:
                continue
            done, report = True, "nothing to do for postgres"
            if m.path is not None and m.path.suffix == ".sql":
                conn.execute(m.path.read_text(encoding="utf-8"))
                report = "applied"
            elif m.path is not None:
                done, report = _load_py(m.path).upgrade(conn)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at, done, report) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (version) DO UPDATE SET applied_at = excluded.applied_at, done = excluded.done, "
                "report = excluded.report",
                (m.version, m.name, time.time(), int(done), report),
            )
        reports.append(f"{m.version:04d} {m.name}: {report}")
    return reports


def latest(dialect: str) -> int:
    ms = discover(dialect)
    return ms[-1].version if ms else 0
