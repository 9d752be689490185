-- wrk script: fills a cache with N identity-scoped balance records, each user once, each with
-- its own Authorization header, then stops.
--
--   wrk -t1 -c16 -d300s -s scripts/wrk/fill.lua http://127.0.0.1:PORT -- N [FIRST_ID] [USER_TYPE]
--
-- Paths are /api/users/USER_TYPE/NNNNNN/balance (ids zero-padded to 6 digits, so every record
-- has the same size), with "Authorization: Bearer user-NNNNNN". After the N-th request has
-- been sent, further requests are for the first user again (hits, nothing new is stored);
-- the thread stops once N responses arrived.

local n, first, user_type = 0, 1, "live"
local sent, done = 0, 0

function init(args)
   n = tonumber(args[1] or error("fill.lua: pass N after --"))
   first = tonumber(args[2] or "1")
   user_type = args[3] or "live"
end

local function user(i)
   local id = string.format("%06d", i)
   return wrk.format("GET", "/api/users/" .. user_type .. "/" .. id .. "/balance",
      { Authorization = "Bearer user-" .. id })
end

function request()
   sent = sent + 1
   if sent > n then return user(first) end
   return user(first + sent - 1)
end

function response(status, headers, body)
   done = done + 1
   if status ~= 200 then
      io.stderr:write("fill.lua: status " .. status .. "\n")
   end
   if done >= n then wrk.thread:stop() end
end
