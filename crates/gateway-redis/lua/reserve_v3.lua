-- BluesMinds rate limiter, reserve, version 3. One call checks every window of a key and its
-- user's monthly ceiling and, only if all allow it, reserves one request and ARGV[6] tokens in
-- all of them.
-- KEYS: minute hash, day counter, month counter, the user's month counter, restore marker
--   (the counters share the user's hash tag; the marker is the one of their slot: in a
--   cluster, every key is on one slot)
--   The minute hash holds both per-minute windows: `r<unix second>` = requests and
--   `t<unix second>` = tokens counted in that second, `rs` and `ts` their totals over the
--   seconds kept, and `f` (no second before it is kept). A call touches only the seconds that
--   just left the window: O(1), not O(window), and a handful of Redis calls (each `redis.call`
--   costs about a microsecond, most of the script's time).
-- ARGV: now (unix seconds), rpm, tpm, daily, monthly, tokens, seconds to midnight,
--       seconds to month end, buckets per window (61 for a minute), check the marker (1/0),
--       the user's monthly ceiling
-- Returns {allowed (1 yes, 0 no, -1 quotas not restored since Redis started),
--          window (0 none, 1 rpm, 2 tpm, 3 day, 4 month, 5 user's month), retry_after, requests used,
--          tokens used, seconds until the oldest kept second leaves the minute windows}
local now = tonumber(ARGV[1])
local rpm, tpm, daily, monthly, cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local to_midnight, to_month_end = tonumber(ARGV[7]), tonumber(ARGV[8])
local window = tonumber(ARGV[9])
local w = KEYS[1]
local rnow, tnow = 'r' .. now, 't' .. now

local ceiling = tonumber(ARGV[11])
local quotas = redis.call('MGET', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
-- A Redis that lost its data (a restart) must get the quotas back from the database first.
if ARGV[10] == '1' and not quotas[4] then return {-1, 0, 0, 0, 0, 0} end
local day_used, month_used = tonumber(quotas[1] or '0'), tonumber(quotas[2] or '0')
local user_used = tonumber(quotas[3] or '0')

local state = redis.call('HMGET', w, 'rs', 'ts', 'f', rnow, tnow)
local req_used, tok_used, from = tonumber(state[1]) or 0, tonumber(state[2]) or 0, tonumber(state[3])
local req_now, tok_now = tonumber(state[4]), tonumber(state[5]) or 0

-- Drop the seconds that left the window (this second and older are out).
local edge = now - window
local pruned = false
if from ~= nil and from <= edge then
  pruned = true
  -- Every kept second is at most `window - 1` after `from` (each call leaves `from` within
  -- the window of its own time), so when `from` is two windows old, nothing is left.
  if edge - from >= window then
    redis.call('DEL', w)
    req_used, tok_used, from, req_now, tok_now = 0, 0, nil, nil, 0
  else
    local stale = {}
    for s = from, edge do
      stale[#stale + 1] = 'r' .. s
      stale[#stale + 1] = 't' .. s
    end
    local counts = redis.call('HMGET', w, unpack(stale))
    for i = 1, #counts, 2 do
      req_used = req_used - (tonumber(counts[i]) or 0)
      tok_used = tok_used - (tonumber(counts[i + 1]) or 0)
    end
    redis.call('HDEL', w, unpack(stale))
    from = edge + 1
  end
end

-- Seconds until the oldest counted second leaves the window (a new one, counted now, in
-- `window`).
local reset = window
if from ~= nil then reset = math.max(0, from + window - now) end

-- Seconds until `need` more fits under `limit` as the oldest seconds leave the window (only
-- on a refusal: it reads every second of the window).
local function wait(prefix, used, limit, need)
  local flat = redis.call('HGETALL', w)
  local buckets = {}
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 1) == prefix then
      local s = tonumber(string.sub(flat[i], 2))
      if s then buckets[#buckets + 1] = {s, tonumber(flat[i + 1])} end
    end
  end
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  for _, b in ipairs(buckets) do
    used = used - b[2]
    if used + need <= limit then return math.max(1, b[1] + window - now) end
  end
  return window
end
local function refuse(which, retry_after)
  if pruned then
    if from == nil then redis.call('DEL', w) else redis.call('HSET', w, 'rs', req_used, 'ts', tok_used, 'f', from) end
  end
  return {0, which, retry_after, req_used, tok_used, reset}
end

if req_used + 1 > rpm then return refuse(1, wait('r', req_used, rpm, 1)) end
if tok_used + cost > tpm then return refuse(2, wait('t', tok_used, tpm, cost)) end
if day_used + cost > daily then return refuse(3, to_midnight) end
if month_used + cost > monthly then return refuse(4, to_month_end) end
if user_used + cost > ceiling then return refuse(5, to_month_end) end

-- (an instance whose clock is behind may count a second before `from`: move `from` back)
if from == nil or now < from then from = now end
redis.call('HSET', w, rnow, (req_now or 0) + 1, tnow, tok_now + cost, 'rs', req_used + 1, 'ts', tok_used + cost, 'f', from)
-- The hash lives a window past the newest second counted in it: refreshed once a second.
if req_now == nil then redis.call('EXPIRE', w, window + 1) end
if redis.call('INCRBY', KEYS[2], cost) == cost then redis.call('EXPIRE', KEYS[2], to_midnight + 3600) end
if redis.call('INCRBY', KEYS[3], cost) == cost then redis.call('EXPIRE', KEYS[3], to_month_end + 86400) end
if redis.call('INCRBY', KEYS[4], cost) == cost then redis.call('EXPIRE', KEYS[4], to_month_end + 86400) end
return {1, 0, 0, req_used + 1, tok_used + cost, reset}
