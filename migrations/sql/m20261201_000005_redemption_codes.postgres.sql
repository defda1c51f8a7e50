-- Redemption codes: credits handed out as a code; one row per use taken.

CREATE TABLE IF NOT EXISTS redemption_codes (
    id              uuid PRIMARY KEY,
    code            text NOT NULL UNIQUE,
    credits_micros  bigint NOT NULL CHECK (credits_micros > 0),
    max_uses        integer NOT NULL CHECK (max_uses > 0),
    uses            integer NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= max_uses),
    expires_at      timestamptz,
    created_at      timestamptz NOT NULL,
    revoked_at      timestamptz
);

CREATE TABLE IF NOT EXISTS redemptions (
    code_id      uuid NOT NULL REFERENCES redemption_codes (id) ON DELETE CASCADE,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    redeemed_at  timestamptz NOT NULL,
    PRIMARY KEY (code_id, user_id)
);
