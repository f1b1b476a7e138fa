-- kefu 0005: the SQL store is the desk's system of record. Each conversation, ticket and
-- contact row also keeps the desk's whole record (``record``, JSON; for contacts inside
-- the sealed ``pii``) and its version: a restart rebuilds the desk from these rows, and a
-- write never replaces a newer version (several nodes may write the same record).
-- Transcript lines keep their place in the conversation (``seq``) and whether they are
-- an agent's private note. ``desk_records`` holds the desk's other records (agents,
-- webhooks added through the API, the widget's visitor secret), sealed when key_id is set.
ALTER TABLE conversations ADD COLUMN version bigint NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN record text;
ALTER TABLE tickets ADD COLUMN version bigint NOT NULL DEFAULT 0;
ALTER TABLE tickets ADD COLUMN record text;
ALTER TABLE contacts ADD COLUMN version bigint NOT NULL DEFAULT 0;
ALTER TABLE chat_messages ADD COLUMN seq integer NOT NULL DEFAULT 0;
ALTER TABLE chat_messages ADD COLUMN private boolean NOT NULL DEFAULT false;

CREATE TABLE desk_records (
    kind        text    NOT NULL,
    id          text    NOT NULL,
    version     bigint  NOT NULL,
    record      bytea   NOT NULL,
    key_id      bigint,
    updated_at  double precision NOT NULL,
    PRIMARY KEY (kind, id)
);
