-- BluesMinds rate limiter, settle, version 1: replace a reservation's token estimate with the
-- real count, never below zero.
-- KEYS: tokens hash (see reserve_v1.lua), day counter, month counter
-- ARGV: the reservation's second, delta (actual - estimate; may be negative)
local delta = tonumber(ARGV[2])
-- The second's count and the window's sum move together; a second that already left the
-- window is not counted any more, so nothing changes then.
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then
  local new = math.max(0, tonumber(v) + delta)
  redis.call('HSET', KEYS[1], ARGV[1], new)
  redis.call('HINCRBY', KEYS[1], 'sum', new - tonumber(v))
end
local function adjust(key)
  local c = redis.call('GET', key)
  if c then redis.call('SET', key, math.max(0, tonumber(c) + delta), 'KEEPTTL') end
end
adjust(KEYS[2])
adjust(KEYS[3])
return 1
