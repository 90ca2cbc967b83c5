-- Replays: requests cycle through a fixed set of keys, each already used once (the
-- load script sends them before the run), so the stored response is replayed.
-- Usage: wrk ... -s scripts/load/replay.lua URL -- RUN_ID KEYS
-- The keys are RUN_ID-replay-0 .. RUN_ID-replay-(KEYS-1).
dofile("scripts/load/common.lua")

local run, keys, sent

function init(args)
   run = args[1] or tostring(os.time())
   keys = tonumber(args[2] or "64")
   -- Threads start at different keys, so that they do not hit the same one in step.
   sent = thread_id * 7
end

function request()
   sent = sent + 1
   return post(run .. "-replay-" .. (sent % keys))
end
