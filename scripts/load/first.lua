-- First executions: every request carries a key never used before.
-- Usage: wrk ... -s scripts/load/first.lua URL -- RUN_ID
dofile("scripts/load/common.lua")

local run, sent

function init(args)
   run = args[1] or tostring(os.time())
   sent = 0
end

function request()
   sent = sent + 1
   return post(run .. "-first-" .. thread_id .. "-" .. sent)
end
