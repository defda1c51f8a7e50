-- Billing: plans as data with what they include and cost beyond it, users' spend caps and
-- standing, the users' monthly token counters (the mirror of Redis), the credits ledger with
-- kinds, and invoices with gapless numbers and lines.

ALTER TABLE billing_plans ADD COLUMN IF NOT EXISTS included_tokens bigint NOT NULL DEFAULT 0 CHECK (included_tokens >= 0);
-- NULL: no overage, requests stop at the included tokens.
ALTER TABLE billing_plans ADD COLUMN IF NOT EXISTS overage_micros_per_1k bigint CHECK (overage_micros_per_1k >= 0);
ALTER TABLE billing_plans ADD COLUMN IF NOT EXISTS retention_days integer NOT NULL DEFAULT 7 CHECK (retention_days > 0);
ALTER TABLE billing_plans ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();

-- The original product's plans (Starter was seeded at $19; it is $29).
UPDATE billing_plans SET price_monthly_micros = 0, included_tokens = 10000, overage_micros_per_1k = NULL, max_api_keys = 1, retention_days = 7 WHERE tier = 'free';
UPDATE billing_plans SET price_monthly_micros = 29000000, included_tokens = 500000, overage_micros_per_1k = 2000, max_api_keys = 5, retention_days = 30 WHERE tier = 'starter';
UPDATE billing_plans SET price_monthly_micros = 99000000, included_tokens = 2000000, overage_micros_per_1k = 1500, max_api_keys = 20, retention_days = 90 WHERE tier = 'pro';
UPDATE billing_plans SET price_monthly_micros = 499000000, included_tokens = 10000000, overage_micros_per_1k = 1000, max_api_keys = 100, retention_days = 365 WHERE tier = 'enterprise';

-- NULL: the plan's monthly price.
ALTER TABLE users ADD COLUMN IF NOT EXISTS overage_cap_micros bigint CHECK (overage_cap_micros >= 0);
-- When the oldest open invoice's grace period ends; NULL while nothing is open.
ALTER TABLE users ADD COLUMN IF NOT EXISTS past_due_after timestamptz;
ALTER TABLE users ADD CONSTRAINT users_credits_not_negative CHECK (credits_micros >= 0);

-- Tokens a user used in a month across all keys (the spend ceiling's counter).
CREATE TABLE IF NOT EXISTS user_quota_state (
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    month_start  date NOT NULL,
    used_tokens  bigint NOT NULL DEFAULT 0 CHECK (used_tokens >= 0),
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (user_id, month_start)
);

-- Nothing wrote the ledger before: its entries now have a kind and always a reference.
DELETE FROM credit_ledger;
ALTER TABLE credit_ledger ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'adjustment'
    CHECK (kind IN ('top_up', 'grant', 'redemption', 'invoice_payment', 'refund', 'adjustment'));
ALTER TABLE credit_ledger ALTER COLUMN reference SET NOT NULL;
ALTER TABLE credit_ledger ADD CONSTRAINT credit_ledger_balance_not_negative CHECK (balance_after_micros >= 0);

-- Invoices: numbered INV-YYYYMM-NNNN without gaps per month, with the plan they were billed
-- on and when they fall past due.
DELETE FROM invoices;
ALTER TABLE invoices ADD COLUMN IF NOT EXISTS number text UNIQUE;
ALTER TABLE invoices ADD COLUMN IF NOT EXISTS tier text;
ALTER TABLE invoices ADD COLUMN IF NOT EXISTS included_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE invoices ADD COLUMN IF NOT EXISTS overage_micros_per_1k bigint;
ALTER TABLE invoices ADD COLUMN IF NOT EXISTS used_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE invoices ADD COLUMN IF NOT EXISTS overage_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE invoices ADD COLUMN IF NOT EXISTS usage_cost_micros bigint NOT NULL DEFAULT 0;
ALTER TABLE invoices ADD COLUMN IF NOT EXISTS due_at timestamptz;
CREATE INDEX IF NOT EXISTS invoices_open_idx ON invoices (user_id, due_at) WHERE status = 'open';

CREATE TABLE IF NOT EXISTS invoice_lines (
    invoice_id      uuid NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
    position        integer NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('plan_fee', 'overage', 'credits')),
    description     text NOT NULL,
    quantity        bigint NOT NULL,
    unit_micros     bigint NOT NULL,
    amount_micros   bigint NOT NULL,
    PRIMARY KEY (invoice_id, position)
);

-- The last number given in each month (gapless: taken in the closing transaction).
CREATE TABLE IF NOT EXISTS invoice_numbers (
    period_start  date PRIMARY KEY,
    last_number   integer NOT NULL
);
