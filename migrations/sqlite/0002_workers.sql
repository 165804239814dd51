-- Workers heartbeat here: who runs, since when, last seen, and the state of each plugin.
CREATE TABLE workers (
    id         TEXT   PRIMARY KEY,
    host       TEXT   NOT NULL,
    pid        BIGINT NOT NULL,
    started_ms BIGINT NOT NULL,
    seen_ms    BIGINT NOT NULL,
    plugins    TEXT   NOT NULL DEFAULT '{}'
);
