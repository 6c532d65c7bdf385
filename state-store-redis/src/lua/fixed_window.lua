local count
if ARGV[3] == '1' then
  local fresh = redis.call('EXISTS', KEYS[1]) == 0
  count = redis.call('INCRBY', KEYS[1], ARGV[1])
  if fresh then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
else
  count = tonumber(redis.call('GET', KEYS[1]) or '0')
  if not count then return redis.error_reply('ERR value is not an integer or out of range') end
end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then left = tonumber(ARGV[2]) end
return {count, left}
