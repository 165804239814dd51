-- Each worker's host as it reports it with its heartbeat: CPUs, load, memory (JSON, or NULL).
ALTER TABLE workers ADD COLUMN system TEXT;
