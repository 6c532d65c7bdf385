if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = string.format('%d', redis.call('INCR', KEYS[2]))
local record = ARGV[1] .. token .. ARGV[2]
redis.call('SET', KEYS[1], record, 'PX', ARGV[3])
return token .. ' ' .. redis.sha1hex(record)
