-- BluesMinds rate limiter, reserve, version 1. One call checks every window of a key and,
-- only if all allow it, reserves one request and ARGV[6] tokens in all of them.
-- KEYS: requests hash, tokens hash (field: unix second, value: count), day counter,
--       month counter, restore marker
-- ARGV: now (unix seconds), rpm, tpm, daily, monthly, tokens, seconds to midnight,
--       seconds to month end, buckets per window (61 for a minute), check the marker (1/0)
-- Returns {allowed (1 yes, 0 no, -1 quotas not restored since Redis started),
--          window (0 none, 1 rpm, 2 tpm, 3 day, 4 month), retry_after, requests used,
--          tokens used, seconds until the oldest request and the oldest tokens leave the window}
local now = tonumber(ARGV[1])
local rpm, tpm, daily, monthly, cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local window = tonumber(ARGV[9])

-- A Redis that lost its data (a restart) must get the quotas back from the database first.
if ARGV[10] == '1' and redis.call('EXISTS', KEYS[5]) == 0 then return {-1, 0, 0, 0, 0, 0, 0} end

-- Sum a bucket hash over the window, dropping buckets that left it. Returns the sum, the
-- remaining buckets ({second, count}, unordered) and the oldest remaining second.
local function load(key)
  local flat = redis.call('HGETALL', key)
  local sum, buckets, stale, oldest = 0, {}, {}, nil
  for i = 1, #flat, 2 do
    local s = tonumber(flat[i])
    if s <= now - window then
      stale[#stale + 1] = flat[i]
    else
      local c = tonumber(flat[i + 1])
      sum = sum + c
      buckets[#buckets + 1] = {s, c}
      if oldest == nil or s < oldest then oldest = s end
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  return sum, buckets, oldest
end

-- Seconds until `need` more fits under `limit` as the oldest buckets leave the window (only
-- on a refusal, so the sort is off the common path).
local function wait(buckets, used, limit, need)
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  for _, b in ipairs(buckets) do
    used = used - b[2]
    if used + need <= limit then return math.max(1, b[1] + window - now) end
  end
  return window
end

local req_used, req_buckets, req_oldest = load(KEYS[1])
local tok_used, tok_buckets, tok_oldest = load(KEYS[2])
local day_used = tonumber(redis.call('GET', KEYS[3]) or '0')
local month_used = tonumber(redis.call('GET', KEYS[4]) or '0')

-- When the oldest bucket leaves the window (a new one, counted now, leaves in `window`).
local function reset(oldest)
  if oldest == nil then return window end
  return oldest + window - now
end
local function refuse(w, retry_after)
  return {0, w, retry_after, req_used, tok_used, reset(req_oldest), reset(tok_oldest)}
end

if req_used + 1 > rpm then return refuse(1, wait(req_buckets, req_used, rpm, 1)) end
if tok_used + cost > tpm then return refuse(2, wait(tok_buckets, tok_used, tpm, cost)) end
if day_used + cost > daily then return refuse(3, tonumber(ARGV[7])) end
if month_used + cost > monthly then return refuse(4, tonumber(ARGV[8])) end

redis.call('HINCRBY', KEYS[1], now, 1)
redis.call('EXPIRE', KEYS[1], window + 1)
redis.call('HINCRBY', KEYS[2], now, cost)
redis.call('EXPIRE', KEYS[2], window + 1)
redis.call('INCRBY', KEYS[3], cost)
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[7]) + 3600)
redis.call('INCRBY', KEYS[4], cost)
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[8]) + 86400)
return {1, 0, 0, req_used + 1, tok_used + cost, reset(req_oldest), reset(tok_oldest)}
