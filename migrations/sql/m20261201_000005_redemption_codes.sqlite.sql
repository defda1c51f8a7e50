-- Redemption codes (see the Postgres version).

CREATE TABLE IF NOT EXISTS redemption_codes (
    id              blob PRIMARY KEY,
    code            text NOT NULL UNIQUE,
    credits_micros  integer NOT NULL CHECK (credits_micros > 0),
    max_uses        integer NOT NULL CHECK (max_uses > 0),
    uses            integer NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= max_uses),
    expires_at      text,
    created_at      text NOT NULL,
    revoked_at      text
);

CREATE TABLE IF NOT EXISTS redemptions (
    code_id      blob NOT NULL REFERENCES redemption_codes (id) ON DELETE CASCADE,
    user_id      blob NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    redeemed_at  text NOT NULL,
    PRIMARY KEY (code_id, user_id)
);
