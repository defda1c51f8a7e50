-- BluesMinds rate limiter, sync, version 1: bring quota counters up to date with the database,
-- which holds for each counter its total (the mirror of Redis plus what instances counted
-- alone while they could not reach Redis) and the part counted alone not yet given to Redis.
-- With the slot's restore marker present, Redis kept its counters: the part counted alone is
-- added (it may be negative: a part given twice is taken back), never below zero. Without it,
-- Redis lost them (a restart): the total is put back, never lowering a counter Redis holds.
-- KEYS: the restore marker of the counters' slot, then day or month counters (one slot)
-- ARGV: for each counter, its total, its part counted alone, and the seconds it should live
-- Returns 1 when the marker was present, 0 when not.
local kept = redis.call('EXISTS', KEYS[1]) == 1
for i = 2, #KEYS do
  local key = KEYS[i]
  local total, alone, ttl =
    tonumber(ARGV[3 * i - 5]), tonumber(ARGV[3 * i - 4]), tonumber(ARGV[3 * i - 3])
  local held = redis.call('GET', key)
  if kept then
    if alone ~= 0 then
      local v = math.max(0, tonumber(held or '0') + alone)
      if held then
        redis.call('SET', key, v, 'KEEPTTL')
      else
        redis.call('SET', key, v, 'EX', ttl)
      end
    end
  elseif total > tonumber(held or '0') then
    redis.call('SET', key, total, 'EX', ttl)
  end
end
if kept then return 1 end
return 0
