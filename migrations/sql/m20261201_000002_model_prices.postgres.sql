-- Model prices over time: a price applies from `effective_from` until the next one of the same
-- model, so a new price never rewrites the cost of past requests. Replaces the first
-- model_prices table (one row per model, no history), which nothing ever wrote.
DROP TABLE IF EXISTS model_prices;

CREATE TABLE model_prices (
    id                                      uuid PRIMARY KEY,
    model                                   text NOT NULL CHECK (length(model) BETWEEN 1 AND 200),
    input_micros_per_million_tokens         bigint NOT NULL CHECK (input_micros_per_million_tokens >= 0),
    output_micros_per_million_tokens        bigint NOT NULL CHECK (output_micros_per_million_tokens >= 0),
    cached_input_micros_per_million_tokens  bigint CHECK (cached_input_micros_per_million_tokens >= 0),
    effective_from                          timestamptz NOT NULL,
    created_at                              timestamptz NOT NULL,
    UNIQUE (model, effective_from)
);

-- The original product's table, per million tokens, applying since the epoch.
INSERT INTO model_prices VALUES
    ('00000000-0000-7000-8000-000000000001', 'gpt-4',            30000000, 60000000, NULL, '1970-01-01T00:00:00Z', now()),
    ('00000000-0000-7000-8000-000000000002', 'gpt-3.5-turbo',      500000,  1500000, NULL, '1970-01-01T00:00:00Z', now()),
    ('00000000-0000-7000-8000-000000000003', 'claude-3-opus',    15000000, 75000000, NULL, '1970-01-01T00:00:00Z', now()),
    ('00000000-0000-7000-8000-000000000004', 'claude-3-sonnet',   3000000, 15000000, NULL, '1970-01-01T00:00:00Z', now()),
    ('00000000-0000-7000-8000-000000000005', 'claude-3-haiku',     250000,  1250000, NULL, '1970-01-01T00:00:00Z', now()),
    ('00000000-0000-7000-8000-000000000006', 'gemini-1.5-flash',   125000,   500000, NULL, '1970-01-01T00:00:00Z', now())
ON CONFLICT (model, effective_from) DO NOTHING;
