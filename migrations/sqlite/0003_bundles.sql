-- Installed bundles, by sha256, so every worker unpacks the same bytes.
CREATE TABLE bundles (
    sha256     TEXT   PRIMARY KEY,
    name       TEXT   NOT NULL,
    bytes      BLOB   NOT NULL,
    created_ms BIGINT NOT NULL
);
