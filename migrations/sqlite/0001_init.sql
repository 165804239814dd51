-- plugd's own schema (SQLite, the embedded default). Times are Unix milliseconds; flags are 0/1.
CREATE TABLE plugins (
    name          TEXT    PRIMARY KEY,
    version       TEXT    NOT NULL,
    description   TEXT    NOT NULL DEFAULT '',
    author        TEXT    NOT NULL DEFAULT '',
    enabled       INTEGER NOT NULL DEFAULT 1,
    missing       INTEGER NOT NULL DEFAULT 0,
    generation    BIGINT  NOT NULL DEFAULT 1,
    bundle_sha256 TEXT,
    created_ms    BIGINT  NOT NULL,
    updated_ms    BIGINT  NOT NULL
);

CREATE TABLE plugin_migrations (
    plugin     TEXT   NOT NULL,
    migration  TEXT   NOT NULL,
    checksum   TEXT   NOT NULL,
    applied_ms BIGINT NOT NULL,
    PRIMARY KEY (plugin, migration)
);

CREATE TABLE plugin_events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms  BIGINT  NOT NULL,
    plugin TEXT,
    actor  TEXT    NOT NULL,
    action TEXT    NOT NULL,
    detail TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX plugin_events_by_plugin ON plugin_events (plugin, id);

CREATE TABLE plugin_kv (
    plugin     TEXT   NOT NULL,
    key        TEXT   NOT NULL,
    value      BLOB   NOT NULL,
    version    BIGINT NOT NULL,
    expires_ms BIGINT,
    PRIMARY KEY (plugin, key)
);

CREATE TABLE changes (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms   BIGINT  NOT NULL,
    plugin  TEXT,
    kind    TEXT    NOT NULL
);
