"""kefu 0002: transcript search on PostgreSQL through pg_trgm.

chat_messages.search_text holds the searchable text (NULL when storage.search_index is
off). A GIN index with pg_trgm's gin_trgm_ops makes ILIKE '%term%' an index lookup for
terms of three characters or more, in any script (pg_trgm hashes non-ASCII trigrams).

pg_trgm ships with PostgreSQL (contrib) but may be missing from a build, or the role may
lack the right to create it: then search still works, by sequential scan, and
`kefu db status` says so. The extension is created in schema public so that one kefu
schema being dropped never takes it away from another. Returns (done, report); when not
done the runner retries at the next `kefu db upgrade`.
"""


def upgrade(conn) -> tuple[bool, str]:
    row = conn.execute(
        "SELECT e.extversion, n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_trgm'"
    ).fetchone()
    if row is None:
        avail = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'").fetchone()
        if avail is None:
            return False, "pg_trgm: not available on this server; transcript search uses a sequential scan"
        try:
            with conn.transaction():
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public")
        except Exception as e:  # noqa: BLE001 - privilege or a concurrent creator: re-check below
            row = conn.execute(
                "SELECT e.extversion, n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                "WHERE e.extname = 'pg_trgm'"
            ).fetchone()
            if row is None:
                return False, f"pg_trgm: CREATE EXTENSION failed ({e}); transcript search uses a sequential scan"
        row = conn.execute(
            "SELECT e.extversion, n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'pg_trgm'"
        ).fetchone()
    version, schema = row
    quoted = '"' + schema.replace('"', '""') + '"'
    conn.execute(f"CREATE INDEX chat_messages_search ON chat_messages USING gin (search_text {quoted}.gin_trgm_ops)")
    return True, f"pg_trgm {version}: trigram GIN index on chat_messages.search_text"
