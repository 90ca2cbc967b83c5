-- renew: extend the lease of the owner.
-- KEYS[1] the record; ARGV[1] fencing token, ARGV[2] lease (ms).
local record = redis.call('HMGET', KEYS[1], 'state', 'token')
if record[1] == 'in_flight' and record[2] == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
