-- Payments through Creem (see the Postgres version).

ALTER TABLE users ADD COLUMN creem_customer_id text;
ALTER TABLE users ADD COLUMN creem_subscription_id text;
ALTER TABLE users ADD COLUMN subscription_ends_at text;
ALTER TABLE users ADD COLUMN subscription_event_at integer;
CREATE INDEX IF NOT EXISTS users_creem_subscription_idx ON users (creem_subscription_id);

CREATE TABLE IF NOT EXISTS billing_webhook_events (
    id            text PRIMARY KEY,
    event_type    text NOT NULL,
    created_at    text NOT NULL,
    received_at   text NOT NULL,
    user_id       blob REFERENCES users (id) ON DELETE SET NULL,
    outcome       text NOT NULL CHECK (outcome IN ('applied', 'duplicate_payment', 'ignored', 'refused')),
    detail        text
);

ALTER TABLE payment_transactions ADD COLUMN purpose text;
