-- Plugins' settings as admins set them. `value` is JSON; for a secret it is the sealed value
-- (base64 of nonce and ciphertext) and `key_id` names the key that sealed it.
CREATE TABLE plugin_settings (
    plugin     TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    value      TEXT    NOT NULL,
    secret     BIGINT  NOT NULL DEFAULT 0,
    key_id     TEXT,
    updated_ms BIGINT  NOT NULL,
    updated_by TEXT    NOT NULL,
    PRIMARY KEY (plugin, key)
);

-- Bumped by every change of a plugin's settings: the ETag of its settings.
ALTER TABLE plugins ADD COLUMN settings_generation BIGINT NOT NULL DEFAULT 1;

-- The key secrets are sealed under, known by its id and a value sealed under it (never the
-- key itself), recorded with the first secret: a worker with another key is refused.
CREATE TABLE secret_keys (
    name        TEXT PRIMARY KEY,
    key_id      TEXT NOT NULL,
    check_value TEXT NOT NULL
);
