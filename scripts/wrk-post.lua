-- wrk script of `just bench` and `just bench-peers`: POSTs $WRK_BODY (with the bearer
-- $WRK_KEY when set, and $WRK_HEADERS: extra `name: value` lines separated by `|`), and ends
-- with one JSON line of the run's figures (latencies in microseconds, measured at the client).
wrk.method = "POST"
wrk.body = os.getenv("WRK_BODY")
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("WRK_KEY")
if key and key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end
local extra = os.getenv("WRK_HEADERS")
if extra and extra ~= "" then
  for h in string.gmatch(extra, "[^|]+") do
    local name, value = string.match(h, "^%s*([^:]+):%s*(.-)%s*$")
    if name then wrk.headers[name] = value end
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"socket_errors":%d,"status_errors":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max))
end
