-- BluesMinds rate limiter, claim, version 5. One call gives back the claimant's previous lease
-- of the key (when it ends now), then checks every window of the key and its user's monthly
-- ceiling and, only if one request and the tokens the request needs fit in all of them,
-- reserves a grant in all of them: one request and what it needs (a plain reservation), or a
-- lease of up to ARGV[12] requests and ARGV[13] tokens, each at most 1/share of what remains
-- in its tightest window, counted in the second the lease ends in: ARGV[19] (its long end)
-- when it is at most 1/ARGV[20] (share x 16) of what remains in every window, else ARGV[14].
-- (Version 4 had no long end.)
-- KEYS: minute hash, day counter, month counter, the user's month counter, restore marker
--   (the counters share the user's hash tag; the marker is the one of their slot: in a
--   cluster, every key is on one slot)
--   The minute hash holds both per-minute windows: `r<unix second>` = requests and
--   `t<unix second>` = tokens counted in that second (a lease's second may be ahead of now),
--   `rs` and `ts` their totals over the seconds kept, and `f` (no second before it is kept). A
--   call touches only the seconds that just left the window: O(1), not O(window).
-- ARGV: now (unix seconds), rpm, tpm, daily, monthly, need, seconds to midnight,
--       seconds to month end, buckets per window (61 for a minute), check the marker (1/0),
--       the user's monthly ceiling, requests wanted, tokens wanted, the lease's last second,
--       share, the ending lease's second, requests delta and tokens delta ('' for none;
--       deltas are used - counted: requests <= 0, tokens either way), the second a small
--       lease ends in, and the divisor that makes a lease small
-- Returns {allowed (1 yes, 0 no, -1 quotas not restored since Redis started),
--          window (0 none, 1 rpm, 2 tpm, 3 day, 4 month, 5 user's month), retry_after, requests used,
--          tokens used, seconds until the oldest kept second leaves the minute windows,
--          requests granted, tokens granted, the second they are counted in}
local now = tonumber(ARGV[1])
local rpm, tpm, daily, monthly, need = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local to_midnight, to_month_end = tonumber(ARGV[7]), tonumber(ARGV[8])
local window = tonumber(ARGV[9])
local ceiling = tonumber(ARGV[11])
local ask_n, ask_t, lease_end, share = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14]), math.max(1, tonumber(ARGV[15]))
local w = KEYS[1]

local quotas = redis.call('MGET', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
-- A Redis that lost its data (a restart) must get the quotas back from the database first.
if ARGV[10] == '1' and not quotas[4] then return {-1, 0, 0, 0, 0, 0, 0, 0, 0} end
local day_used, month_used = tonumber(quotas[1] or '0'), tonumber(quotas[2] or '0')
local user_used = tonumber(quotas[3] or '0')

-- The ending lease first: what it did not use leaves its second (if that is still kept) and
-- the quota counters (while they exist; never below zero).
if ARGV[16] ~= '' then
  local es, dr, dt = ARGV[16], tonumber(ARGV[17]), tonumber(ARGV[18])
  local old = redis.call('HMGET', w, 'r' .. es, 't' .. es, 'rs', 'ts')
  local sets = {}
  if old[1] then
    local v = math.max(0, tonumber(old[1]) + dr)
    sets[#sets + 1] = 'r' .. es; sets[#sets + 1] = v
    sets[#sets + 1] = 'rs'; sets[#sets + 1] = (tonumber(old[3]) or 0) + v - tonumber(old[1])
  end
  if old[2] then
    local v = math.max(0, tonumber(old[2]) + dt)
    sets[#sets + 1] = 't' .. es; sets[#sets + 1] = v
    sets[#sets + 1] = 'ts'; sets[#sets + 1] = (tonumber(old[4]) or 0) + v - tonumber(old[2])
  end
  if #sets > 0 then redis.call('HSET', w, unpack(sets)) end
  if dt ~= 0 then
    if quotas[1] then day_used = math.max(0, day_used + dt); redis.call('SET', KEYS[2], day_used, 'KEEPTTL') end
    if quotas[2] then month_used = math.max(0, month_used + dt); redis.call('SET', KEYS[3], month_used, 'KEEPTTL') end
    if quotas[3] then user_used = math.max(0, user_used + dt); redis.call('SET', KEYS[4], user_used, 'KEEPTTL') end
  end
end

local state = redis.call('HMGET', w, 'rs', 'ts', 'f')
local req_used, tok_used, from = tonumber(state[1]) or 0, tonumber(state[2]) or 0, tonumber(state[3])

-- Drop the seconds that left the window (this second and older are out).
local edge = now - window
local pruned = false
if from ~= nil and from <= edge then
  pruned = true
  -- A second counted by a lease may be ahead of its call's time, so only a `from` more than
  -- two windows old (and no lease longer than a window) proves nothing is left: else prune.
  if edge - from >= 2 * window then
    redis.call('DEL', w)
    req_used, tok_used, from = 0, 0, nil
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

-- Seconds until the oldest counted second leaves the window.
local reset = window
if from ~= nil then reset = math.max(0, from + window - now) end

-- Seconds until `need` more fits under `limit` as the oldest seconds leave the window (only
-- on a refusal: it reads every second of the window).
local function wait(prefix, used, limit, want)
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
    if used + want <= limit then return math.max(1, b[1] + window - now) end
  end
  return window
end
local function refuse(which, retry_after)
  if pruned then
    if from == nil then redis.call('DEL', w) else redis.call('HSET', w, 'rs', req_used, 'ts', tok_used, 'f', from) end
  end
  return {0, which, retry_after, req_used, tok_used, reset, 0, 0, 0}
end

if req_used + 1 > rpm then return refuse(1, wait('r', req_used, rpm, 1)) end
if tok_used + need > tpm then return refuse(2, wait('t', tok_used, tpm, need)) end
if day_used + need > daily then return refuse(3, to_midnight) end
if month_used + need > monthly then return refuse(4, to_month_end) end
if user_used + need > ceiling then return refuse(5, to_month_end) end

-- The grant (the same rule as gateway_ratelimit::grant).
local left_t = math.min(tpm - tok_used, daily - day_used, monthly - month_used, ceiling - user_used)
local n = math.max(1, math.min(ask_n, math.max(1, math.floor((rpm - req_used) / share))))
local t = need
if n > 1 then
  t = math.min(left_t, math.max(need, math.min(ask_t, math.max(need, math.floor(left_t / share)))))
end
-- The second it is counted in (the same rule as gateway_ratelimit::counted_second).
local sec = now
if n > 1 or t ~= need then
  local small = tonumber(ARGV[20])
  if n * small <= rpm - req_used and t * small <= left_t then
    sec = math.max(now, tonumber(ARGV[19]), lease_end)
  else
    sec = math.max(now, lease_end)
  end
end

local counted = redis.call('HMGET', w, 'r' .. sec, 't' .. sec)
if from == nil or sec < from then from = sec end
redis.call('HSET', w, 'r' .. sec, (tonumber(counted[1]) or 0) + n, 't' .. sec, (tonumber(counted[2]) or 0) + t,
  'rs', req_used + n, 'ts', tok_used + t, 'f', from)
-- The hash lives a window past the newest second counted in it.
if counted[1] == false then
  local ttl = sec - now + window + 1
  if redis.call('TTL', w) < ttl then redis.call('EXPIRE', w, ttl) end
end
if redis.call('INCRBY', KEYS[2], t) == t then redis.call('EXPIRE', KEYS[2], to_midnight + 3600) end
if redis.call('INCRBY', KEYS[3], t) == t then redis.call('EXPIRE', KEYS[3], to_month_end + 86400) end
if redis.call('INCRBY', KEYS[4], t) == t then redis.call('EXPIRE', KEYS[4], to_month_end + 86400) end
return {1, 0, 0, req_used + n, tok_used + t, reset, n, t, sec}
