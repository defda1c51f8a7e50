-- BluesMinds rate limiter, reserve, version 1. One call checks every window of a key and,
-- only if all allow it, reserves one request and ARGV[6] tokens in all of them.
-- KEYS: requests hash, tokens hash, day counter, month counter, restore marker
--   A minute hash holds one field per second (`<unix second>` = count) plus `sum` (the total
--   of the seconds kept) and `from` (no second before it is kept), so a call touches only the
--   seconds that just left the window: O(1), not O(window).
-- ARGV: now (unix seconds), rpm, tpm, daily, monthly, tokens, seconds to midnight,
--       seconds to month end, buckets per window (61 for a minute), check the marker (1/0)
-- Returns {allowed (1 yes, 0 no, -1 quotas not restored since Redis started),
--          window (0 none, 1 rpm, 2 tpm, 3 day, 4 month), retry_after, requests used,
--          tokens used, seconds until the oldest kept second leaves each minute window}
local now = tonumber(ARGV[1])
local rpm, tpm, daily, monthly, cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local window = tonumber(ARGV[9])

-- A Redis that lost its data (a restart) must get the quotas back from the database first.
if ARGV[10] == '1' and redis.call('EXISTS', KEYS[5]) == 0 then return {-1, 0, 0, 0, 0, 0, 0} end

-- Drops the seconds that left the window; returns the window's sum and the oldest second
-- that may still be counted (nil when the hash is empty).
local function prune(key)
  local state = redis.call('HMGET', key, 'sum', 'from')
  local sum, from = tonumber(state[1]) or 0, tonumber(state[2])
  local edge = now - window -- this second and older are out
  if from == nil or from > edge then return sum, from end
  -- Every kept second is at most `window - 1` after `from` (each call leaves `from` within
  -- the window of its own time), so when `from` is two windows old, nothing is left.
  if edge - from >= window then
    redis.call('DEL', key)
    return 0, nil
  end
  local stale = {}
  for s = from, edge do stale[#stale + 1] = s end
  local counts = redis.call('HMGET', key, unpack(stale))
  for _, c in ipairs(counts) do
    if c then sum = sum - tonumber(c) end
  end
  redis.call('HDEL', key, unpack(stale))
  redis.call('HSET', key, 'sum', sum, 'from', edge + 1)
  return sum, edge + 1
end

-- Seconds until `need` more fits under `limit` as the oldest seconds leave the window (only
-- on a refusal: it reads every second of the window).
local function wait(key, used, limit, need)
  local flat = redis.call('HGETALL', key)
  local buckets = {}
  for i = 1, #flat, 2 do
    local s = tonumber(flat[i])
    if s then buckets[#buckets + 1] = {s, tonumber(flat[i + 1])} end
  end
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  for _, b in ipairs(buckets) do
    used = used - b[2]
    if used + need <= limit then return math.max(1, b[1] + window - now) end
  end
  return window
end

local function add(key, from, n)
  redis.call('HINCRBY', key, now, n)
  redis.call('HINCRBY', key, 'sum', n)
  -- (an instance whose clock is behind may count a second before `from`: move `from` back)
  if from == nil or now < from then redis.call('HSET', key, 'from', now) end
  redis.call('EXPIRE', key, window + 1)
end

local req_used, req_from = prune(KEYS[1])
local tok_used, tok_from = prune(KEYS[2])
local day_used = tonumber(redis.call('GET', KEYS[3]) or '0')
local month_used = tonumber(redis.call('GET', KEYS[4]) or '0')

-- When the oldest counted second leaves the window (a new one, counted now, in `window`).
local function reset(from)
  if from == nil then return window end
  return math.max(0, from + window - now)
end
local function refuse(w, retry_after)
  return {0, w, retry_after, req_used, tok_used, reset(req_from), reset(tok_from)}
end

if req_used + 1 > rpm then return refuse(1, wait(KEYS[1], req_used, rpm, 1)) end
if tok_used + cost > tpm then return refuse(2, wait(KEYS[2], tok_used, tpm, cost)) end
if day_used + cost > daily then return refuse(3, tonumber(ARGV[7])) end
if month_used + cost > monthly then return refuse(4, tonumber(ARGV[8])) end

add(KEYS[1], req_from, 1)
add(KEYS[2], tok_from, cost)
redis.call('INCRBY', KEYS[3], cost)
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[7]) + 3600)
redis.call('INCRBY', KEYS[4], cost)
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[8]) + 86400)
return {1, 0, 0, req_used + 1, tok_used + cost, reset(req_from), reset(tok_from)}
