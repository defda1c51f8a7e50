-- Payments through Creem: each account's customer and subscription, when a canceled
-- subscription ends, the newest subscription event applied; every webhook event once; what a
-- payment was for.

ALTER TABLE users ADD COLUMN IF NOT EXISTS creem_customer_id text;
ALTER TABLE users ADD COLUMN IF NOT EXISTS creem_subscription_id text;
-- A canceled subscription: the account goes back to free at this moment.
ALTER TABLE users ADD COLUMN IF NOT EXISTS subscription_ends_at timestamptz;
-- created_at (ms) of the newest subscription event applied: older ones do not move the tier.
ALTER TABLE users ADD COLUMN IF NOT EXISTS subscription_event_at bigint;
CREATE INDEX IF NOT EXISTS users_creem_subscription_idx ON users (creem_subscription_id);
CREATE INDEX IF NOT EXISTS users_subscription_ends_idx ON users (subscription_ends_at) WHERE subscription_ends_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS billing_webhook_events (
    id            text PRIMARY KEY,
    event_type    text NOT NULL,
    created_at    timestamptz NOT NULL,
    received_at   timestamptz NOT NULL,
    user_id       uuid REFERENCES users (id) ON DELETE SET NULL,
    outcome       text NOT NULL CHECK (outcome IN ('applied', 'duplicate_payment', 'ignored', 'refused')),
    detail        text
);

ALTER TABLE payment_transactions ADD COLUMN IF NOT EXISTS purpose text;
