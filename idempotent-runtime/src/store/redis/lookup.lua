-- lookup: read what is there, claiming nothing.
-- KEYS[1] the record.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local record = redis.call('HMGET', KEYS[1], 'state', 'fingerprint')
if record[1] == 'completed' then
  return {record[1], record[2], redis.call('HGET', KEYS[1], 'response')}
end
return {record[1], record[2], redis.call('PTTL', KEYS[1])}
