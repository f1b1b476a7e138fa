-- kefu 0001: MQTT state, customer-service records, keys (SQLite).
-- Times are REAL seconds since the epoch. JSON columns are TEXT.
-- chat_messages.body and contacts.pii hold an SM4 blob when key_id is set, UTF-8 / JSON otherwise.

CREATE TABLE mqtt_messages (
    id          INTEGER PRIMARY KEY,
    topic       TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    qos         INTEGER NOT NULL,
    retain      INTEGER NOT NULL DEFAULT 0,
    properties  BLOB    NOT NULL DEFAULT x'',
    sender      TEXT    NOT NULL DEFAULT '',
    created_at  REAL    NOT NULL,
    expires_at  REAL
);
CREATE INDEX mqtt_messages_created ON mqtt_messages (created_at);

CREATE TABLE mqtt_sessions (
    client_id        TEXT PRIMARY KEY,
    protocol_level   INTEGER NOT NULL,
    expiry_interval  INTEGER NOT NULL,
    subscriptions    TEXT    NOT NULL,
    connected        INTEGER NOT NULL,
    disconnected_at  REAL,
    updated_at       REAL    NOT NULL
);

CREATE TABLE mqtt_queue (
    seq         INTEGER PRIMARY KEY,
    client_id   TEXT    NOT NULL,
    message_id  INTEGER NOT NULL,
    qos         INTEGER NOT NULL,
    packet_id   INTEGER,
    state       TEXT    NOT NULL DEFAULT 'queued'
);
CREATE INDEX mqtt_queue_client ON mqtt_queue (client_id, seq);
CREATE INDEX mqtt_queue_packet ON mqtt_queue (client_id, packet_id) WHERE packet_id IS NOT NULL;
CREATE INDEX mqtt_queue_message ON mqtt_queue (message_id);

CREATE TABLE mqtt_inbound (
    client_id   TEXT    NOT NULL,
    packet_id   INTEGER NOT NULL,
    message_id  INTEGER NOT NULL,
    created_at  REAL    NOT NULL,
    PRIMARY KEY (client_id, packet_id)
);

CREATE TABLE mqtt_retained (
    topic       TEXT PRIMARY KEY,
    payload     BLOB    NOT NULL,
    qos         INTEGER NOT NULL,
    properties  BLOB    NOT NULL DEFAULT x'',
    sender      TEXT    NOT NULL DEFAULT '',
    created_at  REAL    NOT NULL,
    expires_at  REAL
);

CREATE TABLE contacts (
    id           TEXT PRIMARY KEY,
    external_id  TEXT UNIQUE,
    pii          BLOB    NOT NULL,
    key_id       INTEGER,
    created_at   REAL    NOT NULL,
    updated_at   REAL    NOT NULL
);
CREATE INDEX contacts_key ON contacts (key_id) WHERE key_id IS NOT NULL;

CREATE TABLE conversations (
    id              TEXT PRIMARY KEY,
    contact_id      TEXT,
    channel         TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    assigned_agent  TEXT,
    priority        INTEGER NOT NULL DEFAULT 0,
    subject         TEXT    NOT NULL DEFAULT '',
    created_at      REAL    NOT NULL,
    updated_at      REAL    NOT NULL,
    closed_at       REAL,
    meta            TEXT    NOT NULL DEFAULT '{}',
    fence           INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX conversations_state ON conversations (state, updated_at);
CREATE INDEX conversations_contact ON conversations (contact_id);

CREATE TABLE chat_messages (
    id               INTEGER PRIMARY KEY,
    conversation_id  TEXT    NOT NULL,
    sender_kind      TEXT    NOT NULL,
    sender_id        TEXT    NOT NULL DEFAULT '',
    body             BLOB    NOT NULL,
    key_id           INTEGER,
    created_at       REAL    NOT NULL,
    meta             TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX chat_messages_conv ON chat_messages (conversation_id, id);
CREATE INDEX chat_messages_created ON chat_messages (created_at);
CREATE INDEX chat_messages_key ON chat_messages (key_id) WHERE key_id IS NOT NULL;

CREATE TABLE tickets (
    id               TEXT PRIMARY KEY,
    conversation_id  TEXT,
    contact_id       TEXT,
    subject          TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    assignee         TEXT,
    created_at       REAL    NOT NULL,
    updated_at       REAL    NOT NULL,
    fields           TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX tickets_status ON tickets (status, updated_at);

CREATE TABLE audit_log (
    id       INTEGER PRIMARY KEY,
    at       REAL NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    subject  TEXT NOT NULL DEFAULT '',
    detail   TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at);

CREATE TABLE metric_samples (
    at      REAL NOT NULL,
    name    TEXT NOT NULL,
    labels  TEXT NOT NULL DEFAULT '',
    value   REAL NOT NULL
);
CREATE INDEX metric_samples_name_at ON metric_samples (name, at);

CREATE TABLE keys (
    key_id      INTEGER PRIMARY KEY,
    purpose     TEXT    NOT NULL,
    device_id   TEXT,
    wrapped     BLOB    NOT NULL,
    master_fp   TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    created_at  REAL    NOT NULL,
    rx_high     INTEGER NOT NULL DEFAULT 0,
    tx_next     INTEGER NOT NULL DEFAULT 1
);
