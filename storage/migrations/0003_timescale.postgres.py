"""kefu 0003: TimescaleDB, when the server has it.

Detected, never guessed: if the extension is installed (or available and creatable,
which needs timescaledb in shared_preload_libraries), the time-ordered tables become
hypertables with compression enabled, and metric_samples gets a one-minute continuous
aggregate. If it is absent, or `storage.timescaledb = false` (the store sets
``kefu.timescaledb = off`` for the session), nothing changes: the same queries run on
plain tables, with date_bin() where time_bucket() would be used.

No TimescaleDB background jobs are added: kefu's own maintenance does the time-based
work on every engine (storage.postgres.PostgresStore: retention by drop_chunks plus a
DELETE of the boundary chunk's old rows, compression of chunks past their age;
kefu.timeseries: refreshing the continuous aggregate and its retention), so it follows
the config to the row, needs no job scheduler, and never races a background worker.

An optional migration returns (done, report). When not done, the runner records it as
skipped and tries again at the next `kefu db upgrade`, so installing TimescaleDB later
and upgrading converts the tables then.
"""

HYPERTABLES = (
    # table, time column, chunk interval, compress segment-by (kefu's maintenance compresses
    # the chunks past an age: storage.postgres.COMPRESS_AFTER_DAYS)
    ("chat_messages", "created_at", "7 days", "conversation_id"),
    ("audit_log", "at", "30 days", ""),
    ("metric_samples", "at", "1 day", "name, labels"),
)


def upgrade(conn) -> tuple[bool, str]:
    if conn.execute("SELECT current_setting('kefu.timescaledb', true)").fetchone()[0] == "off":
        return False, "timescaledb: off (storage.timescaledb = false); plain tables, date_bin() buckets"
    # One database, several schemas upgraded at once (nodes, tests): one creates the extension.
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('kefu-create-extension-timescaledb'))")
    row = conn.execute(
        "SELECT default_version, installed_version FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    if row is None:
        return False, "timescaledb: absent; plain tables, date_bin() buckets, retention by kefu's pruning task"
    if row[1] is None:
        try:
            with conn.transaction():
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb WITH SCHEMA public")
        except Exception as e:  # noqa: BLE001
            return False, (f"timescaledb {row[0]} available but not creatable ({str(e).strip()}); "
                    "plain tables. Add timescaledb to shared_preload_libraries and run `kefu db upgrade` again")
    made = []
    for table, column, chunk, segment_by in HYPERTABLES:
        conn.execute(
            "SELECT create_hypertable(%s::regclass, %s, chunk_time_interval => %s::interval, "
            "migrate_data => true, if_not_exists => true)",
            (table, column, chunk),
        )
        opts = "timescaledb.compress" + (f", timescaledb.compress_segmentby = '{segment_by}'" if segment_by else "")
        conn.execute(f"ALTER TABLE {table} SET ({opts})")
        made.append(table)
    # Materialised rows only: the dashboard reads the minutes kefu refreshed (complete ones)
    # and the raw samples for the last few minutes itself.
    conn.execute(
        "CREATE MATERIALIZED VIEW metric_samples_1m "
        "WITH (timescaledb.continuous, timescaledb.materialized_only = true) AS "
        "SELECT time_bucket(INTERVAL '1 minute', at) AS bucket, name, labels, "
        "count(*) AS n, avg(value) AS avg, min(value) AS min, max(value) AS max "
        "FROM metric_samples GROUP BY 1, 2, 3 WITH NO DATA"
    )
    # Roll-up retention drops whole chunks: a day each keeps it within a day of the setting.
    conn.execute("SELECT set_chunk_time_interval('metric_samples_1m', INTERVAL '1 day')")
    version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()[0]
    return True, (f"timescaledb {version}: hypertables {', '.join(made)} with compression; "
            "continuous aggregate metric_samples_1m")
