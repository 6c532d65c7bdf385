if redis.call('EXISTS', KEYS[1]) == 1 then
redis.call('INCRBY', KEYS[1], ARGV[1])
return redis.call('GET', KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
