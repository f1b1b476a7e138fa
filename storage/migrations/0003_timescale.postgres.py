"""kefu 0003: TimescaleDB, when the server has it.

Detected, never guessed: if the extension is installed (or available and creatable,
which needs timescaledb in shared_preload_libraries), the time-ordered tables become
hypertables with compression policies, and metric_samples gets a one-minute continuous
aggregate. If it is absent nothing changes: the same queries run on plain tables, with
date_bin() where time_bucket() would be used. Retention policies depend on the config
and are (re)applied when the store opens (storage.postgres.PostgresStore).

An optional migration returns (done, report). When not done, the runner records it as
skipped and tries again at the next `kefu db upgrade`, so installing TimescaleDB later
and upgrading converts the tables then.
"""

HYPERTABLES = (
    # table, time column, chunk interval, compress segment-by, compress after
    ("chat_messages", "created_at", "7 days", "conversation_id", "30 days"),
    ("audit_log", "at", "30 days", "", "60 days"),
    ("metric_samples", "at", "1 day", "name, labels", "7 days"),
)


def upgrade(conn) -> tuple[bool, str]:
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
    for table, column, chunk, segment_by, after in HYPERTABLES:
        conn.execute(
            "SELECT create_hypertable(%s::regclass, %s, chunk_time_interval => %s::interval, "
            "migrate_data => true, if_not_exists => true)",
            (table, column, chunk),
        )
        opts = "timescaledb.compress" + (f", timescaledb.compress_segmentby = '{segment_by}'" if segment_by else "")
        conn.execute(f"ALTER TABLE {table} SET ({opts})")
        conn.execute("SELECT add_compression_policy(%s::regclass, %s::interval, if_not_exists => true)", (table, after))
        made.append(table)
    conn.execute(
        "CREATE MATERIALIZED VIEW metric_samples_1m WITH (timescaledb.continuous) AS "
        "SELECT time_bucket(INTERVAL '1 minute', at) AS bucket, name, labels, "
        "count(*) AS n, avg(value) AS avg, min(value) AS min, max(value) AS max "
        "FROM metric_samples GROUP BY 1, 2, 3 WITH NO DATA"
    )
    conn.execute(
        "SELECT add_continuous_aggregate_policy('metric_samples_1m', start_offset => INTERVAL '1 day', "
        "end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '1 minute', if_not_exists => true)"
    )
    version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()[0]
    return True, (f"timescaledb {version}: hypertables {', '.join(made)} with compression; "
            "continuous aggregate metric_samples_1m")
