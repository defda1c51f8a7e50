-- wrk script of `just bench`'s many-keys rounds: like wrk-post.lua, but each request carries the
-- next of the keys in $WRK_KEYS_FILE (one per line), round robin. The requests are formatted
-- once, in `init`, and `request` only hands out the next: formatting per request (wrk.format
-- in `request`) costs the load generator several microseconds of the two shared cores, which
-- the gateway would be charged for. The one-key rounds run this same script with a file of one
-- key, so both pay the same per-request Lua call.
dofile("scripts/wrk-post.lua")
local requests = {}
local i = 0

init = function(args)
  for line in io.lines(os.getenv("WRK_KEYS_FILE")) do
    if line ~= "" then
      wrk.headers["Authorization"] = "Bearer " .. line
      requests[#requests + 1] = wrk.format()
    end
  end
end

request = function()
  i = i + 1
  if i > #requests then i = 1 end
  return requests[i]
end
