-- renew: extend the lease of the owner.
-- KEYS[1] the record; ARGV[1] fencing token, ARGV[2] lease (ms), ARGV[3] lease deadline and length.
local record = redis.call('GET', KEYS[1])
if record and string.sub(record, 1, 1) == 'I' and string.sub(record, 34, 41) == ARGV[1] then
  redis.call('SET', KEYS[1], string.sub(record, 1, 41) .. ARGV[3], 'PX', ARGV[2])
  return 1
end
return 0
