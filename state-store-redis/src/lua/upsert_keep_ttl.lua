if redis.call('EXISTS', KEYS[1]) == 1 then
return redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL') end
return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
