-- The daily rollup: every user's usage summed per UTC day, key (the nil uuid for requests
-- without one) and model, kept by the usage writer in the same transaction as the rows it
-- sums, so statistics, dashboards and invoices read a few rows a day instead of every request.
-- latency_hist counts requests per latency bucket; its bounds are
-- gateway_usage::rollup::LATENCY_BOUNDS (usage_daily_rebuild.*.sql spells them out, generated from
-- that list: bucket k holds bound[k-1] < latency_ms <= bound[k], the last one the rest).
-- The migration then fills it from the rows already written with usage_daily_rebuild.*.sql.

CREATE TABLE IF NOT EXISTS usage_daily (
    user_id            blob NOT NULL,
    day                text NOT NULL,
    api_key_id         blob NOT NULL,
    model              text NOT NULL,
    requests           integer NOT NULL,
    errors             integer NOT NULL,
    prompt_tokens      integer NOT NULL,
    completion_tokens  integer NOT NULL,
    total_tokens       integer NOT NULL,
    cost_micros        integer NOT NULL,
    latency_ms_sum     integer NOT NULL,
    latency_ms_max     integer NOT NULL,
    latency_hist       text NOT NULL,
    PRIMARY KEY (user_id, day, api_key_id, model)
);
CREATE INDEX IF NOT EXISTS usage_daily_day_idx ON usage_daily (day);
