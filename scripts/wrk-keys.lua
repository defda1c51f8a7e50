-- wrk script of `just bench`'s many-keys round: like wrk-post.lua, but each request carries the
-- next of the keys in $WRK_KEYS_FILE (one per line), round robin.
dofile("scripts/wrk-post.lua")
local keys = {}
for line in io.lines(os.getenv("WRK_KEYS_FILE")) do
  if line ~= "" then keys[#keys + 1] = "Bearer " .. line end
end
local i = 0
request = function()
  i = i + 1
  wrk.headers["Authorization"] = keys[(i % #keys) + 1]
  return wrk.format()
end
