-- Password-reset tokens (see the Postgres version).

CREATE TABLE IF NOT EXISTS password_resets (
    token_hash  blob PRIMARY KEY,
    user_id     blob NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  text NOT NULL,
    expires_at  text NOT NULL,
    used_at     text
);
CREATE INDEX IF NOT EXISTS password_resets_user_idx ON password_resets (user_id);
