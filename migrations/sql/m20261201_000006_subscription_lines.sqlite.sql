-- Invoice lines may say what a plan subscription paid during the month (SQLite rebuilds the
-- table to change its CHECK).
CREATE TABLE invoice_lines_new (
    invoice_id      blob NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
    position        integer NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('plan_fee', 'overage', 'subscription_payment', 'credits')),
    description     text NOT NULL,
    quantity        integer NOT NULL,
    unit_micros     integer NOT NULL,
    amount_micros   integer NOT NULL,
    PRIMARY KEY (invoice_id, position)
);
INSERT INTO invoice_lines_new SELECT invoice_id, position, kind, description, quantity, unit_micros, amount_micros FROM invoice_lines;
DROP TABLE invoice_lines;
ALTER TABLE invoice_lines_new RENAME TO invoice_lines;
