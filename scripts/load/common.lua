-- Shared by the load scripts: the request, and a summary line that scripts/load.sh reads.
--
-- Arguments after `--`: a run id that makes this run's keys unique (stores such as
-- Redis and Postgres keep keys across runs), then script-specific ones.

body = '{"item":"widget","qty":1}'

local threads = 0

-- Runs once per thread, in the main Lua state: give each thread its own id.
function setup(thread)
   thread:set("thread_id", threads)
   threads = threads + 1
end

-- The request around its key, formatted once per thread: `wrk.format` for every
-- request took about a fifth of wrk's time per request, on the CPU that wrk shares with
-- the Redis and Postgres servers.
local before, after

function post(key)
   if not before then
      local marker = "\0key\0"
      local request = wrk.format("POST", "/orders", {
         ["Content-Type"] = "application/json",
         ["Idempotency-Key"] = marker,
      }, body)
      local at = request:find(marker, 1, true)
      before, after = request:sub(1, at - 1), request:sub(at + #marker)
   end
   return before .. key .. after
end

function done(summary, latency, requests)
   local seconds = summary.duration / 1e6
   local e = summary.errors
   io.write(string.format(
      "RESULT rps=%.1f p50_us=%d p99_us=%d requests=%d http_errors=%d socket_errors=%d\n",
      summary.requests / seconds,
      latency:percentile(50),
      latency:percentile(99),
      summary.requests,
      e.status,
      e.connect + e.read + e.write + e.timeout))
end
