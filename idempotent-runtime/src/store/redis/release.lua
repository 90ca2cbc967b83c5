-- release: delete the owner's claim so that a retry runs again.
-- KEYS[1] the record; ARGV[1] fencing token.
local record = redis.call('HMGET', KEYS[1], 'state', 'token')
if record[1] == 'in_flight' and record[2] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
