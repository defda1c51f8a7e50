-- BluesMinds rate limiter, settle, version 4: replace what reservations counted with what they
-- used (a request's estimate with its real tokens; a lease's grant with what it admitted),
-- never below zero. One call settles a batch (each call costs the script's start-up, so
-- settlements queued together go together; in a cluster, a batch holds one slot's).
-- KEYS: for each reservation, its minute hash (see reserve_v5.lua), day and month counters,
--   and the user's month counter
-- ARGV: for each reservation, its second, requests delta and tokens delta (used - counted)
for i = 0, #KEYS / 4 - 1 do
  local w, d, m, u = KEYS[4 * i + 1], KEYS[4 * i + 2], KEYS[4 * i + 3], KEYS[4 * i + 4]
  local s, dr, dt = ARGV[3 * i + 1], tonumber(ARGV[3 * i + 2]), tonumber(ARGV[3 * i + 3])
  -- A second's counts and the window's totals move together; a second that already left the
  -- window is not counted any more, so nothing changes then.
  local old = redis.call('HMGET', w, 'r' .. s, 't' .. s, 'rs', 'ts')
  local sets = {}
  if old[1] and dr ~= 0 then
    local v = math.max(0, tonumber(old[1]) + dr)
    sets[#sets + 1] = 'r' .. s; sets[#sets + 1] = v
    sets[#sets + 1] = 'rs'; sets[#sets + 1] = (tonumber(old[3]) or 0) + v - tonumber(old[1])
  end
  if old[2] and dt ~= 0 then
    local v = math.max(0, tonumber(old[2]) + dt)
    sets[#sets + 1] = 't' .. s; sets[#sets + 1] = v
    sets[#sets + 1] = 'ts'; sets[#sets + 1] = (tonumber(old[4]) or 0) + v - tonumber(old[2])
  end
  if #sets > 0 then redis.call('HSET', w, unpack(sets)) end
  -- Quota counters change only while they exist (an expired or lost one is not recreated
  -- without its expiry).
  if dt ~= 0 then
    local quotas = redis.call('MGET', d, m, u)
    if quotas[1] then redis.call('SET', d, math.max(0, tonumber(quotas[1]) + dt), 'KEEPTTL') end
    if quotas[2] then redis.call('SET', m, math.max(0, tonumber(quotas[2]) + dt), 'KEEPTTL') end
    if quotas[3] then redis.call('SET', u, math.max(0, tonumber(quotas[3]) + dt), 'KEEPTTL') end
  end
end
return #KEYS / 4
