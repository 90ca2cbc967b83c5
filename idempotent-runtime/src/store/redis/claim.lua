-- claim: take a free key, or read what is there.
-- KEYS[1] the record; ARGV[1] fingerprint, ARGV[2] fencing token, ARGV[3] lease (ms).
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'state', 'in_flight', 'fingerprint', ARGV[1], 'token', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
local record = redis.call('HMGET', KEYS[1], 'state', 'fingerprint')
if record[1] == 'completed' then
  return {record[1], record[2], redis.call('HGET', KEYS[1], 'response')}
end
return {record[1], record[2], redis.call('PTTL', KEYS[1])}
