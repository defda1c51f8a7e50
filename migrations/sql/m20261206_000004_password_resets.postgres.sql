-- Password-reset tokens: only a keyed hash of each is stored (like sessions), live for 30
-- minutes, single use (used_at set by the conditional update that takes it; taking one uses
-- up every other of the user's).

CREATE TABLE IF NOT EXISTS password_resets (
    token_hash  bytea PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX IF NOT EXISTS password_resets_user_idx ON password_resets (user_id);
