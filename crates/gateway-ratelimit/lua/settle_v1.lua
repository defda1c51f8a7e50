-- BluesMinds rate limiter, settle, version 1: replace a reservation's token estimate with the
-- real count, never below zero.
-- KEYS: tokens hash, day counter, month counter
-- ARGV: the reservation's second, delta (actual - estimate; may be negative)
local delta = tonumber(ARGV[2])
local function adjust_field(key, field)
  local v = redis.call('HGET', key, field)
  if v then redis.call('HSET', key, field, math.max(0, tonumber(v) + delta)) end
end
local function adjust(key)
  local v = redis.call('GET', key)
  if v then redis.call('SET', key, math.max(0, tonumber(v) + delta), 'KEEPTTL') end
end
adjust_field(KEYS[1], ARGV[1])
adjust(KEYS[2])
adjust(KEYS[3])
return 1
