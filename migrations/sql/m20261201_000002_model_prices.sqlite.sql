-- Model prices over time (see the Postgres file). Ids are UUID bytes, times RFC 3339 text.
DROP TABLE IF EXISTS model_prices;

CREATE TABLE model_prices (
    id                                      blob PRIMARY KEY,
    model                                   text NOT NULL CHECK (length(model) BETWEEN 1 AND 200),
    input_micros_per_million_tokens         integer NOT NULL CHECK (input_micros_per_million_tokens >= 0),
    output_micros_per_million_tokens        integer NOT NULL CHECK (output_micros_per_million_tokens >= 0),
    cached_input_micros_per_million_tokens  integer CHECK (cached_input_micros_per_million_tokens >= 0),
    effective_from                          text NOT NULL,
    created_at                              text NOT NULL,
    UNIQUE (model, effective_from)
);

INSERT OR IGNORE INTO model_prices VALUES
    (X'00000000000070008000000000000001', 'gpt-4',            30000000, 60000000, NULL, '1970-01-01T00:00:00Z', '1970-01-01T00:00:00Z'),
    (X'00000000000070008000000000000002', 'gpt-3.5-turbo',      500000,  1500000, NULL, '1970-01-01T00:00:00Z', '1970-01-01T00:00:00Z'),
    (X'00000000000070008000000000000003', 'claude-3-opus',    15000000, 75000000, NULL, '1970-01-01T00:00:00Z', '1970-01-01T00:00:00Z'),
    (X'00000000000070008000000000000004', 'claude-3-sonnet',   3000000, 15000000, NULL, '1970-01-01T00:00:00Z', '1970-01-01T00:00:00Z'),
    (X'00000000000070008000000000000005', 'claude-3-haiku',     250000,  1250000, NULL, '1970-01-01T00:00:00Z', '1970-01-01T00:00:00Z'),
    (X'00000000000070008000000000000006', 'gemini-1.5-flash',   125000,   500000, NULL, '1970-01-01T00:00:00Z', '1970-01-01T00:00:00Z');
