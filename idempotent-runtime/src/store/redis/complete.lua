-- complete: store the owner's response, kept for the TTL.
-- KEYS[1] the record; ARGV[1] fencing token, ARGV[2] response, ARGV[3] TTL (ms).
local record = redis.call('HMGET', KEYS[1], 'state', 'token')
if record[1] == 'in_flight' and record[2] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', 'completed', 'response', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
