-- complete: store the owner's response, kept for the TTL.
-- KEYS[1] the record; ARGV[1] fencing token, ARGV[2] response, ARGV[3] TTL (ms).
local record = redis.call('GET', KEYS[1])
if record and string.sub(record, 1, 1) == 'I' and string.sub(record, 34, 41) == ARGV[1] then
  redis.call('SET', KEYS[1], 'C' .. string.sub(record, 2, 33) .. ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
