-- The audit log (see the Postgres version): append-only, refused updates and deletes.

CREATE TABLE IF NOT EXISTS audit_log (
    id          blob PRIMARY KEY,
    at          text NOT NULL,
    actor_id    blob,
    action      text NOT NULL,
    target      text,
    outcome     text NOT NULL CHECK (outcome IN ('ok', 'refused', 'failed')),
    status      integer NOT NULL,
    source_ip   text,
    request_id  blob NOT NULL,
    detail      text
);
CREATE INDEX IF NOT EXISTS audit_log_actor_idx ON audit_log (actor_id, id DESC);
CREATE INDEX IF NOT EXISTS audit_log_target_idx ON audit_log (target, id DESC);
CREATE INDEX IF NOT EXISTS audit_log_action_idx ON audit_log (action, id DESC);

CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
