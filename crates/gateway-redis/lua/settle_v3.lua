-- BluesMinds rate limiter, settle, version 3: replace reservations' token estimates with the
-- real counts, never below zero. One call settles a batch (each call costs the script's
-- start-up, so settlements queued together go together; in a cluster, a batch holds one
-- user's reservations).
-- KEYS: for each reservation, its minute hash (see reserve_v3.lua), day and month counters,
--   and the user's month counter
-- ARGV: for each reservation, its second and delta (actual - estimate; may be negative)
for i = 0, #KEYS / 4 - 1 do
  local w, d, m, u = KEYS[4 * i + 1], KEYS[4 * i + 2], KEYS[4 * i + 3], KEYS[4 * i + 4]
  local delta = tonumber(ARGV[2 * i + 2])
  local field = 't' .. ARGV[2 * i + 1]
  -- The second's count and the window's total move together; a second that already left the
  -- window is not counted any more, so nothing changes then.
  local state = redis.call('HMGET', w, field, 'ts')
  if state[1] then
    local old = tonumber(state[1])
    local new = math.max(0, old + delta)
    redis.call('HSET', w, field, new, 'ts', (tonumber(state[2]) or 0) + new - old)
  end
  -- Quota counters change only while they exist (an expired or lost one is not recreated
  -- without its expiry).
  local quotas = redis.call('MGET', d, m, u)
  if quotas[1] then redis.call('SET', d, math.max(0, tonumber(quotas[1]) + delta), 'KEEPTTL') end
  if quotas[2] then redis.call('SET', m, math.max(0, tonumber(quotas[2]) + delta), 'KEEPTTL') end
  if quotas[3] then redis.call('SET', u, math.max(0, tonumber(quotas[3]) + delta), 'KEEPTTL') end
end
return #KEYS / 4
