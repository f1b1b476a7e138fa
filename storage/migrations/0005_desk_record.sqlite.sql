-- kefu 0005: the SQL store is the desk's system of record. Each conversation, ticket and
-- contact row also keeps the desk's whole record (``record``, JSON; for contacts inside
-- the sealed ``pii``) and its version: a restart rebuilds the desk from these rows, and a
-- write never replaces a newer version (several nodes may write the same record).
-- Transcript lines keep their place in the conversation (``seq``) and whether they are
-- an agent's private note. ``desk_records`` holds the desk's other records (agents,
-- webhooks added through the API, the widget's visitor secret), sealed when key_id is set.
ALTER TABLE conversations ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN record TEXT;
ALTER TABLE tickets ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tickets ADD COLUMN record TEXT;
ALTER TABLE contacts ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE chat_messages ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE chat_messages ADD COLUMN private INTEGER NOT NULL DEFAULT 0;

CREATE TABLE desk_records (
    kind        TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    record      BLOB    NOT NULL,
    key_id      INTEGER,
    updated_at  REAL    NOT NULL,
    PRIMARY KEY (kind, id)
);
