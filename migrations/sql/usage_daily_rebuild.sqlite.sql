-- The daily rollup recomputed from usage_logs (the migration that creates it, and
-- `bluesminds usage rebuild-rollup`). The histogram bounds are
-- gateway_usage::rollup::LATENCY_BOUNDS, spelled out (generated from that list; a store test
-- checks that this file and the writer put every latency in the same bucket).
DELETE FROM usage_daily;
-- The histogram as comma-separated counts.
INSERT INTO usage_daily (user_id, day, api_key_id, model, requests, errors,
    prompt_tokens, completion_tokens, total_tokens, cost_micros, latency_ms_sum,
    latency_ms_max, latency_hist)
SELECT user_id, substr(created_at, 1, 10),
    coalesce(api_key_id, X'00000000000000000000000000000000'), model,
    count(*), sum(is_error), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
    sum(cost_micros), sum(latency_ms), max(latency_ms),
    sum(latency_ms <= 1) || ',' ||
        sum(latency_ms > 1 AND latency_ms <= 2) || ',' ||
        sum(latency_ms > 2 AND latency_ms <= 3) || ',' ||
        sum(latency_ms > 3 AND latency_ms <= 4) || ',' ||
        sum(latency_ms > 4 AND latency_ms <= 5) || ',' ||
        sum(latency_ms > 5 AND latency_ms <= 6) || ',' ||
        sum(latency_ms > 6 AND latency_ms <= 8) || ',' ||
        sum(latency_ms > 8 AND latency_ms <= 10) || ',' ||
        sum(latency_ms > 10 AND latency_ms <= 12) || ',' ||
        sum(latency_ms > 12 AND latency_ms <= 15) || ',' ||
        sum(latency_ms > 15 AND latency_ms <= 19) || ',' ||
        sum(latency_ms > 19 AND latency_ms <= 24) || ',' ||
        sum(latency_ms > 24 AND latency_ms <= 30) || ',' ||
        sum(latency_ms > 30 AND latency_ms <= 38) || ',' ||
        sum(latency_ms > 38 AND latency_ms <= 48) || ',' ||
        sum(latency_ms > 48 AND latency_ms <= 60) || ',' ||
        sum(latency_ms > 60 AND latency_ms <= 75) || ',' ||
        sum(latency_ms > 75 AND latency_ms <= 94) || ',' ||
        sum(latency_ms > 94 AND latency_ms <= 118) || ',' ||
        sum(latency_ms > 118 AND latency_ms <= 148) || ',' ||
        sum(latency_ms > 148 AND latency_ms <= 185) || ',' ||
        sum(latency_ms > 185 AND latency_ms <= 231) || ',' ||
        sum(latency_ms > 231 AND latency_ms <= 289) || ',' ||
        sum(latency_ms > 289 AND latency_ms <= 361) || ',' ||
        sum(latency_ms > 361 AND latency_ms <= 451) || ',' ||
        sum(latency_ms > 451 AND latency_ms <= 564) || ',' ||
        sum(latency_ms > 564 AND latency_ms <= 705) || ',' ||
        sum(latency_ms > 705 AND latency_ms <= 881) || ',' ||
        sum(latency_ms > 881 AND latency_ms <= 1101) || ',' ||
        sum(latency_ms > 1101 AND latency_ms <= 1376) || ',' ||
        sum(latency_ms > 1376 AND latency_ms <= 1720) || ',' ||
        sum(latency_ms > 1720 AND latency_ms <= 2150) || ',' ||
        sum(latency_ms > 2150 AND latency_ms <= 2688) || ',' ||
        sum(latency_ms > 2688 AND latency_ms <= 3360) || ',' ||
        sum(latency_ms > 3360 AND latency_ms <= 4200) || ',' ||
        sum(latency_ms > 4200 AND latency_ms <= 5250) || ',' ||
        sum(latency_ms > 5250 AND latency_ms <= 6562) || ',' ||
        sum(latency_ms > 6562 AND latency_ms <= 8202) || ',' ||
        sum(latency_ms > 8202 AND latency_ms <= 10252) || ',' ||
        sum(latency_ms > 10252 AND latency_ms <= 12815) || ',' ||
        sum(latency_ms > 12815 AND latency_ms <= 16019) || ',' ||
        sum(latency_ms > 16019 AND latency_ms <= 20024) || ',' ||
        sum(latency_ms > 20024 AND latency_ms <= 25030) || ',' ||
        sum(latency_ms > 25030 AND latency_ms <= 31288) || ',' ||
        sum(latency_ms > 31288 AND latency_ms <= 39110) || ',' ||
        sum(latency_ms > 39110 AND latency_ms <= 48888) || ',' ||
        sum(latency_ms > 48888 AND latency_ms <= 61110) || ',' ||
        sum(latency_ms > 61110 AND latency_ms <= 76388) || ',' ||
        sum(latency_ms > 76388 AND latency_ms <= 95485) || ',' ||
        sum(latency_ms > 95485 AND latency_ms <= 119356) || ',' ||
        sum(latency_ms > 119356 AND latency_ms <= 149195) || ',' ||
        sum(latency_ms > 149195)
FROM usage_logs
GROUP BY 1, 2, 3, 4;
