-- release: delete the owner's claim so that a retry runs again.
-- KEYS[1] the record; ARGV[1] fencing token.
local record = redis.call('GET', KEYS[1])
if record and string.sub(record, 1, 1) == 'I' and string.sub(record, 34, 41) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
