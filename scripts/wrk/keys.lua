-- wrk script: every request picks one path from a file, uniformly or by Zipf rank.
--
--   wrk -t1 -c64 -d8s -s scripts/wrk/keys.lua http://127.0.0.1:PORT -- PATHS_FILE uniform
--   wrk -t1 -c64 -d8s -s scripts/wrk/keys.lua http://127.0.0.1:PORT -- PATHS_FILE zipf 1.0 [SEED]
--
-- PATHS_FILE has one path per line; for zipf, line k has rank k (probability ~ 1/k^s), so the
-- file's order decides which keys are hot (scripts/bench.sh shuffles it with a fixed seed).
-- The requests are formatted once in init(); the CDF is precomputed there too, so each request
-- costs one math.random() and, for zipf, a binary search over the CDF (12 steps for 3000 keys).

local reqs, cdf, n, zipf = {}, {}, 0, false

function init(args)
   local file = args[1] or error("keys.lua: pass the paths file after --")
   local dist = args[2] or "uniform"
   local s = tonumber(args[3] or "1.0")
   local seed = tonumber(args[4] or "42")
   for line in io.lines(file) do
      if #line > 0 then
         n = n + 1
         reqs[n] = wrk.format("GET", line)
      end
   end
   assert(n > 0, "keys.lua: no paths in " .. file)
   if dist == "zipf" then
      zipf = true
      local sum = 0
      for k = 1, n do
         sum = sum + 1 / k ^ s
         cdf[k] = sum
      end
      for k = 1, n do cdf[k] = cdf[k] / sum end
      cdf[n] = 1
   elseif dist ~= "uniform" then
      error("keys.lua: distribution must be uniform or zipf, not " .. dist)
   end
   math.randomseed(seed)
end

function request()
   if not zipf then
      return reqs[math.random(n)]
   end
   local u = math.random()
   local lo, hi = 1, n
   while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if cdf[mid] < u then lo = mid + 1 else hi = mid end
   end
   return reqs[lo]
end
