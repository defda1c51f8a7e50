-- The daily rollup: every user's usage summed per UTC day, key (the nil uuid for requests
-- without one) and model, kept by the usage writer in the same transaction as the rows it
-- sums, so statistics, dashboards and invoices read a few rows a day instead of every request.
-- latency_hist counts requests per latency bucket; its bounds are
-- gateway_usage::rollup::LATENCY_BOUNDS (usage_daily_rebuild.*.sql spells them out, generated from
-- that list: bucket k holds bound[k-1] < latency_ms <= bound[k], the last one the rest).
-- The migration then fills it from the rows already written with usage_daily_rebuild.*.sql.

CREATE TABLE IF NOT EXISTS usage_daily (
    user_id            uuid NOT NULL,
    day                date NOT NULL,
    api_key_id         uuid NOT NULL,
    model              text NOT NULL,
    requests           bigint NOT NULL,
    errors             bigint NOT NULL,
    prompt_tokens      bigint NOT NULL,
    completion_tokens  bigint NOT NULL,
    total_tokens       bigint NOT NULL,
    cost_micros        bigint NOT NULL,
    latency_ms_sum     bigint NOT NULL,
    latency_ms_max     integer NOT NULL,
    latency_hist       bigint[] NOT NULL,
    PRIMARY KEY (user_id, day, api_key_id, model)
);
CREATE INDEX IF NOT EXISTS usage_daily_day_idx ON usage_daily (day);

-- Two histograms added bucket by bucket (the writer's upsert).
CREATE OR REPLACE FUNCTION bm_hist_add(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_agg(coalesce(x, 0) + coalesce(y, 0) ORDER BY i)
    FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i)
$$;
