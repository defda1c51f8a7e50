-- Billing (see the Postgres version for what each part is). SQLite cannot add a CHECK to an
-- existing column; the gateway's conditional updates keep balances from going negative there.

ALTER TABLE billing_plans ADD COLUMN included_tokens integer NOT NULL DEFAULT 0 CHECK (included_tokens >= 0);
ALTER TABLE billing_plans ADD COLUMN overage_micros_per_1k integer CHECK (overage_micros_per_1k >= 0);
ALTER TABLE billing_plans ADD COLUMN retention_days integer NOT NULL DEFAULT 7 CHECK (retention_days > 0);
ALTER TABLE billing_plans ADD COLUMN updated_at text NOT NULL DEFAULT '1970-01-01T00:00:00Z';

UPDATE billing_plans SET price_monthly_micros = 0, included_tokens = 10000, overage_micros_per_1k = NULL, max_api_keys = 1, retention_days = 7 WHERE tier = 'free';
UPDATE billing_plans SET price_monthly_micros = 29000000, included_tokens = 500000, overage_micros_per_1k = 2000, max_api_keys = 5, retention_days = 30 WHERE tier = 'starter';
UPDATE billing_plans SET price_monthly_micros = 99000000, included_tokens = 2000000, overage_micros_per_1k = 1500, max_api_keys = 20, retention_days = 90 WHERE tier = 'pro';
UPDATE billing_plans SET price_monthly_micros = 499000000, included_tokens = 10000000, overage_micros_per_1k = 1000, max_api_keys = 100, retention_days = 365 WHERE tier = 'enterprise';

ALTER TABLE users ADD COLUMN overage_cap_micros integer CHECK (overage_cap_micros >= 0);
ALTER TABLE users ADD COLUMN past_due_after text;

CREATE TABLE IF NOT EXISTS user_quota_state (
    user_id      blob NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    month_start  text NOT NULL,
    used_tokens  integer NOT NULL DEFAULT 0 CHECK (used_tokens >= 0),
    updated_at   text NOT NULL,
    PRIMARY KEY (user_id, month_start)
);

DELETE FROM credit_ledger;
ALTER TABLE credit_ledger ADD COLUMN kind text NOT NULL DEFAULT 'adjustment'
    CHECK (kind IN ('top_up', 'grant', 'redemption', 'invoice_payment', 'refund', 'adjustment'));

DELETE FROM invoices;
ALTER TABLE invoices ADD COLUMN number text;
CREATE UNIQUE INDEX IF NOT EXISTS invoices_number_idx ON invoices (number);
ALTER TABLE invoices ADD COLUMN tier text;
ALTER TABLE invoices ADD COLUMN included_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE invoices ADD COLUMN overage_micros_per_1k integer;
ALTER TABLE invoices ADD COLUMN used_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE invoices ADD COLUMN overage_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE invoices ADD COLUMN usage_cost_micros integer NOT NULL DEFAULT 0;
ALTER TABLE invoices ADD COLUMN due_at text;

CREATE TABLE IF NOT EXISTS invoice_lines (
    invoice_id      blob NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
    position        integer NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('plan_fee', 'overage', 'credits')),
    description     text NOT NULL,
    quantity        integer NOT NULL,
    unit_micros     integer NOT NULL,
    amount_micros   integer NOT NULL,
    PRIMARY KEY (invoice_id, position)
);

CREATE TABLE IF NOT EXISTS invoice_numbers (
    period_start  text PRIMARY KEY,
    last_number   integer NOT NULL
);
