-- Invoice lines may say what a plan subscription paid during the month.
ALTER TABLE invoice_lines DROP CONSTRAINT IF EXISTS invoice_lines_kind_check;
ALTER TABLE invoice_lines ADD CONSTRAINT invoice_lines_kind_check
    CHECK (kind IN ('plan_fee', 'overage', 'subscription_payment', 'credits'));
