-- BluesMinds rate limiter, restore, version 1: put quota counters saved in the database back
-- into Redis, never lowering a counter that Redis already holds.
-- KEYS: day or month counters
-- ARGV: for each key, the saved value and the seconds it should live
for i, key in ipairs(KEYS) do
  local saved, ttl = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  if saved > tonumber(redis.call('GET', key) or '0') then
    redis.call('SET', key, saved, 'EX', ttl)
  end
end
return #KEYS
