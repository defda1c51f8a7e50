-- The audit log: every security- or money-relevant action, who did it, to what, when, from
-- where and how it ended (gateway_auth::audit). Append-only: the application has no update or
-- delete path and these triggers refuse both (and TRUNCATE); an operator who must prune it
-- does so as the table's owner with the triggers disabled, deliberately.
-- actor_id has no foreign key: the history outlives the accounts it names.

CREATE TABLE IF NOT EXISTS audit_log (
    id          uuid PRIMARY KEY,
    at          timestamptz NOT NULL,
    actor_id    uuid,
    action      text NOT NULL,
    target      text,
    outcome     text NOT NULL CHECK (outcome IN ('ok', 'refused', 'failed')),
    status      integer NOT NULL,
    source_ip   text,
    request_id  uuid NOT NULL,
    detail      text
);
CREATE INDEX IF NOT EXISTS audit_log_actor_idx ON audit_log (actor_id, id DESC);
CREATE INDEX IF NOT EXISTS audit_log_target_idx ON audit_log (target, id DESC);
CREATE INDEX IF NOT EXISTS audit_log_action_idx ON audit_log (action, id DESC);

CREATE OR REPLACE FUNCTION bm_audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION bm_audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION bm_audit_log_append_only();
