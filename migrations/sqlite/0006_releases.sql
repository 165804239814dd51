-- Every bundle a plugin was installed from, newest first by installed_ms; the last few per
-- plugin are kept (their bytes in `bundles`), older ones pruned.
CREATE TABLE bundle_versions (
    plugin       TEXT   NOT NULL,
    sha256       TEXT   NOT NULL,
    version      TEXT   NOT NULL,
    size         BIGINT NOT NULL,
    installed_by TEXT   NOT NULL,
    installed_ms BIGINT NOT NULL,
    PRIMARY KEY (plugin, sha256)
);

-- The bundles installed before this table existed are the first entry of their history.
INSERT INTO bundle_versions (plugin, sha256, version, size, installed_by, installed_ms)
SELECT p.name, p.bundle_sha256, p.version, length(b.bytes), 'unknown', p.updated_ms
FROM plugins p JOIN bundles b ON b.sha256 = p.bundle_sha256;

-- A canary: a second version serving a share of the plugin's HTTP requests on every worker.
ALTER TABLE plugins ADD COLUMN canary_sha256 TEXT;
ALTER TABLE plugins ADD COLUMN canary_version TEXT;
ALTER TABLE plugins ADD COLUMN canary_percent BIGINT;
ALTER TABLE plugins ADD COLUMN canary_started_ms BIGINT;
